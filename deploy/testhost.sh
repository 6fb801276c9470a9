#!/bin/sh
# Throwaway Debian 12 SSH hosts for trying prov's playbooks by hand (needs root).
#   deploy/testhost.sh up NAME [--hosts N]   start N hosts, print how to ssh in
#   deploy/testhost.sh down NAME              remove them (namespaces, bridge, proxy, files)
#   deploy/testhost.sh build NAME             just build/refresh the cached root
# The root comes from /var/cache/prov-test/cfg (debootstrap once, ~100 s).
# See tests/support/nshost.py for what a host is and is not.
set -e
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
exec "$py" -m tests.support.nshost "$@"

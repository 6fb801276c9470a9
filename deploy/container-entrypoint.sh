#!/bin/sh
# The controller image's entrypoint (deploy/Dockerfile): `prov "$@"`, but first make sure
# the data volume is writable by the user the image runs as. A volume it cannot write
# (a host directory owned by someone else, a read-only mount) would otherwise fail deep
# inside start-up with "unable to open database file"; this says what is wrong instead.
set -eu
case "${1:-}" in
serve | token)
    dir=${PROV_DATA_DIR:-/var/lib/prov}
    probe="$dir/.prov-write-test.$$"
    # A subshell: a failed redirection on the special builtin ":" would end this shell (exit 2).
    if ! (: >"$probe") 2>/dev/null; then
        echo "prov: the data directory $dir is not writable by uid $(id -u): mount a volume this user can write (a named volume is; a host directory needs chown $(id -u))" >&2
        exit 78 # EX_CONFIG (sysexits.h): restarting will not help until the mount is fixed
    fi
    rm -f "$probe"
    ;;
esac
exec prov "$@"

#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs every peer it needs
# (apt + pip), then lints, type-checks and runs pytest. Tests start their own services
# (PostgreSQL, ipmi_sim, sushy-emulator, libvirtd, dnsmasq, sshd hosts...).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install.sh --dev
export PROV_REQUIRE_PEERS=1
echo "== ruff"; .venv/bin/ruff check provisioner tests bench
echo "== mypy"; .venv/bin/mypy provisioner
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"

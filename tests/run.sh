#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs every peer it needs
# (apt + pip), then lints, type-checks and runs pytest. Tests start their own services
# (PostgreSQL, ipmi_sim, sushy-emulator, libvirtd, dnsmasq, sshd hosts...).
# As root everything runs directly. As a user with sudo, install.sh uses sudo for apt
# alone, lint and type-check run as the user, and pytest runs through sudo: the tests
# need root (network namespaces, libvirtd, privileged ports).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "prov: the test suite needs root (network namespaces, libvirtd, port 69): run tests/run.sh as root, or as a user with sudo" >&2
  exit 1
fi
./deploy/install.sh --dev
export PROV_REQUIRE_PEERS=1
echo "== ruff"; .venv/bin/ruff check provisioner tests bench
echo "== mypy"; .venv/bin/mypy provisioner
echo "== pytest"
if [ "$(id -u)" -eq 0 ]; then
  exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
# sudo resets the environment: keep the PROV_* settings (PROV_SLOW_TESTS...), and write no
# root-owned bytecode into the user's checkout.
prov_env=()
while IFS= read -r -d '' kv; do
  case "$kv" in PROV_*) prov_env+=("$kv") ;; esac
done < <(env -0)
exec sudo env "${prov_env[@]}" PYTHONDONTWRITEBYTECODE=1 "$PWD/.venv/bin/python" -m pytest -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Install prov on a Debian 12 machine: system packages + a Python venv in .venv.
#   deploy/install.sh          controller runtime (dnsmasq, iPXE, libvirt/QEMU, the lab's peers, ...)
#   deploy/install.sh --dev    plus every real peer the test suite talks to
# Idempotent: a second run only checks. Only apt needs root: as root it runs
# directly (a fresh Debian 12 machine has no sudo), anyone else goes through
# sudo for apt alone; the venv belongs to whoever runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

# Every program and file prov runs or reads at run time comes from one of these
# (tests/unit/deploy/test_runtime_packages.py checks it with dpkg -S, and the
# fresh-machine tier, tests/fresh/, runs this script in a pristine Debian root).
RUNTIME_PKGS=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev   # libvirt-python builds against these
  dnsmasq-base ipxe ipxe-qemu pxelinux syslinux-common           # DHCP + first-stage boot files
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils ovmf  # guests and the lab
  openssh-client genisoimage debootstrap busybox-static kmod cpio zstd apt-cacher-ng iproute2
  grub-pc-bin grub2-common e2fsprogs fdisk                       # the lab's Debian disk image
  openipmi ipmitool                                              # the lab's BMCs (ipmi_sim), checked with ipmitool
  git                                                            # prov apply --git
)
DEV_PKGS=(
  postgresql                      # the API suite runs on SQLite and PostgreSQL
  tftp-hpa atftp tftpd-hpa curl   # TFTP clients + the reference server for bench/tftp
  libxml2-utils virtinst          # virt-xml-validate, virt-install (bench/virt reference)
  chromium chromium-driver        # the web console's browser tests (tests/integration/ui)
  openssh-server sshpass nftables # namespace SSH hosts for Ansible
  debconf-utils cloud-init grub-common  # preseed, cloud-config and grub.cfg validators
  netplan.io                      # netplan v2 validator (autoinstall network:, NoCloud network-config)
  netcat-openbsd wrk bridge-utils iptables
  docker-compose                  # parses deploy/compose.yaml (no engine needed)
  debian-installer-12-netboot-amd64  # the installer-driven (preseed) path of the e2e lab
  podman buildah runc             # builds and runs deploy/Dockerfile's image (runc: crun refuses hybrid cgroups)
  shellcheck                      # every shell script of the tree
  prometheus                      # promtool lints the /metrics exposition (its daemon is never started)
)
PKGS=("${RUNTIME_PKGS[@]}")
[ "$DEV" = 1 ] && PKGS+=("${DEV_PKGS[@]}")

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "prov: deploy/install.sh must install ${#missing[@]} Debian packages and needs root for that: run it as root, or as a user with sudo (as root: apt-get install sudo && adduser $(id -un) sudo)" >&2
    exit 1
  fi
  echo "prov: installing system packages: ${missing[*]}"
  # Packages must not start their own daemons (tftpd-hpa, libvirtd, postgresql, apt-cacher-ng):
  # prov and its tests start exactly what they need. policy-rc.d is removed again afterwards,
  # also when apt fails.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    trap 'as_root rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    made_policy=1
  fi
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "$made_policy" = 1 ]; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=""
[ "$DEV" = 1 ] && extra="[dev]"
stamp=".venv/.prov-installed${extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".${extra}"
  # The OpenAPI client generator in a venv of its own: it pins typer and httpx below the CLI's
  # (tests/integration/api/test_openapi_clients.py runs it).
  if [ "$DEV" = 1 ]; then
    [ -x .venv/codegen/bin/python ] || "$PY" -m venv .venv/codegen
    .venv/codegen/bin/pip install -q "openapi-python-client>=0.21,<0.30"
  fi
  touch "$stamp"
fi
echo "prov: installed ($(.venv/bin/prov --version 2>/dev/null || echo prov)); run: .venv/bin/prov serve"

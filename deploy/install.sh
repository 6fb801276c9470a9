#!/usr/bin/env bash
# Install prov on a Debian 12 machine: system packages + a Python venv in .venv.
#   deploy/install.sh          controller runtime (dnsmasq, iPXE, libvirt/QEMU, ...)
#   deploy/install.sh --dev    plus every real peer the test suite talks to
# Idempotent: a second run only checks. Needs root for apt (uses sudo if not root).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

RUNTIME_PKGS=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev   # libvirt-python builds against these
  dnsmasq-base ipxe ipxe-qemu pxelinux syslinux-common           # DHCP + first-stage boot files
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils ovmf  # guests and the lab
  openssh-client genisoimage debootstrap busybox-static kmod cpio zstd apt-cacher-ng iproute2
  grub-pc-bin grub2-common e2fsprogs fdisk                       # the lab's Debian disk image
)
DEV_PKGS=(
  postgresql                      # the API suite runs on SQLite and PostgreSQL
  openipmi ipmitool               # ipmi_sim BMCs, checked with ipmitool
  tftp-hpa atftp tftpd-hpa curl   # TFTP clients + the reference server for bench/tftp
  libxml2-utils virtinst          # virt-xml-validate, virt-install (bench/virt reference)
  openssh-server sshpass nftables # namespace SSH hosts for Ansible
  debconf-utils cloud-init grub-common  # preseed, cloud-config and grub.cfg validators
  netcat-openbsd wrk bridge-utils iptables
  docker-compose                  # parses deploy/compose.yaml (no engine needed)
  debian-installer-12-netboot-amd64  # the installer-driven (preseed) path of the e2e lab
)
PKGS=("${RUNTIME_PKGS[@]}")
[ "$DEV" = 1 ] && PKGS+=("${DEV_PKGS[@]}")

# Root needs no sudo (a fresh Debian 12 machine has none installed); anyone else needs sudo.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "prov: deploy/install.sh needs root for apt: run it as root, or install sudo and run it as a sudo user" >&2
    exit 1
  fi
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "prov: installing system packages: ${missing[*]}"
  # Packages must not start their own daemons (tftpd-hpa, libvirtd, postgresql, apt-cacher-ng):
  # prov and its tests start exactly what they need. policy-rc.d is removed again afterwards.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$made_policy" = 1 ] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
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
  touch "$stamp"
fi
echo "prov: installed ($(.venv/bin/prov --version 2>/dev/null || echo prov)); run: .venv/bin/prov serve"

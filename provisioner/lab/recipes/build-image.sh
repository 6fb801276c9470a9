#!/bin/sh
# Build prov's lab OS image: a raw Debian 12 disk (MBR, one ext4 partition
# labelled prov-root, GRUB for BIOS) with the cloud kernel, systemd,
# openssh-server and cloud-init; the first boot reads the NoCloud seed that the
# deploy agent injects, and grows the partition to the disk.
#
#   build-image.sh OUTDIR   -> OUTDIR/{disk.raw,disk.raw.sha256,packages.txt}
#   build-image.sh --key    -> prints the recipe key (what the cache is keyed by)
# (deploy/build-image.sh in a checkout runs this file; it ships inside the
# package, provisioner/lab/recipes/, with the static files in image/.)
#
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs, fdisk (sfdisk),
# grub-pc-bin (boot.img, core modules) and grub-common (grub-mkimage).
# Environment: PROV_MIRROR (default http://deb.debian.org/debian),
# PROV_ROOTFS_CACHE: directory keeping the debootstrapped tree as a tarball
# keyed by the package list, so re-assembling the disk skips debootstrap.
# provisioner/lab/images.py (ensure_image) caches this script's output.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
RELEASE=bookworm
MIRROR=${PROV_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PROV_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Why each package (minbase has none of these):
#   linux-image-cloud-amd64  virtio drivers without 300 MB of bare-metal modules
#   systemd-sysv udev        init and device discovery (udev is only a Recommends)
#   openssh-server sudo python3  what the configuration step (Ansible) needs
#   cloud-init cloud-guest-utils  reads the NoCloud seed; growpart for the first boot
#   ifupdown isc-dhcp-client iproute2  cloud-init's Debian network renderer (ENI)
#   e2fsprogs netbase kmod   fsck/resize2fs, /etc/services, modprobe
#   zstd                     initramfs compression that unpacks fast
PACKAGES="linux-image-cloud-amd64 systemd-sysv udev openssh-server sudo python3 cloud-init
cloud-guest-utils ifupdown isc-dhcp-client iproute2 e2fsprogs netbase kmod zstd"
# shellcheck disable=SC2086 # unquoted on purpose: one package per word
PACKAGES=$(echo $PACKAGES | tr ' ' '\n' | LC_ALL=C sort | tr '\n' ',' | sed 's/,$//')

rootfs_key() {
    printf '%s\n%s\n%s\n%s\n' "$RELEASE" "$MIRROR" "$SECURITY_MIRROR" "$PACKAGES" | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--key" ]; then
    # The disk also depends on this script and the static files it copies in.
    cat "$0" "$HERE"/image/* | sha256sum | cut -c1-16 | sed "s/^/$(rootfs_key)-/"
    exit 0
fi
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR | --key" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }

OUT=$(mkdir -p "$1" && cd "$1" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/prov-image.XXXXXX")
ROOT="$WORK/root"
cleanup() {
    for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    # --one-file-system: never follow a mount that did not go away (/dev!).
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT INT TERM

# --- 1. the root tree (cached: debootstrap is ~2 minutes) ----------------------
CACHE=${PROV_ROOTFS_CACHE:-}
TARBALL="${CACHE:+$CACHE/rootfs-$(rootfs_key).tar}"
mkdir -p "$ROOT"
if [ -n "$TARBALL" ] && [ -s "$TARBALL" ]; then
    tar -C "$ROOT" --xattrs --numeric-owner -xf "$TARBALL"
else
    # debootstrap's own resolver ignores virtual packages (python3-cryptography
    # needs one, python3-cffi-backend-api-min): bootstrap minbase, then let apt
    # install the rest.
    debootstrap --variant=minbase "$RELEASE" "$ROOT" "$MIRROR" >&2
    # No daemon may start inside the chroot (ssh's postinst would start sshd on
    # this machine): policy-rc.d 101 = "action forbidden" (invoke-rc.d(8)).
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    # Security updates at build time (the kernel especially).
    printf 'deb %s %s main\ndeb %s %s-security main\n' "$MIRROR" "$RELEASE" "$SECURITY_MIRROR" "$RELEASE" \
        >"$ROOT/etc/apt/sources.list"
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -q update >&2
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -q -y upgrade >&2
    # shellcheck disable=SC2046 # word splitting of the package list is intended
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install \
        $(echo "$PACKAGES" | tr ',' ' ') >&2
    chroot "$ROOT" apt-get clean
    umount "$ROOT/dev" "$ROOT/sys" "$ROOT/proc"
    rm -f "$ROOT/usr/sbin/policy-rc.d"
    # Identity and caches must not be baked into an image that many hosts share:
    # systemd makes a machine-id on first boot, cloud-init makes SSH host keys.
    : >"$ROOT/etc/machine-id"
    rm -f "$ROOT"/etc/ssh/ssh_host_*
    rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
        "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
    find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    if [ -n "$TARBALL" ]; then
        mkdir -p "$CACHE"
        tar -C "$ROOT" --xattrs --numeric-owner -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    fi
fi
install -m 0644 "$HERE/image/initramfs.conf" "$ROOT/etc/initramfs-tools/conf.d/prov.conf"
install -m 0644 "$HERE/image/initramfs-modules" "$ROOT/etc/initramfs-tools/modules"
mount --bind /dev "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" update-initramfs -u -k all >&2
umount "$ROOT/proc" "$ROOT/dev"
rm -f "$ROOT"/boot/*.old-dkms "$ROOT"/boot/*.bak
install -m 0644 "$HERE/image/fstab" "$ROOT/etc/fstab"
install -m 0644 "$HERE/image/99-prov.cfg" "$ROOT/etc/cloud/cloud.cfg.d/99-prov.cfg"
echo "localhost" >"$ROOT/etc/hostname"
mkdir -p "$ROOT/boot/grub"
install -m 0644 "$HERE/image/grub.cfg" "$ROOT/boot/grub/grub.cfg"
echo "$PACKAGES" | tr ',' '\n' >"$OUT/packages.txt"

# --- 2. a tight disk: 1 MiB for MBR + GRUB core, the tree + 1/8 + 48 MiB -------
# (ext4 metadata and journal fit in the 48 MiB; every MiB costs deploy time
# under TCG, and cloud-init grows the file system on the first boot.)
# Built from files alone: no loop device, no mount (this machine's kernel has
# no partition table support, and a build should not need any).
GRUB_LIB=/usr/lib/grub/i386-pc
mkdir -p "$ROOT/boot/grub/i386-pc"
cp "$GRUB_LIB"/*.mod "$GRUB_LIB"/*.lst "$ROOT/boot/grub/i386-pc/"
used_mib=$(du -sxm "$ROOT" | cut -f1)
fs_mib=$(( used_mib + used_mib / 8 + 48 ))
fs="$WORK/root.ext4"
# -d copies the tree into the new file system; no lazy init (a stranger's
# first boot should not spend TCG time zeroing inode tables).
mke2fs -q -t ext4 -L prov-root -E lazy_itable_init=0,lazy_journal_init=0 -d "$ROOT" "$fs" "${fs_mib}M"
disk="$WORK/disk.raw"
truncate -s $(( (fs_mib + 1) * 1024 * 1024 )) "$disk"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q "$disk"
dd if="$fs" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
# GRUB for BIOS the way grub-install lays it out (GRUB manual, "BIOS
# installation"): boot.img's first 440 bytes in the MBR (the partition table
# after them stays), core.img in the gap before the partition at sector 1,
# which is where boot.img looks for it by default. grub-mkimage fills in
# core.img's own length; core.img carries what it needs to reach the prefix,
# the rest is loaded from /boot/grub/i386-pc.
grub-mkimage -O i386-pc -o "$WORK/core.img" -p "(hd0,msdos1)/boot/grub" biosdisk part_msdos ext2
[ "$(stat -c %s "$WORK/core.img")" -lt $(( 2047 * 512 )) ] || { echo "core.img does not fit before 1 MiB" >&2; exit 1; }
dd if="$GRUB_LIB/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

mv "$disk" "$OUT/disk.raw"
(cd "$OUT" && sha256sum disk.raw >disk.raw.sha256)
echo "$OUT/disk.raw: $(du -m --apparent-size "$OUT/disk.raw" | cut -f1) MiB, tree $used_mib MiB" >&2

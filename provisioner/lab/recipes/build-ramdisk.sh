#!/bin/sh
# Build prov's deploy/test ramdisk from Debian packages only.
#
#   build-ramdisk.sh OUTDIR     -> OUTDIR/{vmlinuz,vmlinux,initrd.img,versions.txt}
#   build-ramdisk.sh --resolve  -> prints "package=version" for the inputs (cache key)
# (deploy/build-ramdisk.sh in a checkout runs this file; it ships inside the
# package, provisioner/lab/recipes/, so an installed wheel can build it too.)
#
# vmlinuz is the bzImage (for iPXE/pxelinux and `qemu -kernel`); vmlinux is the
# decompressed ELF for QEMU's PVH direct boot, which skips the BIOS and the
# in-kernel decompressor (~10 s instead of ~18 s to the first console line
# under TCG). initrd.img is a zstd-compressed cpio (newc) with static busybox,
# the virtio/ext4/vfat/iso9660 modules and their dependencies, and
# ramdisk/init beside this script (see its header for the kernel command line contract).
#
# Environment: PROV_KERNEL_META (default linux-image-amd64) picks the kernel;
# PROV_DEB_CACHE keeps downloaded .debs between builds (default OUTDIR/.debs);
# PYTHON runs the vmlinux extractor (default python3).
# provisioner/lab/ramdisk.py (ensure_ramdisk) caches this script's output.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
# The directory holding the provisioner package (a checkout or site-packages):
# the vmlinux extractor is python -m provisioner.lab.ramdisk.
PKG_PARENT=$(cd "$HERE/../../.." && pwd)
KMETA=${PROV_KERNEL_META:-linux-image-amd64}

# The modules the ramdisk needs (dependencies are added by modprobe):
# virtio transport + disks (blk and scsi, sd_mod for the latter), NIC, RNG,
# balloon; ext4 to edit an image's root fs; vfat/iso9660 + code pages for
# NoCloud seeds; crc32c_generic because ext4 needs a crc32c provider and the
# SSE4.2 one (crc32c_intel) does not load on TCG's default CPU model.
MODULES="virtio_pci virtio_blk virtio_scsi sd_mod virtio_net virtio_rng virtio_balloon
ext4 crc32c_generic vfat nls_cp437 nls_iso8859_1 nls_utf8 iso9660"

resolve() {
    # The meta package depends on the real, versioned kernel package.
    kpkg=$(apt-cache depends "$KMETA" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || { echo "cannot resolve the kernel package behind $KMETA" >&2; exit 1; }
    # One apt-cache call for both (each call parses every package list: slow on a busy machine).
    apt-cache policy "$kpkg" busybox-static | awk '
        /^[^ ]/ { pkg = $1; sub(/:$/, "", pkg) }
        /Candidate:/ { if ($2 == "(none)") { print "no candidate version for " pkg > "/dev/stderr"; exit 1 }
                       print pkg "=" $2; n++ }
        END { if (n != 2) exit 1 }'
}

if [ "${1:-}" = "--resolve" ]; then
    resolve
    exit 0
fi
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR | --resolve" >&2; exit 2; }

OUT=$(mkdir -p "$1" && cd "$1" && pwd)
DEBS=${PROV_DEB_CACHE:-$OUT/.debs}
mkdir -p "$DEBS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/prov-ramdisk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

PKGS=$(resolve)
echo "$PKGS" >"$OUT/versions.txt"

# Fetch (once) and unpack each package; dpkg -x needs no root.
for pv in $PKGS; do
    p=${pv%%=*}; v=${pv#*=}
    # apt-get download escapes the epoch colon as %3a in the file name.
    deb="$DEBS/${p}_$(echo "$v" | sed 's/:/%3a/')_amd64.deb"
    if [ ! -s "$deb" ]; then
        # Sandbox::User=root: the _apt user may not be able to write to the cache dir.
        (cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "$p=$v" >&2)
    fi
    mkdir -p "$WORK/$p"
    dpkg -x "$deb" "$WORK/$p"
done
KPKG=$(echo "$PKGS" | awk -F= '/^linux-image-/ {print $1; exit}')
KROOT="$WORK/$KPKG"
KVER=$(ls "$KROOT/lib/modules")
# Debian generates modules.dep in the postinst; we never ran it.
depmod -b "$KROOT" "$KVER"

ROOT="$WORK/root"
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/etc" "$ROOT/proc" \
    "$ROOT/sys" "$ROOT/dev" "$ROOT/run" "$ROOT/tmp" "$ROOT/mnt" "$ROOT/root" "$ROOT/lib/modules"
cp "$WORK/busybox-static/bin/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list-full); do
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# Modules, flattened, in load order (each dependency before its users, once).
: >"$WORK/order"
for m in $MODULES; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}' >>"$WORK/order"
done
awk '!seen[$0]++' "$WORK/order" | while read -r ko; do
    cp "$ko" "$ROOT/lib/modules/"
    basename "$ko"
done >"$ROOT/etc/modules.order"

install -m 0755 "$HERE/ramdisk/init" "$ROOT/init"
install -m 0755 "$HERE/ramdisk/udhcpc.script" "$ROOT/etc/udhcpc.script"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"

# newc is the only cpio format the kernel unpacks; fixed owner and mtime and a
# sorted file list keep the archive reproducible.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | zstd -q -19 -T0 >"$WORK/initrd.img"
cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
PYTHONPATH="$PKG_PARENT${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m provisioner.lab.ramdisk \
    extract-vmlinux "$WORK/vmlinuz" "$WORK/vmlinux"
mv "$WORK/vmlinuz" "$WORK/vmlinux" "$WORK/initrd.img" "$OUT/"
echo "$OUT: kernel $KVER, $(wc -l <"$ROOT/etc/modules.order") modules" >&2

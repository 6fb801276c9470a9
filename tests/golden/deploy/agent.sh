#!/bin/sh
# prov deploy agent for node1 (52:54:00:AA:00:01), profile debian12-image.
# Console lines start with PROV-AGENT:; every step is reported to the controller.
set -u
set -o pipefail

EVENTS=http://10.0.2.2:8700/install/v1/tok-123/events
IMAGE_URL=http://10.0.2.2:8700/images/debian12.raw
IMAGE_SHA256=abababababababababababababababababababababababababababababababab
IMAGE_SIZE=1048576
IMAGE_FORMAT=raw
DISK=/dev/vda
AFTER=poweroff
ON_ERROR=poweroff
STATE=/run/prov
MNT=/mnt/target
mkdir -p "$STATE" "$MNT"

json_string() { # $1 -> the inside of a JSON string (no control characters)
    printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'
}

report() { # event message [percent]; never fails the deploy (the console has it too)
    echo "PROV-AGENT: $1${3:+ $3%} $2"
    body="{\"event\": \"$1\", \"message\": \"$(json_string "$2")\"${3:+, \"progress\": $3}}"
    # Debian's busybox wget has no -T (it crashes on it): bound it with timeout.
    timeout 20 wget -q -O /dev/null --header "Content-Type: application/json" --post-data "$body" "$EVENTS" \
        || echo "PROV-AGENT: could not report '$1' to the controller"
}

fail() {
    umount "$MNT" 2>/dev/null
    report error "$1"
    echo "$ON_ERROR" >"$STATE/after"
    exit 1
}

now() { cut -d' ' -f1 /proc/uptime; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

disk_bytes() { echo $(( $(cat "/sys/block/$1/size") * 512 )); }  # sysfs size is in 512-byte sectors

pick_disk() {
    for b in /sys/block/vd* /sys/block/sd* /sys/block/nvme*n* /sys/block/xvd*; do
        [ -e "$b" ] || continue
        name=${b##*/}
        [ "$(disk_bytes "$name")" -ge "$IMAGE_SIZE" ] && { echo "/dev/$name"; return 0; }
    done
    return 1
}

partition() { # disk number -> partition device (nvme0n1 -> nvme0n1p1, vda -> vda1)
    case "$1" in *[0-9]) echo "${1}p$2" ;; *) echo "$1$2" ;; esac
}

report start "deploy agent on $(hostname), image $IMAGE_URL ($IMAGE_SIZE bytes, $IMAGE_FORMAT)"

# --- 1. target disk ------------------------------------------------------------------
if [ -z "$DISK" ]; then
    DISK=$(pick_disk) || fail "no disk of at least $IMAGE_SIZE bytes"
fi
[ -b "$DISK" ] || fail "target disk $DISK does not exist"
NAME=${DISK##*/}
[ "$(disk_bytes "$NAME")" -ge "$IMAGE_SIZE" ] || fail "disk $DISK ($(disk_bytes "$NAME") bytes) is smaller than the image ($IMAGE_SIZE bytes)"

case "$IMAGE_FORMAT" in
    raw) DECOMPRESS=cat ;;
    gz) DECOMPRESS="gunzip -c" ;;
    xz) DECOMPRESS="unxz -c" ;;
    *) fail "image format $IMAGE_FORMAT is not supported (raw, gz, xz)" ;;
esac

# --- 2. stream the image onto the disk ---------------------------------------------------
t0=$(now)
# Sectors written so far, from the disk's own counters (Documentation/block/stat.rst,
# field 7): progress without help from wget or dd.
written() { awk '{ print $7 * 512 }' "/sys/block/$NAME/stat"; }
base=$(written)
(
    # shellcheck disable=SC2086 # $DECOMPRESS is a command with its option
    wget -q -O - "$IMAGE_URL" | $DECOMPRESS | dd of="$DISK" bs=1M conv=fsync 2>"$STATE/dd.log"
    echo $? >"$STATE/write.rc"
) &
writer=$!
last=-1
while kill -0 "$writer" 2>/dev/null; do
    sleep 3
    pct=$(( ($(written) - base) * 100 / IMAGE_SIZE ))
    [ "$pct" -gt 99 ] && pct=99
    # One event per 10 % step keeps the host's history readable.
    if [ $(( pct / 10 )) -gt $(( last / 10 )) ] || [ "$last" -lt 0 ]; then
        report progress "writing $DISK" "$pct"
        last=$pct
    fi
done
wait "$writer"
rc=$(cat "$STATE/write.rc" 2>/dev/null || echo 1)
[ "$rc" = 0 ] || fail "writing the image to $DISK failed (exit $rc): $(tail -c 300 "$STATE/dd.log")"
write_s=$(secs "$t0")

# --- 3. verify what is on the disk, not what went through the pipe ---------------------------
t1=$(now)
report progress "verifying $DISK (sha256 of the first $IMAGE_SIZE bytes)" 99
sync
blockdev --flushbufs "$DISK"
# Without this the read-back would be served from the page cache dd just filled.
echo 3 >/proc/sys/vm/drop_caches
# Whole MiBs with dd (head -c reads in small chunks: half the speed under
# TCG), then the tail of an image that is not a multiple of 1 MiB.
mib=$(( IMAGE_SIZE / 1048576 ))
rest=$(( IMAGE_SIZE % 1048576 ))
got=$( { dd if="$DISK" bs=1M count="$mib" 2>/dev/null
         [ "$rest" -eq 0 ] || dd if="$DISK" bs=1M skip="$mib" count=1 2>/dev/null | head -c "$rest"
       } | sha256sum | cut -d' ' -f1)
[ "$got" = "$IMAGE_SHA256" ] || fail "checksum mismatch on $DISK: expected sha256 $IMAGE_SHA256, read back $got"
verify_s=$(secs "$t1")

# --- 4. NoCloud seed into the image's root file system -----------------------------------------
blockdev --rereadpt "$DISK" || fail "cannot re-read the partition table of $DISK"
root=""
n=1
while [ $n -le 16 ]; do
    part=$(partition "$DISK" $n)
    n=$((n + 1))
    [ -b "$part" ] || continue
    mount -t ext4 "$part" "$MNT" 2>/dev/null || continue
    if [ -f "$MNT/etc/os-release" ]; then root=$part; break; fi
    umount "$MNT"
done
[ -n "$root" ] || fail "no ext4 root file system (with /etc/os-release) on $DISK for the NoCloud seed"
SEED="$MNT/var/lib/cloud/seed/nocloud"
mkdir -p "$SEED" || fail "cannot create $SEED"
printf '%s' 'instance-id: "prov-node1-42"
local-hostname: "node1"
' >"$SEED/meta-data" \
    && printf '%s' '#cloud-config
# prov: first boot of node1.lab.example after an image deploy (profile debian12-image).
# JSON values are valid YAML and need no escaping rules of their own.
hostname: "node1"
fqdn: "node1.lab.example"
preserve_hostname: false
manage_etc_hosts: true
# SSH keys only: no root login, no passwords.
disable_root: true
ssh_pwauth: false
users:
  - name: "prov"
    gecos: prov admin
    shell: /bin/bash
    groups: [sudo]
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests prov@test"]
# The console line the controller (and the tests) watch for: cloud-init'"'"'s last stage ran.
final_message: "PROV-FIRSTBOOT: cloud-init $VERSION finished after $UPTIME s (datasource $DATASOURCE)"
' >"$SEED/user-data" \
    && printf '%s' 'version: 2
ethernets:
  prov0:
    match:
      macaddress: "52:54:00:aa:00:01"
    set-name: prov0
    dhcp4: true
' >"$SEED/network-config" \
    || fail "cannot write the NoCloud seed to $root"
chmod 0600 "$SEED/user-data"
umount "$MNT" || fail "cannot unmount $root"
sync

report done "image written to $DISK in ${write_s}s, sha256 verified in ${verify_s}s, NoCloud seed in $root"
echo "$AFTER" >"$STATE/after"
exit 0

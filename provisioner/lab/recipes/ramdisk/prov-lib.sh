#!/bin/sh
# Shared helpers of the ramdisk's inspect and wipe modes (sourced; busybox sh).

# $1 -> a JSON string literal, quotes included; empty -> null. Control
# characters become spaces (tabs, newlines) or are dropped, \ and " escaped.
jstr() {
    if [ -z "$1" ]; then
        printf 'null'
    else
        printf '"%s"' "$(printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037\177' | sed 's/\\/\\\\/g; s/"/\\"/g')"
    fi
}

# $1 -> a JSON number when it is a non-negative integer, else null.
jint() {
    case "$1" in
        '' | *[!0-9]*) printf 'null' ;;
        *) printf '%s' "$1" ;;
    esac
}

jbool() { if [ "$1" = 1 ] || [ "$1" = true ]; then printf 'true'; else printf 'false'; fi; }

# The first line of a sysfs/procfs file, trailing blanks trimmed; empty when unreadable.
rd() { [ -r "$1" ] && head -n1 "$1" 2>/dev/null | sed 's/[[:space:]]*$//'; }

# report EVENT MESSAGE [PERCENT] to prov.report_url (the install events endpoint,
# the deploy agent's contract: {"event", "message", "progress"}). Three tries.
report() {
    echo "PROV-RAMDISK: $1${3:+ $3%} $2"
    [ -n "${REPORT_URL:-}" ] || return 0
    body="{\"event\": \"$1\", \"message\": $(jstr "$2")${3:+, \"progress\": $3}}"
    for delay in 1 2 4; do
        timeout 20 wget -q -O /dev/null --header "Content-Type: application/json" --post-data "$body" \
            "$REPORT_URL" 2>/dev/null && return 0
        sleep "$delay"
    done
    echo "PROV-RAMDISK: could not report '$1' to the controller"
}

# Block devices that are disks: skip RAM disks, loops, CD-ROMs, device mapper and zram.
list_disks() {
    for b in /sys/block/*; do
        [ -e "$b" ] || continue
        name=${b##*/}
        case "$name" in loop* | ram* | sr* | dm-* | zram* | md* | fd*) continue ;; esac
        [ -e "$b/device" ] || continue
        echo "$name"
    done
}

# post_json URL FILE: POST FILE as application/json with bounded retries and
# exponential backoff (1, 2, 4, 8, 16 s between 6 attempts, ~31 s of waiting).
# A 4xx other than 408/429 is final (the controller refused this document:
# sending it again cannot help). 0 when the controller took it.
post_json() {
    attempt=1; delay=1
    while :; do
        err=$(timeout 30 wget -q -O /dev/null --header "Content-Type: application/json" --post-file "$2" "$1" 2>&1) \
            && { echo "PROV-RAMDISK: posted $2 (attempt $attempt)"; return 0; }
        code=$(echo "$err" | sed -n 's/.*HTTP\/1\.[01] \([0-9][0-9][0-9]\).*/\1/p' | head -n1)
        echo "PROV-RAMDISK: post attempt $attempt failed${code:+ (HTTP $code)}"
        case "$code" in 408 | 429) ;; 4??) return 1 ;; esac
        [ "$attempt" -ge "${POST_ATTEMPTS:-6}" ] && return 1
        sleep "$delay"
        attempt=$((attempt + 1)); delay=$((delay * 2))
    done
}

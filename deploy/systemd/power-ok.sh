#!/bin/sh
# May a scheduled fine-tune start now? Used as ExecCondition= of edge-sel-finetune.service.
#
# Exit 0 (run): an external supply (Mains, USB, Wireless) is online, or there is no system
#   battery at all (a Jetson, a desktop), or the system batteries' mean charge is at least
#   EDGE_SEL_MIN_BATTERY percent (default 50).
# Exit 1 (skip this start, the unit is not marked failed): on battery below the threshold, or a
#   battery whose charge cannot be read.
# Exit 255 (failure): a malformed EDGE_SEL_MIN_BATTERY.
# Files are read below EDGE_SEL_SYSFS_ROOT (default /), like edge-sel itself. POSIX sh only: it
# runs before, and without, edge-sel's Python environment.
set -u

root="${EDGE_SEL_SYSFS_ROOT:-}"
min="${EDGE_SEL_MIN_BATTERY:-50}"
case "$min" in
    '' | *[!0-9]*)
        echo "power-ok: EDGE_SEL_MIN_BATTERY must be a whole percentage, got '$min'" >&2
        exit 255 ;;
esac

batteries=0
unreadable=0
total=0
for dir in "$root"/sys/class/power_supply/*; do
    [ -e "$dir/type" ] || continue
    name=$(basename "$dir")
    type=$(cat "$dir/type" 2>/dev/null)
    case "$type" in
        Mains | USB | Wireless)
            if [ "$(cat "$dir/online" 2>/dev/null)" = "1" ]; then
                echo "power-ok: on external power ($name online)"
                exit 0
            fi ;;
        Battery)
            # A mouse or headset battery reports scope Device; it says nothing about this machine.
            [ "$(cat "$dir/scope" 2>/dev/null)" = "Device" ] && continue
            capacity=$(cat "$dir/capacity" 2>/dev/null)
            case "$capacity" in
                '' | *[!0-9]*) unreadable=$((unreadable + 1)) ;;
                *) batteries=$((batteries + 1)); total=$((total + capacity)) ;;
            esac ;;
    esac
done

if [ "$batteries" -eq 0 ] && [ "$unreadable" -eq 0 ]; then
    echo "power-ok: no system battery (mains-powered device)"
    exit 0
fi
if [ "$batteries" -eq 0 ]; then
    echo "power-ok: on battery and its charge cannot be read: skipping" >&2
    exit 1
fi
level=$((total / batteries))
if [ "$level" -ge "$min" ]; then
    echo "power-ok: on battery at ${level}% (threshold ${min}%)"
    exit 0
fi
echo "power-ok: on battery at ${level}%, below ${min}%: skipping this run" >&2
exit 1

#!/usr/bin/env bash
# Builds a small SD-card-like disk image for tests, without root or loop devices: an MBR partition
# table (like Raspberry Pi OS: partition 1 = FAT32 "bootfs" at 4 MiB, type c; partition 2 = Linux)
# made with sfdisk, the FAT file system written at the partition's offset with mkfs.fat --offset.
# The Linux partition is left empty (zeros).
# Usage: image/make-test-disk.sh OUT.img
set -euo pipefail
(($# == 1)) || { echo "usage: $0 OUT.img" >&2; exit 1; }
out=$1
boot_start=8192   # sectors of 512 bytes: 4 MiB
boot_size=131072  # 64 MiB (FAT32 needs >= 65525 clusters)
root_size=16384   # 8 MiB
rm -f "$out"
truncate -s $(((boot_start + boot_size + root_size) * 512)) "$out"
printf 'label: dos\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
    "$boot_start" "$boot_size" "$((boot_start + boot_size))" "$root_size" | sfdisk -q "$out"
mkfs.fat -F 32 -n BOOTFS --offset "$boot_start" "$out" $((boot_size / 2)) 2>&1 >/dev/null | { grep -v "block count mismatch" >&2 || true; }
echo "$out: FAT32 bootfs at sector $boot_start, Linux partition at sector $((boot_start + boot_size))"

#!/usr/bin/env bash
# Writes a provisioning file into the FAT boot partition of an SD-card image, as
# /boot/firmware/matrix-intercom.toml of the running system. No root, no loop devices, no mount:
# the partition's byte offset comes from the image's partition table (sfdisk), mtools writes
# into the FAT file system at that offset.
#
# Usage: image/inject-provisioning.sh IMAGE FILE [NAME]
#   IMAGE  an uncompressed disk image (Raspberry Pi OS .img, or our pi-gen output); unxz it first
#   FILE   the provisioning TOML (same schema as /etc/matrix-intercom/config.toml)
#   NAME   name in the boot partition (default matrix-intercom.toml)
# Needs: sfdisk (fdisk), mtools. Overwrites an existing file of that name. Exit 0 on success, after
# reading the file back and comparing it.
set -euo pipefail
die() {
    echo "inject-provisioning: $*" >&2
    exit 1
}
(($# == 2 || $# == 3)) || die "usage: $0 IMAGE FILE [NAME]"
img=$1 file=$2 name=${3:-matrix-intercom.toml}
[[ -f $img ]] || die "$img: no such image file"
[[ -f $file ]] || die "$file: no such provisioning file"
case $img in *.xz | *.gz | *.zip) die "$img is compressed: decompress it first (unxz / gunzip / unzip)" ;; esac
[[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "NAME must be a plain file name, got '$name'"
command -v sfdisk >/dev/null || die "sfdisk not found (Debian package fdisk)"
command -v mcopy >/dev/null || die "mcopy not found (Debian package mtools)"

dump=$(sfdisk --dump "$img" 2>&1) || die "$img has no readable partition table: $dump"
sector=$(sed -n 's/^sector-size: *\([0-9]*\)/\1/p' <<<"$dump")
sector=${sector:-512}
# the first FAT partition: MBR types 1 4 6 b c e ef, GPT EFI system or Microsoft basic data
start=
while IFS= read -r line; do
    [[ $line == *start=* ]] || continue
    type=$(sed -n 's/.*type= *\([^, ]*\).*/\1/p' <<<"$line")
    case ${type^^} in
    1 | 4 | 6 | B | C | E | EF | C12A7328-F81F-11D2-BA4B-00A0C93EC93B | EBD0A0A2-B9E5-4433-87C0-68B6B72699C7)
        start=$(sed -n 's/.*start= *\([0-9]*\).*/\1/p' <<<"$line")
        break
        ;;
    esac
done <<<"$dump"
[[ -n $start ]] || die "$img has no FAT partition (partition table: $(grep start= <<<"$dump" | tr -s ' ' | tr '\n' ';'))"
offset=$((start * sector))

export MTOOLS_SKIP_CHECK=1
target="$img@@$offset"
minfo -i "$target" >/dev/null 2>&1 || die "the partition at byte $offset of $img is not a FAT file system"
mcopy -o -i "$target" "$file" "::$name" || die "writing $name into $img failed"
back=$(mktemp)
trap 'rm -f "$back"' EXIT
mcopy -n -i "$target" "::$name" "$back" || die "reading $name back from $img failed"
cmp -s "$file" "$back" || die "$name read back from $img differs from $file"
echo "wrote $file as $name into the FAT partition of $img (byte offset $offset)"

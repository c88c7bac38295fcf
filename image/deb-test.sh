#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb and checks what a device would get:
#   - control: package architecture, Depends covering every shared library the binary needs;
#   - files: the binary, the systemd unit (same as image/matrix-intercom.service), the config
#     (same as config.example.toml) at /etc/matrix-intercom/config.toml listed as a conffile,
#     sysusers.d (user matrix-intercom in groups audio and gpio), tmpfiles.d, the gpio udev rule;
#   - maintainer scripts: postinst creates the user and enables the unit (cargo-deb's systemd
#     fragments), prerm/postrm stop/disable/purge;
#   - the binary: ELF machine of the target, stripped, GLIBC_ symbol versions <= 2.36
#     (Raspberry Pi OS bookworm), and its size.
# Usage: image/deb-test.sh [--no-build] [--profile P] [TARGET...]   (default: aarch64 and armv7)
#   --no-build   package the existing binaries (cargo deb --no-build)
#   --profile P  the cargo profile to package (default release; the test command packages the
#                `dev` cross builds it already has: the package layout is the same, a release
#                build of two targets would not fit its time budget)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
glibc_max=2.36
build=1
profile=release
while (($#)); do
    case $1 in
    --no-build) build=0 ;;
    --profile) profile=$2; shift ;;
    *) break ;;
    esac
    shift
done
targets=("$@")
((${#targets[@]})) || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
target_dir=${CARGO_TARGET_DIR:-$repo/target}

log() { printf '\033[1m[deb-test]\033[0m %s\n' "$*" >&2; }
fails=0
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then log "ok   $what"; else
        log "FAIL $what"
        fails=$((fails + 1))
    fi
}
command -v cargo-deb >/dev/null || { log "installing cargo-deb"; cargo install --locked cargo-deb; }

for target in "${targets[@]}"; do
    case $target in
    aarch64-unknown-linux-gnu) arch=arm64 machine=AArch64 prefix=aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) arch=armhf machine=ARM prefix=arm-linux-gnueabihf ;;
    *) log "unknown target $target"; exit 1 ;;
    esac
    out=$target_dir/$target/debian
    rm -rf "$out"
    flags=(--target "$target" --profile "$profile" --output "$out/")
    ((build)) || flags+=(--no-build)
    # cargo-deb strips with the target's objcopy (binutils-<prefix> comes with the cross gcc)
    log "cargo deb ${flags[*]}"
    cargo deb "${flags[@]}" >&2
    deb=$(find "$out" -name "matrix-intercom_*_$arch.deb" | head -1)
    [[ -n $deb ]] || { log "FAIL no matrix-intercom_*_$arch.deb in $out"; exit 1; }
    log "$deb ($(du -h "$deb" | cut -f1))"
    x=$(mktemp -d)
    trap 'rm -rf "$x"' EXIT
    dpkg-deb -x "$deb" "$x/root"
    dpkg-deb -e "$deb" "$x/control"
    field() { sed -n "s/^$1: //p" "$x/control/control"; }

    check "Architecture: $arch" test "$(field Architecture)" = "$arch"
    bin=$x/root/usr/bin/matrix-intercom
    check "binary /usr/bin/matrix-intercom, executable" test -x "$bin"
    unit=$(find "$x/root" -path '*/systemd/system/matrix-intercom.service' | head -1)
    check "systemd unit installed, same as image/matrix-intercom.service" \
        cmp -s "$unit" image/matrix-intercom.service
    check "config at /etc/matrix-intercom/config.toml, same as config.example.toml" \
        cmp -s "$x/root/etc/matrix-intercom/config.toml" config.example.toml
    check "config is a conffile" grep -qx /etc/matrix-intercom/config.toml "$x/control/conffiles"
    check "config shipped mode 0600" test "$(stat -c %a "$x/root/etc/matrix-intercom/config.toml")" = 600
    sysusers=$x/root/usr/lib/sysusers.d/matrix-intercom.conf
    check "sysusers.d: user matrix-intercom in groups audio and gpio" \
        bash -c "grep -q '^u matrix-intercom ' '$sysusers' && grep -q '^m matrix-intercom audio' '$sysusers' && grep -q '^m matrix-intercom gpio' '$sysusers'"
    check "tmpfiles.d: state dir 0700" grep -q '^d /var/lib/matrix-intercom 0700 matrix-intercom' \
        "$x/root/usr/lib/tmpfiles.d/matrix-intercom.conf"
    check "udev rule: gpiochip group gpio" grep -q 'KERNEL=="gpiochip\*", GROUP="gpio"' \
        "$x/root/usr/lib/udev/rules.d/60-matrix-intercom-gpio.rules"
    check "postinst creates the user and enables the unit" \
        bash -c "grep -q systemd-sysusers '$x/control/postinst' && grep -q 'deb-systemd-helper enable' '$x/control/postinst' && ! grep -q '#DEBHELPER#' '$x/control/postinst'"
    check "postinst does not start the unit on install" bash -c "! grep -q 'deb-systemd-invoke start' '$x/control/postinst'"
    check "prerm/postrm stop, disable and purge" \
        bash -c "test -x '$x/control/prerm' && grep -q 'deb-systemd-helper purge' '$x/control/postrm' && grep -q 'rm -rf /var/lib/matrix-intercom' '$x/control/postrm'"
    for s in postinst prerm postrm; do
        [[ -f $x/control/$s ]] && check "$s is valid sh" sh -n "$x/control/$s"
    done

    check "ELF machine $machine" bash -c "readelf -h '$bin' | grep -q 'Machine: *$machine'"
    check "stripped (no .symtab)" bash -c "! readelf -S '$bin' | grep -q '\.symtab'"
    # the target's objdump (binutils-$prefix, installed with the cross gcc) reads the dynamic symbols
    syms=$("$prefix-objdump" -T "$bin")
    newest=$(grep -o 'GLIBC_[0-9.]*' <<<"$syms" | sed 's/GLIBC_//' | sort -uV | tail -1)
    log "symbols of the newest glibc version (GLIBC_$newest): $(grep -E "GLIBC_${newest//./\\.}[) ]" <<<"$syms" | awk '{print $NF}' | sort -u | tr '\n' ' ')"
    check "GLIBC symbol versions <= $glibc_max (newest: $newest)" \
        test "$(printf '%s\n%s\n' "$newest" "$glibc_max" | sort -V | tail -1)" = "$glibc_max"
    depends=$(field Depends)
    check "Depends libc6 covers GLIBC_$newest" \
        bash -c "v=\$(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<'$depends'); test \"\$(printf '%s\n%s\n' \"\$v\" '$newest' | sort -V | tail -1)\" = \"\$v\""
    for lib in $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        case $lib in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*) pkg=libc6 ;;
        libgcc_s.so.1) pkg=libgcc-s1 ;;
        libasound.so.2) pkg=libasound2 ;;
        libopus.so.0) pkg=libopus0 ;;
        libspeexdsp.so.1) pkg=libspeexdsp1 ;;
        libsqlite3.so.0) pkg=libsqlite3-0 ;;
        *) pkg="(unknown: add $lib to Depends and to this list)" ;;
        esac
        check "needs $lib -> Depends has $pkg" grep -qE "(^|, )$pkg( |,|$)" <<<"$depends"
    done
    log "size of the stripped $target binary: $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1)); .deb $(stat -c %s "$deb") bytes"
    rm -rf "$x"
    trap - EXIT
done
((fails == 0)) || { log "$fails check(s) failed"; exit 1; }
log "PASS"

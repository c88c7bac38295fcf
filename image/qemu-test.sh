#!/usr/bin/env bash
# Whole-system test: boots Debian's arm64 kernel under qemu-system-aarch64 (`virt` machine, TCG)
# with a small initramfs and checks what the intercom relies on, from inside the guest:
#   - the PL061 GPIO controller is gpiochip0 and its line 3 gives a rising then a falling edge
#     when the host sends QMP `system_powerdown` (QEMU's power button = our door button);
#   - a virtio-sound ALSA card appears (and snd-aloop loads); a tone played in the guest arrives in
#     QEMU's wav audiodev file on the host;
#   - user networking reaches 10.0.2.2 = the loopback of the network namespace QEMU runs in (the
#     test creates that namespace with only `lo` in it, so nothing else is reachable);
#   - a provisioning file injected by image/inject-provisioning.sh into a partitioned FAT disk image
#     is readable in the guest from /dev/vda1;
#   - when an aarch64 `matrix-intercom` binary is available, it runs in the guest (`--version` and
#     `check-config` with the QEMU board file).
# Nothing is installed here: scripts/setup.sh provides qemu-system-aarch64 (>= 8.2, for
# virtio-sound), mtools, dosfstools, fdisk, cpio, xz-utils, kmod. Debian arm64 packages (kernel,
# busybox, gpiod, aplay) are fetched with `apt-get download` into ${MI_CACHE:-.cache}/qemu.
#
# Usage: image/qemu-test.sh            (as root: network namespaces)
# Env:   MI_QEMU_BIN=path   aarch64 matrix-intercom binary (default: the newer of the release and
#                           debug cross builds in $CARGO_TARGET_DIR or target/, if present)
#        MI_QEMU_REQUIRE_BIN=1   fail instead of skipping the binary checks when there is none
#        MI_QEMU_TIMEOUT=secs    bound for the whole guest run (default 240)
#        MI_QEMU_KEEP=1          keep the work directory (console log, out.wav, initramfs)
# Hooks for whole-system scenarios (e.g. the daemon against the dev stack):
#        MI_QEMU_FILES="src:/dest ..."  extra files for the initramfs
#        MI_QEMU_GUEST_SCRIPT=file  busybox-sh script the guest runs after the platform checks; it
#                                   reports `MI-OK name ...`/`MI-FAIL name ...` lines and may print
#                                   `MI-PRESS` lines: the host presses the button once per line
#        MI_QEMU_NEED="name ..."    extra MI-OK names that must appear
#        MI_QEMU_HOST_CMD=cmd       run (bash -c) inside the test's namespace before QEMU starts and
#                                   stopped at the end; the guest reaches it at 10.0.2.2. It gets
#                                   MI_QEMU_CONSOLE (the guest console file) in its environment
#        MI_QEMU_NETNS=name         run QEMU in this existing network namespace (made and deleted
#                                   by the caller, e.g. with a veth to a second one) instead of a
#                                   fresh one with only lo
#        MI_QEMU_PROVISIONING=file  the provisioning file injected into the FAT partition (default:
#                                   one with only [matrix] homeserver)
#        MI_QEMU_WAV=path           where QEMU's wav audiodev writes the guest's playback (kept)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MI_CACHE:-$repo/.cache}/qemu
timeout_s=${MI_QEMU_TIMEOUT:-240}
t0=$SECONDS

log() { printf '\033[1m[qemu-test]\033[0m %s\n' "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (the test creates its own network namespace)"
for tool in qemu-system-aarch64 apt-get apt-cache dpkg-deb cpio xz modinfo readelf sfdisk mformat mcopy python3 ip; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/setup.sh first"
done
qemu_ver=$(qemu-system-aarch64 --version | sed -n '1s/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r qmaj qmin <<<"$qemu_ver"
((qmaj > 8 || (qmaj == 8 && qmin >= 2))) ||
    die "qemu-system-aarch64 $qmaj.$qmin lacks virtio-sound (needs >= 8.2): run scripts/setup.sh (installs it from bookworm-backports)"

# ---------------------------------------------------------------------------------------------
# Debian arm64 packages, cached: fetched once, extracted per package into $cache/pkg/<name>.
mkdir -p "$cache/debs" "$cache/pkg"
fetch_pkg() { # fetch_pkg NAME -> prints the extraction directory
    local name=$1 dir=$cache/pkg/$1
    if [[ ! -f $dir/.done ]]; then
        local deb
        deb=$(find "$cache/debs" -maxdepth 1 -name "${name}_*_arm64.deb" | sort -V | tail -1)
        if [[ -z $deb ]]; then
            log "downloading $name:arm64"
            (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$name:arm64" >/dev/null) ||
                die "apt-get download $name:arm64 failed (is arm64 a foreign architecture? scripts/setup.sh adds it)"
            deb=$(find "$cache/debs" -maxdepth 1 -name "${name}_*_arm64.deb" | sort -V | tail -1)
        fi
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        touch "$dir/.done"
    fi
    echo "$dir"
}

kpkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-arm64-unsigned$' | awk '{print $1}' | sort -V | tail -1)
[[ -n $kpkg ]] || die "no linux-image-6.12.*+deb12-arm64-unsigned in the apt lists (bookworm-backports or -security missing? run apt-get update)"
kdir=$(fetch_pkg "$kpkg")
vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver
[[ -d $moddir ]] || die "kernel package $kpkg has no modules for $kver"
bbdir=$(fetch_pkg busybox-static)
gpioddir=$(fetch_pkg gpiod)
libgpioddir=$(fetch_pkg libgpiod2)
alsautilsdir=$(fetch_pkg alsa-utils)

# ---------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/mi-qemu.XXXXXX")
ns=${MI_QEMU_NETNS:-mi-qemu-$$}
own_ns=
[[ -n ${MI_QEMU_NETNS:-} ]] || own_ns=1
wav=${MI_QEMU_WAV:-$work/out.wav}
qemu_pid=
host_pid=
cleanup() {
    local rc=$?
    set +e
    [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
    [[ -n $host_pid ]] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
    [[ -n ${extra_pid:-} ]] && kill -- -"$extra_pid" 2>/dev/null && wait "$extra_pid" 2>/dev/null
    [[ -n ${extra_pid:-} && ${MI_QEMU_KEEP:-} != 1 ]] && sed 's/^/    host-cmd| /' "$work/host-cmd.log" >&2
    [[ -n $own_ns ]] && ip netns del "$ns" 2>/dev/null
    if [[ ${MI_QEMU_KEEP:-} == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/lib/aarch64-linux-gnu,lib,proc,sys,dev,tmp,mnt,etc/matrix-intercom,run,var/lib/matrix-intercom,lib/modules}

# busybox and the tools the guest checks with
cp "$bbdir/bin/busybox" "$root/bin/busybox"
cp "$gpioddir/usr/bin/"{gpioinfo,gpiomon,gpioget} "$root/usr/bin/"
cp "$alsautilsdir/usr/bin/aplay" "$root/usr/bin/"
libpath=("$libgpioddir/usr/lib/aarch64-linux-gnu" /usr/lib/aarch64-linux-gnu /lib/aarch64-linux-gnu)
declare -A have_lib=()
add_libs() { # copy the shared libraries an aarch64 ELF needs, recursively
    local f=$1 lib d
    [[ $(readelf -h "$f" | awk '/Machine:/{print $2}') == AArch64 ]] || die "$f is not an AArch64 ELF"
    for lib in $(readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        [[ -n ${have_lib[$lib]:-} ]] && continue
        for d in "${libpath[@]}"; do
            if [[ -e $d/$lib ]]; then
                cp -L "$d/$lib" "$root/usr/lib/aarch64-linux-gnu/$lib"
                have_lib[$lib]=1
                add_libs "$d/$lib"
                continue 2
            fi
        done
        die "$f needs $lib, not found in ${libpath[*]} (install the :arm64 package; scripts/setup.sh)"
    done
}
[[ -e /lib/ld-linux-aarch64.so.1 ]] || die "/lib/ld-linux-aarch64.so.1 missing: install libc6:arm64 (scripts/setup.sh)"
cp -L /lib/ld-linux-aarch64.so.1 "$root/lib/ld-linux-aarch64.so.1"
for f in "$root/usr/bin/"*; do add_libs "$f"; done
# alsa-lib's configuration (aplay opens hw: devices, but alsa-lib still reads alsa.conf)
mkdir -p "$root/usr/share"
cp -r /usr/share/alsa "$root/usr/share/alsa"

# our binary, if there is one
bin=${MI_QEMU_BIN:-}
if [[ -z $bin ]]; then
    # the newer of the release and debug cross builds
    for c in "${CARGO_TARGET_DIR:-$repo/target}"/aarch64-unknown-linux-gnu/{release,debug}/matrix-intercom; do
        [[ -x $c && ( -z $bin || $c -nt $bin ) ]] && bin=$c
    done
fi
if [[ -n $bin ]]; then
    log "guest gets $bin"
    # stripped: a debug build's symbols would make the initramfs larger than the guest's memory
    if command -v aarch64-linux-gnu-strip >/dev/null; then
        aarch64-linux-gnu-strip -o "$root/usr/bin/matrix-intercom" "$bin"
    else
        cp "$bin" "$root/usr/bin/matrix-intercom"
    fi
    add_libs "$root/usr/bin/matrix-intercom"
    cp "$repo/board/qemu-virt.toml" "$root/etc/matrix-intercom/config.toml"
    # the system CA store (ca-certificates on the device): matrix-sdk's HTTP client refuses to
    # start without one, even for an http:// homeserver
    mkdir -p "$root/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
elif [[ ${MI_QEMU_REQUIRE_BIN:-} == 1 ]]; then
    die "no aarch64 matrix-intercom binary (cargo build --release --target aarch64-unknown-linux-gnu)"
else
    log "SKIP (loud): no aarch64 matrix-intercom binary built; the guest checks only the platform"
fi

# kernel modules in load order (dependencies first), decompressed: busybox insmod takes plain .ko
declare -A mod_done=() mod_path=()
while IFS= read -r f; do
    b=${f##*/}
    b=${b%%.ko*}
    mod_path[${b//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko*')
mod_order=()
add_mod() {
    local name=$1 f dep
    name=${name//-/_}
    [[ -n ${mod_done[$name]:-} ]] && return
    f=${mod_path[$name]:-}
    [[ -n $f ]] || die "module $name not in $kpkg"
    mod_done[$name]=1
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add_mod "$dep"; done
    case $f in
    *.xz) xz -dc "$f" >"$root/lib/modules/$name.ko" ;;
    *.zst) zstd -dcq "$f" >"$root/lib/modules/$name.ko" ;;
    *) cp "$f" "$root/lib/modules/$name.ko" ;;
    esac
    mod_order+=("$name")
}
# NOT gpio_keys: it would claim line 3 (the power button) and our requests would fail with EBUSY.
for m in virtio_net virtio_blk vfat nls_cp437 nls_ascii nls_utf8 virtio_snd snd_aloop; do add_mod "$m"; done
printf '%s\n' "${mod_order[@]}" >"$root/lib/modules/order"

# a 0.4 s 440 Hz tone, S16_LE stereo 48 kHz, for the playback check
python3 - "$root/tone.wav" <<'EOF'
import math, struct, sys, wave
w = wave.open(sys.argv[1], "wb")
w.setnchannels(2); w.setsampwidth(2); w.setframerate(48000)
w.writeframes(b"".join(struct.pack("<hh", v, v) for v in
    (int(12000 * math.sin(2 * math.pi * 440 * i / 48000)) for i in range(19200))))
w.close()
EOF

for pair in ${MI_QEMU_FILES:-}; do
    mkdir -p "$root/$(dirname "${pair#*:}")"
    cp "${pair%%:*}" "$root/${pair#*:}"
done
[[ -n ${MI_QEMU_GUEST_SCRIPT:-} ]] && cp "$MI_QEMU_GUEST_SCRIPT" "$root/extra.sh"
cp "$repo/image/qemu-guest-init.sh" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/init.cpio.gz"

# a partitioned disk image with a FAT partition, provisioning file injected without root/loop
nonce=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
if [[ -n ${MI_QEMU_PROVISIONING:-} ]]; then
    { echo "# mi-test-nonce = \"$nonce\""; cat "$MI_QEMU_PROVISIONING"; } >"$work/provision.toml"
else
    cat >"$work/provision.toml" <<EOF
# provisioning file written by image/qemu-test.sh
# mi-test-nonce = "$nonce"
[matrix]
homeserver = "http://10.0.2.2:8008"
EOF
fi
"$repo/image/make-test-disk.sh" "$work/disk.img" >/dev/null
"$repo/image/inject-provisioning.sh" "$work/disk.img" "$work/provision.toml" >/dev/null
log "guest assets ready: kernel $kver, $(du -h "$work/init.cpio.gz" | cut -f1) initramfs, modules: ${mod_order[*]} ($((SECONDS - t0)) s)"

# ---------------------------------------------------------------------------------------------
# The network namespace: only lo (unless the caller gave one). QEMU's slirp maps 10.0.2.2 to
# this loopback, and connects other destinations from sockets in this namespace.
if [[ -n $own_ns ]]; then
    ip netns add "$ns"
    ip -n "$ns" link set lo up
fi
console=$work/console.log
: >"$console"
port=$((20000 + $$ % 20000))
ip netns exec "$ns" python3 - "$port" >"$work/host.log" 2>&1 <<'EOF' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4)
s.settimeout(600)
while True:
    c, _ = s.accept()
    c.settimeout(10)
    try:
        c.recv(100)
        c.sendall(b"MI-HOST-HELLO\n")
    finally:
        c.close()
EOF
host_pid=$!
extra_pid=
if [[ -n ${MI_QEMU_HOST_CMD:-} ]]; then
    MI_QEMU_CONSOLE=$console ip netns exec "$ns" setsid bash -c "$MI_QEMU_HOST_CMD" >"$work/host-cmd.log" 2>&1 &
    extra_pid=$!
fi

qmp=$work/qmp.sock
boot_start=$SECONDS
boot_start_ns=$(date +%s%N)
ip netns exec "$ns" timeout "$timeout_s" qemu-system-aarch64 -M virt,acpi=off -cpu cortex-a72 -smp 2 -m 512 \
    -display none -monitor none -serial "file:$console" \
    -kernel "$vmlinuz" -initrd "$work/init.cpio.gz" \
    -append "console=ttyAMA0 panic=-1 quiet mi.port=$port" -no-reboot \
    -qmp "unix:$qmp,server=on,wait=off" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -audiodev "wav,id=a0,path=$wav" -device virtio-sound-pci,audiodev=a0 \
    -drive "file=$work/disk.img,format=raw,if=virtio" >"$work/qemu.log" 2>&1 &
qemu_pid=$!

wait_for() { # wait_for PATTERN SECONDS: until the console shows PATTERN (or QEMU ends)
    local pat=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        grep -q -- "$pat" "$console" && return 0
        kill -0 "$qemu_pid" 2>/dev/null || { grep -q -- "$pat" "$console" && return 0; return 1; }
        sleep 0.2
    done
    return 1
}
qmp_cmd() { # qmp_cmd COMMAND...: runs QMP commands, prints their replies
    python3 - "$qmp" "$@" <<'EOF'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
deadline = time.monotonic() + 10
while True:
    try:
        s.connect(sys.argv[1]); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.1)
s.settimeout(10)
f = s.makefile("rw")
json.loads(f.readline())  # greeting
for cmd in ["qmp_capabilities"] + sys.argv[2:]:
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r: break
    if "error" in r:
        sys.exit(f"QMP {cmd}: {r['error']}")
    print(cmd, "->", json.dumps(r["return"]))
EOF
}
show_console() { log "guest console:"; sed 's/^/    | /' "$console" >&2; }

wait_for "MI: init start" 120 || { show_console; cat "$work/qemu.log" >&2; die "guest did not reach its init script"; }
boot_ms=$((($(date +%s%N) - boot_start_ns) / 1000000))
log "boot to init script: ${boot_ms} ms (kernel uptime $(sed -n 's/.*MI: init start uptime=\([0-9.]*\).*/\1/p' "$console") s)"

wait_for "MI-BUTTON-READY" 90 || { show_console; die "guest never got ready for the button press"; }
log "pressing the power button (QMP system_powerdown)"
qmp_cmd system_powerdown >&2 || { show_console; die "QMP failed"; }

# Every further `MI-PRESS` line asks for one more button press; bounded by the QEMU timeout.
presses=0
while ! grep -q "MI-DONE" "$console"; do
    kill -0 "$qemu_pid" 2>/dev/null || { show_console; die "guest stopped before MI-DONE"; }
    wanted=$(grep -c '^MI-PRESS' "$console" || true)
    while ((presses < wanted)); do
        presses=$((presses + 1))
        log "press $presses for the guest script"
        qmp_cmd system_powerdown >/dev/null || { show_console; die "QMP failed"; }
    done
    sleep 0.2
done
wait "$qemu_pid" || true
qemu_pid=
show_console

fails=$(grep -c '^MI-FAIL' "$console" || true)
need=(gpiochip0 gpio-edges sound-virtio sound-aloop aplay network provisioning)
if [[ -n $bin ]]; then need+=(binary-version binary-check-config); fi
# shellcheck disable=SC2206
need+=(${MI_QEMU_NEED:-})
missing=()
for n in "${need[@]}"; do grep -q "^MI-OK $n\b" "$console" || missing+=("$n"); done
grep -q "^MI-OK provisioning $nonce" "$console" || missing+=("provisioning-nonce")
# the guest's playback must have reached the host: non-silent samples in QEMU's wav file
if python3 - "$wav" <<'EOF'; then log "host: guest playback arrived in out.wav"; else missing+=("out.wav-signal"); fi
import struct, sys
data = open(sys.argv[1], "rb").read()
i = data.find(b"data")
pcm = data[i + 8:] if i >= 0 else b""
peak = max((abs(v) for (v,) in struct.iter_unpack("<h", pcm[: len(pcm) // 2 * 2])), default=0)
print(f"out.wav: {len(pcm)} bytes of PCM, peak {peak}", file=sys.stderr)
sys.exit(0 if peak > 1000 else 1)
EOF
if ((fails > 0 || ${#missing[@]} > 0)); then
    die "guest checks failed: ${fails} MI-FAIL line(s); missing: ${missing[*]:-none}"
fi
log "PASS: all guest checks (${need[*]}); boot ${boot_ms} ms; guest run $((SECONDS - boot_start)) s; total $((SECONDS - t0)) s"

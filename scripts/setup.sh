#!/usr/bin/env bash
# One-time (and idempotent) set-up of a Debian 12 machine for building, testing and demoing
# matrix-intercom. Run as root. Fast when everything is already there.
#   - Debian packages: C libraries, cross compilers, multiarch -dev packages, qemu-user
#   - qemu-system-arm >= 8.2 (virtio-sound) from bookworm-backports, for image/qemu-test.sh
#   - Rust targets for aarch64 and armv7 (rustup must already provide cargo/rustc >= 1.85)
#   - a Python venv with Synapse and the official LiveKit SDK, in the cache folder
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MI_CACHE:-$repo/.cache}
mkdir -p "$cache"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
    log "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then rerun"
    exit 1
fi

host_pkgs=(build-essential pkg-config cmake git curl ca-certificates python3 python3-venv
    libasound2-dev libopus-dev libspeexdsp-dev libsqlite3-dev
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
    qemu-user iproute2 alsa-utils sox mtools dosfstools fdisk cpio xz-utils kmod busybox-static)
cross_pkgs=(libasound2-dev:arm64 libopus-dev:arm64 libspeexdsp-dev:arm64 libsqlite3-dev:arm64 libsqlite3-dev:armhf
    libasound2-dev:armhf libopus-dev:armhf libspeexdsp-dev:armhf
    libc6:arm64 libc6:armhf) # the loader + libc qemu-user runs cross-built binaries with

missing=()
for p in "${host_pkgs[@]}" "${cross_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    dpkg --add-architecture arm64
    dpkg --add-architecture armhf
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# qemu-system-aarch64 with virtio-sound (QEMU >= 8.2): bookworm has 7.2, backports has 10.x.
# Backports has apt priority 100, so it is asked for explicitly with -t.
qemu_ok() {
    local v maj min
    v=$(qemu-system-aarch64 --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [[ -n $v ]] && read -r maj min <<<"$v" && ((maj > 8 || (maj == 8 && min >= 2)))
}
if ! qemu_ok; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [[ $codename == bookworm ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # The same mirror as the machine's own bookworm source.
        mirror=$({
            sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
            sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null
        } | grep -v security | head -1 || true)
        [[ -n $mirror ]] || { log "no Debian mirror in /etc/apt/sources.list*: add bookworm-backports by hand"; exit 1; }
        log "adding the bookworm-backports apt source ($mirror)"
        printf '%s\n' 'Types: deb' "URIs: $mirror" 'Suites: bookworm-backports' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            >/etc/apt/sources.list.d/bookworm-backports.sources
    fi
    log "installing qemu-system-arm (>= 8.2)${codename:+ from $codename-backports}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    if [[ $codename == bookworm ]]; then
        apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-arm
    else
        apt-get install -y -q --no-install-recommends qemu-system-arm
    fi
    qemu_ok || { log "qemu-system-aarch64 is still older than 8.2 (no virtio-sound)"; exit 1; }
fi

installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed_targets" || { log "adding Rust target $t"; rustup target add "$t"; }
done
for c in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done


venv=$cache/venv
stamp=$venv/.mi-requirements
want="matrix-synapse livekit livekit-api numpy"
if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "creating Python venv in $venv ($want)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $want
    echo "$want" >"$stamp"
fi

# matrix-js-sdk for tests/matrix_e2ee_js.rs (the Element Call side of the media key exchange),
# exactly as locked in dev/jsrtc/package-lock.json.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing node and npm"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi
jsrtc=$repo/dev/jsrtc
lock_sum=$(sha256sum "$jsrtc/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$jsrtc/node_modules/.mi-lock" 2>/dev/null)" != "$lock_sum" ]]; then
    log "installing dev/jsrtc npm packages (npm ci)"
    (cd "$jsrtc" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$jsrtc/node_modules/.mi-lock"
fi
log "ready (python: $venv/bin/python, node: $(node --version))"

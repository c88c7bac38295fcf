#!/usr/bin/env bash
# Runs every test of matrix-intercom: formatting, unit and integration tests (real Synapse,
# the in-repo token service and SFU, the official LiveKit Python SDK in private network
# namespaces, ALSA through alsa-lib's file plugin), the aarch64 unit tests under qemu-user,
# the armv7 cross build, and clippy. Sets itself up first (scripts/setup.sh). Run as root
# (network namespaces). `.ci/run` calls exactly this.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export MI_CACHE=${MI_CACHE:-$repo/.cache}
"$repo/scripts/setup.sh"
export MI_PYTHON=$MI_CACHE/venv/bin/python
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Integration tests run several servers each; keep them from starving each other on 2 cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}

step() { printf '\n\033[1m== %s\033[0m (%ss)\n' "$*" "$SECONDS" >&2; }

step "format"
cargo fmt --all --check

step "build (host: device binary and dev helpers)"
cargo build --workspace --bins --tests

step "tests (host)"
cargo test --workspace --no-fail-fast

step "aarch64: unit tests under qemu-user; the binary checks a board file"
# The runner (.cargo/config.toml) is qemu-aarch64 with Debian's multiarch libc6:arm64; with the
# cross toolchain's copy (-L /usr/aarch64-linux-gnu) qemu-user 10.0 spins in the first
# pthread_create.
cargo test --lib --target aarch64-unknown-linux-gnu
cargo build --bin matrix-intercom --target aarch64-unknown-linux-gnu
timeout 120 qemu-aarch64 \
    "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/debug/matrix-intercom" check-config --config board/rpi4.toml

step "whole-system test: our aarch64 binary in QEMU (arm64 kernel, PL061 button, virtio-sound)"
MI_QEMU_BIN=$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/debug/matrix-intercom image/qemu-test.sh

step "cross build armv7"
cargo build --bin matrix-intercom --target armv7-unknown-linux-gnueabihf

step "Debian packages for arm64 and armhf (of the debug cross builds): control, files, conffile, unit, binary"
image/deb-test.sh --no-build --profile dev

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "all tests passed"

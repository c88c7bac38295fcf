#!/usr/bin/env bash
# Whole-system call test: OUR DAEMON in the arm64 QEMU guest (image/qemu-test.sh boots it) calls
# through the dev stack on the host side, and a resident answers from the official LiveKit SDK.
#
#   namespace A (QEMU, mi-devstack: Synapse + token service + test SFU on 10.77.N.1)
#       |  veth  10.77.N.1 <-> 10.77.N.2
#   namespace B (alice's "phone": dev/test-sfu/peer/lk_peer.py, libwebrtc needs a real interface)
#
# QEMU's user networking connects the guest's TCP/UDP from sockets in namespace A, so the guest
# reaches 10.77.N.1 directly. Nothing else is reachable. The flow a user sees:
#   - the provisioning file (homeserver, user, one-time password, room, audio devices) is
#     injected into the disk image's FAT partition (image/inject-provisioning.sh); in the guest
#     `matrix-intercom provision` imports it and `matrix-intercom run` logs in, stores the session
#     and scrubs the password (image/qemu-call-guest.sh, as the systemd unit starts it);
#   - first press (QMP system_powerdown = PL061 line 3) -> the device's call membership appears
#     in Synapse (read as alice); alice answers (lk_peer.py, 750 Hz tone) and hears the device's
#     1 kHz microphone (a tone aplay'ed into snd-aloop in the guest); the device's speaker
#     (virtio-sound -> QEMU's wav audiodev) plays alice's tone; second press -> membership gone.
#     Audio checks count good windows rather than demand unbroken runs: on an emulated CPU on a
#     busy host there are dropouts (ALSA wait timeouts: I/O errors, after which the daemon reopens).
# Prints boot, press->joined and leave times and the service's VmRSS in the call.
#
# Usage: image/qemu-call-test.sh   (as root; after `cargo build --workspace --bins` for the host
#        and `cargo build --profile qemu --bin matrix-intercom --target aarch64-unknown-linux-gnu`:
#        optimized without LTO; a debug build has audio dropouts on the emulated CPU)
# Env:   MI_PYTHON (venv with matrix-synapse and livekit; scripts/setup.sh makes it),
#        CARGO_TARGET_DIR, MI_QEMU_BIN (aarch64 binary), MI_QEMU_KEEP=1 (keep the work files)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
t0=$SECONDS
log() { printf '\033[1m[qemu-call]\033[0m %s\n' "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}
[[ $(id -u) == 0 ]] || die "run as root (network namespaces)"
python=${MI_PYTHON:-}
[[ -n $python && -x $python ]] || die "MI_PYTHON must name the venv python with matrix-synapse and livekit (scripts/setup.sh)"
devstack=$target/debug/mi-devstack
[[ -x $devstack ]] || die "$devstack missing: cargo build --workspace --bins"
bin=${MI_QEMU_BIN:-$target/aarch64-unknown-linux-gnu/qemu/matrix-intercom}
[[ -x $bin ]] || die "$bin missing: cargo build --profile qemu --bin matrix-intercom --target aarch64-unknown-linux-gnu"
[[ $bin == */debug/* ]] &&
    log "WARNING: $bin is a debug build: on the emulated CPU it has audio dropouts; the audio checks will likely fail (use --profile qemu)"

work=$(mktemp -d "${TMPDIR:-/tmp}/mi-qemu-call.XXXXXX")
subnet=$((200 + $$ % 50))
ns_a=mi-qcall-a-$$ ns_b=mi-qcall-b-$$
ip_a=10.77.$subnet.1 ip_b=10.77.$subnet.2
stack_pid=
cleanup() {
    local rc=$?
    set +e
    if [[ -n $stack_pid ]]; then
        kill "$stack_pid" 2>/dev/null
        wait "$stack_pid" 2>/dev/null
    fi
    ip netns del "$ns_a" 2>/dev/null
    ip netns del "$ns_b" 2>/dev/null
    if [[ $rc != 0 || ${MI_QEMU_KEEP:-} == 1 ]]; then
        log "dev stack log (tail):"
        tail -n 30 "$work/devstack.log" >&2
        log "host side log:"
        cat "$work/host.log" >&2 2>/dev/null
    fi
    if [[ ${MI_QEMU_KEEP:-} == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT

ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link add mi-qc-a type veth peer name mi-qc-b netns "$ns_b"
ip -n "$ns_a" addr add "$ip_a/24" dev mi-qc-a
ip -n "$ns_b" addr add "$ip_b/24" dev mi-qc-b
for ns in "$ns_a" "$ns_b"; do
    ip -n "$ns" link set lo up
done
ip -n "$ns_a" link set mi-qc-a up
ip -n "$ns_b" link set mi-qc-b up

log "starting the dev stack in $ns_a on $ip_a"
ip netns exec "$ns_a" "$devstack" --dir "$work/stack" --python "$python" --out "$work/stack.json" \
    --http-bind "$ip_a" --sfu-bind "$ip_a" </dev/null >"$work/devstack.log" 2>&1 &
stack_pid=$!
deadline=$((SECONDS + 150))
until [[ -s $work/stack.json ]]; do
    kill -0 "$stack_pid" 2>/dev/null || die "the dev stack exited: $(tail -n 20 "$work/devstack.log")"
    ((SECONDS < deadline)) || die "the dev stack did not come up within 150 s"
    sleep 0.2
done
log "dev stack up ($((SECONDS - t0)) s)"

# The provisioning file: the QEMU board file with this stack's homeserver, account and room, and
# the audio devices of the guest (snd-aloop's capture side as the microphone, virtio-sound as
# the speaker). Mode 0600: it holds the one-time password.
(
    umask 077
    python3 - "$repo/board/qemu-virt.toml" "$work/stack.json" >"$work/provision.toml" <<'EOF'
import json, re, sys
board, s = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
dev = s["users"]["intercom"]
def setkey(text, key, value):
    new, n = re.subn(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, count=1, flags=re.M)
    assert n == 1, key
    return new
t = setkey(board, "homeserver", s["homeserver_url"])
t = setkey(t, "user_id", dev["user_id"])
t = t.replace(f'user_id = {json.dumps(dev["user_id"])}\n',
              f'user_id = {json.dumps(dev["user_id"])}\npassword = {json.dumps(dev["password"])}\n', 1)
t = setkey(t, "room", s["room_alias"])
t = setkey(t, "capture", "plughw:CARD=Loopback,DEV=1")
t = setkey(t, "playback", "plughw:CARD=SoundCard,DEV=0")
# A steady test tone is exactly what a noise suppressor removes.
t = t.replace("\n[control]", "noise_suppression = false\nauto_gain = false\n\n[control]", 1)
t = setkey(t, "echo_cancellation", False)
assert "auto_gain" in t
print(t + """
[call]
ring_timeout_s = 120
leave_when_alone_s = 30
""")
EOF
)
grep -q '^password = ' "$work/provision.toml" || die "provisioning file without the password"
# The microphone's tone: 30 s of 1 kHz, mono 48 kHz S16_LE.
python3 - "$work/mic.wav" <<'EOF'
import math, struct, sys, wave
w = wave.open(sys.argv[1], "wb")
w.setnchannels(1); w.setsampwidth(2); w.setframerate(48000)
period = [struct.pack("<h", int(10000 * math.sin(2 * math.pi * i / 48))) for i in range(48)]
w.writeframes(b"".join(period) * 1000 * 30)
w.close()
EOF

host_cmd="exec python3 '$repo/image/qemu-call-host.py' '$work/stack.json' '$ns_b' '$python' \
'$repo/dev/test-sfu/peer/lk_peer.py' '$work/results.json' 7999 >'$work/host.log' 2>&1"
rc=0
MI_QEMU_BIN=$bin MI_QEMU_REQUIRE_BIN=1 MI_QEMU_NETNS=$ns_a MI_QEMU_PROVISIONING=$work/provision.toml \
    MI_QEMU_FILES="$work/mic.wav:/mic.wav" MI_QEMU_GUEST_SCRIPT=$repo/image/qemu-call-guest.sh \
    MI_QEMU_HOST_CMD=$host_cmd MI_QEMU_WAV=$work/out.wav MI_QEMU_TIMEOUT=${MI_QEMU_TIMEOUT:-240} \
    MI_QEMU_NEED="call-provision-imported call-login call-password-scrubbed call-joined call-answered call-rss call-left call-host" \
    "$repo/image/qemu-test.sh" 2>&1 | tee "$work/qemu-test.log" >&2 || rc=$?
((rc == 0)) || die "the guest run failed (see above)"

[[ -f $work/results.json ]] || die "the host side wrote no results"
python3 - "$work/results.json" <<'EOF' || die "host-side checks failed"
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps(r), file=sys.stderr)
sys.exit(0 if r.get("ok") else 1)
EOF
# The device's speaker: QEMU's wav audiodev file must hold alice's 750 Hz tone for >= 2 s in all
# (20 ms frames; not necessarily in one run: the emulated CPU has dropouts a real board does not).
python3 - "$work/out.wav" <<'EOF' || die "the device's speaker did not play the peer's tone"
import math, struct, sys, wave
w = wave.open(sys.argv[1])
rate, ch, n = w.getframerate(), w.getnchannels(), w.getnframes()
raw = w.readframes(n)
pcm = struct.unpack(f"<{len(raw) // 2}h", raw[: len(raw) // 2 * 2])[::ch]
frame = rate // 50
coeff = 2 * math.cos(2 * math.pi * 750 / rate)
best = run = total = 0
for i in range(0, len(pcm) - frame, frame):
    x = pcm[i : i + frame]
    energy = sum(v * v for v in x)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + coeff * s1 - s2, s1
    share = 2 * (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (frame * energy) if energy else 0
    hit = energy / frame > 500 ** 2 and share > 0.5
    run = run + 1 if hit else 0
    total += hit
    best = max(best, run)
print(f"out.wav: {len(pcm) / rate:.1f} s at {rate} Hz; the peer's 750 Hz tone in {total * 0.02:.2f} s of it, "
      f"longest run {best * 0.02:.2f} s", file=sys.stderr)
sys.exit(0 if total >= 100 else 1)
EOF

boot=$(sed -n 's/.*boot to init script: \([0-9]*\) ms.*/\1/p' "$work/qemu-test.log")
rss=$(sed -n 's/.*MI-OK call-rss \(.*\)/\1/p' "$work/qemu-test.log" | head -1)
timings=$(python3 - "$work/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"first press -> membership in Synapse {r['press_to_joined_s']} s, answer -> peer heard the device "
      f"{r['answer_to_heard_s']} s, second press -> membership gone {r['press_to_left_s']} s")
EOF
)
log "PASS: boot ${boot} ms; ${timings}; ${rss}; total $((SECONDS - t0)) s"

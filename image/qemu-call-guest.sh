#!/bin/busybox sh
# shellcheck shell=dash disable=SC2317 # (functions called through wait_until)
# Guest half of the whole-system call test (image/qemu-call-test.sh; run by the guest init of
# image/qemu-test.sh as /extra.sh after the platform checks). The daemon is started the way the
# systemd unit starts it: `provision` (imports the FAT partition's provisioning file), then `run`.
# Reports `MI-OK call-*` / `MI-FAIL call-*` lines; `MI-PRESS` asks the host for a button press.
# The host side (image/qemu-call-host.py) answers `state` on 10.0.2.2:$HOST_PORT with what it
# wants next: `wait`, `leave` (press again), `done`, or `fail <why>`.
HOST_PORT=7999
CONFIG=/etc/matrix-intercom/config.toml
BOOT_FILE=/boot/firmware/matrix-intercom.toml
ok() { echo "MI-OK $*"; }
fail() { echo "MI-FAIL $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# wait_until SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds or the time is up
# (a deadline on the clock: one poll can take a while on the emulated CPU)
wait_until() {
    end=$(($(date +%s) + $1))
    shift
    while :; do
        "$@" && return 0
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}
status() { matrix-intercom --config "$CONFIG" ctl status 2>/dev/null; }
state_is() { status | grep -q "\"state\":\"$1\""; }
logged_in() { status | grep '"connected":true' | grep -q '"state":"idle"'; }
in_a_call() { state_is ringing || state_is in_call; }
daemon_alive() { kill -0 "$daemon" 2>/dev/null; }
host_says() { echo state | nc -w 5 10.0.2.2 "$HOST_PORT" 2>/dev/null; }
host_wants() { case $(host_says) in "$1"*) return 0 ;; fail*) return 0 ;; esac; return 1; }
rss() { sed -n 's/^VmRSS:[[:space:]]*//p' "/proc/$daemon/status" 2>/dev/null; }
finish() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null
    [ -n "${mic:-}" ] && kill "$mic" 2>/dev/null
    if [ "$1" != 0 ]; then
        echo "MI: in the call: daemon CPU $(cpu_pct)% of one core, load $(cat /proc/loadavg)"
        for t in /proc/"$daemon"/task/*; do echo "MI: thread $(cat "$t/comm"): $(awk '{print $14 + $15}' "$t/stat") ticks"; done
        dmesg | tail -n 5
        echo "MI: daemon log (last 150 lines without debug/trace):"
        grep -v ' DEBUG \| TRACE ' /tmp/daemon.log | tail -n 150
    fi
    exit "$1"
}

# The network to the host's dev stack: everything beyond 10.0.2.0/24 goes through slirp, which
# connects it from the host namespace (the stack listens on its veth address there).
ip route add default via 10.0.2.2 2>/dev/null
mkdir -p /boot/firmware /run/matrix-intercom /var/lib/matrix-intercom
mount -t vfat /dev/vda1 /boot/firmware || { fail call-boot-partition "mount /dev/vda1"; finish 1; }

# The microphone: a 1 kHz tone played into snd-aloop's playback side; the daemon captures the
# other end (virtio-sound's capture with QEMU's wav audiodev is silence).
(
    i=0
    while [ $i -lt 20 ] && aplay -q -D hw:Loopback,0,0 /mic.wav; do i=$((i + 1)); done
) 2>/tmp/mic.log &
mic=$!

# ExecStartPre: import the provisioning file (as root).
t0=$(uptime_s)
out=$(matrix-intercom provision --config "$CONFIG" 2>&1)
echo "$out"
case $out in
*"imported into $CONFIG"*) ok call-provision-imported "$(stat -c '%a' "$CONFIG")" ;;
*) fail call-provision-imported "$out"; finish 1 ;;
esac
grep -q '^password *=' "$CONFIG" || { fail call-provision-imported "no password in the imported config"; finish 1; }

# ExecStart: the daemon.
RUST_LOG=${MI_GUEST_RUST_LOG:-info} matrix-intercom --config "$CONFIG" run >/tmp/daemon.log 2>&1 &
daemon=$!
if wait_until 120 logged_in; then
    ok call-login "logged in and idle $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN{printf "%.1f", b-a}') s after provision"
else
    daemon_alive || fail call-login "the daemon exited"
    fail call-login "not logged in within 120 s: $(status)"
    finish 1
fi
# The daemon removes the password from its config once the session is stored; the next
# `provision` (the unit's ExecStartPre on the next start, or the path unit) scrubs the boot copy.
if [ -s /var/lib/matrix-intercom/session.json ] && ! grep -q '^password *=' "$CONFIG"; then
    matrix-intercom provision --config "$CONFIG"
    if grep -q '^password *=' "$BOOT_FILE"; then
        fail call-password-scrubbed "the boot partition's copy still holds the password"
    else
        ok call-password-scrubbed "session stored; password gone from $CONFIG and $BOOT_FILE"
    fi
else
    fail call-password-scrubbed "session.json missing or password still in $CONFIG"
fi

echo "MI-PRESS join"
if wait_until 60 in_a_call; then
    ok call-joined "$(status)"
else
    fail call-joined "no call within 60 s: $(status)"
    finish 1
fi
if wait_until 120 state_is in_call; then
    ok call-answered "$(status)"
else
    fail call-answered "nobody answered within 120 s: $(status)"
    finish 1
fi

# CPU time of the daemon in clock ticks (utime + stime), and the clock.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
now_cs() { awk '{printf "%d", $1 * 100}' /proc/uptime; }
# In the call: the service's memory, sampled until the host has heard enough.
cpu0=$(cpu_ticks) t_cs0=$(now_cs)
cpu_pct() { echo $((($(cpu_ticks) - cpu0) * 100 / ($(now_cs) - t_cs0 + 1))); }
max_rss=0
sample_rss() {
    r=$(rss | awk '{print $1}')
    [ -n "$r" ] && [ "$r" -gt "$max_rss" ] && max_rss=$r
    host_wants leave
}
if wait_until 120 sample_rss; then
    case $(host_says) in fail*) fail call-host "$(host_says)"; finish 1 ;; esac
    ok call-rss "VmRSS of matrix-intercom in the call: max ${max_rss} kB; CPU $(cpu_pct)% of one core"
else
    fail call-host "the host did not finish its checks within 120 s: $(host_says)"
    finish 1
fi

echo "MI-PRESS leave"
if wait_until 30 state_is idle; then
    ok call-left "$(status)"
else
    fail call-left "still in a call 30 s after the second press: $(status)"
    finish 1
fi
if wait_until 30 host_wants "done"; then
    case $(host_says) in
    done*) ok call-host "$(host_says)" ;;
    *) fail call-host "$(host_says)" ;;
    esac
else
    fail call-host "the host never finished: $(host_says)"
fi
finish 0

#!/bin/busybox sh
# shellcheck shell=dash
# /init of the whole-system test's initramfs (image/qemu-test.sh builds it). Runs the checks inside
# the guest and reports each as a console line `MI-OK <check> <detail>` or `MI-FAIL <check> <detail>`;
# `MI-BUTTON-READY` asks the host to press the power button; `MI-DONE` ends the run (then power off).
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "MI: init start uptime=$(cut -d' ' -f1 /proc/uptime)"
ok() { echo "MI-OK $*"; }
fail() { echo "MI-FAIL $*"; }
# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds or the time is up
wait_until() {
    n=$(($1 * 10))
    shift
    while [ "$n" -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

while read -r m; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done </lib/modules/order

# --- GPIO: gpiochip0 is the PL061, line 3 the power button --------------------------------------
if gpioinfo gpiochip0 >/tmp/gpioinfo 2>&1 && grep -q 'line *3:' /tmp/gpioinfo; then
    ok gpiochip0 "$(head -1 /tmp/gpioinfo) / line 3 idle value $(gpioget gpiochip0 3)"
else
    fail gpiochip0 "$(cat /tmp/gpioinfo)"
fi
cat /tmp/gpioinfo
gpiomon --num-events=2 gpiochip0 3 >/tmp/gpiomon 2>&1 &
mon=$!
line3_used() { gpioinfo gpiochip0 | grep 'line *3:' | grep -q used; }
if wait_until 10 line3_used; then
    echo "MI-BUTTON-READY"
    gone() { ! kill -0 "$mon" 2>/dev/null; }
    if wait_until 30 gone; then
        cat /tmp/gpiomon
        if grep -q 'RISING EDGE offset: 3' /tmp/gpiomon && grep -q 'FALLING EDGE offset: 3' /tmp/gpiomon; then
            ok gpio-edges "rising then falling edge on line 3: $(tr '\n' ' ' </tmp/gpiomon)"
        else
            fail gpio-edges "$(cat /tmp/gpiomon)"
        fi
    else
        kill "$mon"
        fail gpio-edges "no 2 edges within 30 s: $(cat /tmp/gpiomon)"
    fi
else
    echo "MI-BUTTON-READY"
    fail gpio-edges "gpiomon never held line 3: $(cat /tmp/gpiomon)"
fi

# --- sound ----------------------------------------------------------------------------------
cat /proc/asound/cards
vcard=$(sed -n 's/^ *\([0-9]*\) \[.*\]: *virtio.*/\1/ip' /proc/asound/cards | head -1)
if [ -n "$vcard" ]; then ok sound-virtio "card $vcard"; else fail sound-virtio "no virtio card"; fi
if grep -qi loopback /proc/asound/cards; then ok sound-aloop; else fail sound-aloop "no Loopback card"; fi
if [ -n "$vcard" ] && aplay -q -D "hw:$vcard,0" /tone.wav 2>/tmp/aplay; then
    ok aplay "tone played on hw:$vcard,0"
else
    fail aplay "$(cat /tmp/aplay)"
fi

# --- network: 10.0.2.2 is the loopback of the host's test namespace -------------------------------
port=$(sed -n 's/.*mi\.port=\([0-9]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
reply=$(echo hello | nc -w 10 10.0.2.2 "$port" 2>&1)
case $reply in
*MI-HOST-HELLO*) ok network "10.0.2.2:$port answered" ;;
*) fail network "10.0.2.2:$port: $reply" ;;
esac

# --- provisioning file on the FAT partition --------------------------------------------------
if mount -t vfat -o ro /dev/vda1 /mnt 2>/tmp/mount; then
    nonce=$(sed -n 's/^# mi-test-nonce = "\(.*\)"/\1/p' /mnt/matrix-intercom.toml)
    if [ -n "$nonce" ]; then ok provisioning "$nonce"; else fail provisioning "no nonce in /mnt/matrix-intercom.toml"; fi
    umount /mnt
else
    fail provisioning "mount /dev/vda1: $(cat /tmp/mount)"
fi

# --- our binary ------------------------------------------------------------------------------
if [ -x /usr/bin/matrix-intercom ]; then
    if v=$(matrix-intercom --version 2>&1); then ok binary-version "$v"; else fail binary-version "$v"; fi
    out=$(matrix-intercom --config /etc/matrix-intercom/config.toml check-config 2>&1)
    rc=$?
    echo "$out"
    # 0 = valid; anything else must be the documented "invalid config" code 2 with a message
    if [ "$rc" = 0 ]; then ok binary-check-config; else fail binary-check-config "exit $rc"; fi
fi

if [ -f /extra.sh ]; then
    echo "MI: guest script"
    sh /extra.sh || fail guest-script "exit $?"
fi

echo "MI-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f

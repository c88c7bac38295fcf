#!/usr/bin/env python3
"""Host half of the whole-system call test (image/qemu-call-test.sh runs it through
image/qemu-test.sh's MI_QEMU_HOST_CMD, inside the namespace QEMU runs in).

It follows the guest console (MI_QEMU_CONSOLE): at the first `MI-PRESS` line (the harness presses
the button) it waits for the device's call membership in Synapse, read as the resident alice;
then alice answers from her "phone" (the official LiveKit Python SDK, dev/test-sfu/peer/lk_peer.py,
in the second namespace) with a 750 Hz tone and must hear the device's 1 kHz microphone tone
(3 s in all of 200 ms windows where it dominates); then
it asks the guest for the second press (`leave`) and waits for the membership to be gone.
The guest polls `state` on 127.0.0.1:PORT (10.0.2.2 in the guest): wait | leave | done | fail WHY.
Timings and the verdict go to the results JSON file. Standard library only (runs with python3).

usage: qemu-call-host.py STACK_JSON PEER_NS PEER_PYTHON PEER_SCRIPT RESULTS_JSON PORT
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

CALL_MEMBER = "org.matrix.msc3401.call.member"
PEER_TONE, DEVICE_TONE = 750, 1000
# The peer's tone reports cover 200 ms each; 15 good ones = 3 s of the device's tone heard.
WINDOW_MS, GOOD_WINDOWS = 200, 15

state = "wait"
results = {"ok": False}


def log(*a):
    print(f"[call-host {time.strftime('%H:%M:%S')}]", *a, flush=True)


def serve(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    while True:
        c, _ = srv.accept()
        c.settimeout(5)
        try:
            c.recv(100)
            c.sendall((state + "\n").encode())
        except OSError:
            pass
        finally:
            c.close()


def http(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_console(pattern, count, within):
    """Waits until the guest console has `count` lines matching `pattern`; returns the time."""
    deadline = time.monotonic() + within
    console = os.environ["MI_QEMU_CONSOLE"]
    while time.monotonic() < deadline:
        with open(console, errors="replace") as f:
            if len(re.findall(pattern, f.read(), re.M)) >= count:
                return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"the guest console never showed {count} line(s) matching {pattern!r}")


def device_membership(s):
    """The device's non-empty call membership content in the room state, or None."""
    room = urllib.parse.quote(s["room_id"], safe="")
    events = http("GET", f'{s["homeserver_url"]}/_matrix/client/v3/rooms/{room}/state',
                  s["users"]["alice"]["access_token"])
    prefix = "_" + s["users"]["intercom"]["user_id"] + "_"
    for e in events:
        if e["type"] == CALL_MEMBER and e["state_key"].startswith(prefix) and e["content"].get("application"):
            return e
    return None


def poll(what, within, cond):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v, time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"{what} within {within} s")


def grant(s, who):
    u = s["users"][who]
    openid = http("POST", f'{s["homeserver_url"]}/_matrix/client/v3/user/'
                  f'{urllib.parse.quote(u["user_id"], safe="")}/openid/request_token', u["access_token"], {})
    g = http("POST", f'{s["token_service_url"]}/sfu/get', None,
             {"room": s["room_id"], "openid_token": openid, "device_id": u["device_id"]})
    return g["url"], g["jwt"]


class Peer:
    """lk_peer.py in the peer namespace; its JSON lines are collected by a thread."""

    def __init__(self, ns, python, script, url, jwt):
        self.lines = []
        self.seen = 0  # lines already handed to a wait()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, python, script, url, jwt, str(PEER_TONE), str(DEVICE_TONE), "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, LK_PEER_WINDOW_MS=str(WINDOW_MS)))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            log("peer:", line.strip())
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def wait(self, within, cond, what):
        """The next line (after those seen by earlier waits) for which cond holds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            while self.seen < len(self.lines):
                v = self.lines[self.seen]
                self.seen += 1
                if cond(v):
                    return v
            if self.proc.poll() is not None and self.seen == len(self.lines):
                raise RuntimeError(f"the peer exited ({self.proc.returncode}) before {what}")
            time.sleep(0.1)
        raise RuntimeError(f"the peer saw no {what} within {within} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def scenario(s, peer_ns, python, script):
    global state
    t_press = wait_console(r"^MI-PRESS", 1, 240)
    log("first press seen on the console")
    member, t_joined = poll("no call membership of the device in Synapse", 60, lambda: device_membership(s))
    results["press_to_joined_s"] = round(t_joined - t_press, 2)
    device_id = member["content"].get("device_id", "")
    identity = f'{s["users"]["intercom"]["user_id"]}:{device_id}'
    log(f"membership of device {device_id} in Synapse {results['press_to_joined_s']} s after the press")
    results["membership"] = {k: member["content"].get(k) for k in ("application", "device_id", "focus_active")}
    url, jwt = grant(s, "alice")
    t_answer = time.monotonic()
    peer = Peer(peer_ns, python, script, url, jwt)
    try:
        peer.wait(60, lambda v: v.get("event") == "connected", "connection to the SFU")
        # 3 s in all of windows in which the device's tone dominates (not necessarily in a row:
        # the emulated CPU on a busy host has audio dropouts a real board does not).
        good, seen = [], 0
        deadline = time.monotonic() + 60
        while len(good) < GOOD_WINDOWS:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the peer heard the device's tone clearly in only {len(good)} of {seen} "
                                   f"{WINDOW_MS} ms windows within 60 s ({GOOD_WINDOWS} needed)")
            v = peer.wait(left, lambda v: v.get("event") == "tone" and v.get("identity") == identity,
                          "tone report about the device")
            seen += 1
            if v.get("ratio", 0) > 0.5 and v.get("level_db", -120) > -35:
                good.append(v)
        results["answer_to_heard_s"] = round(time.monotonic() - t_answer, 2)
        results["peer_heard"] = f"{len(good)} of {seen} {WINDOW_MS} ms windows, e.g. {good[-1]}"
        log("the peer hears the device's tone:", results["peer_heard"])
        state = "leave"
        t_press2 = wait_console(r"^MI-PRESS", 2, 60)
        _, t_gone = poll("the device's membership still in Synapse", 30, lambda: device_membership(s) is None)
        results["press_to_left_s"] = round(t_gone - t_press2, 2)
        log(f"membership gone {results['press_to_left_s']} s after the second press")
        peer.wait(30, lambda v: v.get("event") == "participant_disconnected" and v.get("identity") == identity,
                  "departure of the device")
    finally:
        peer.stop()
    results["ok"] = True
    state = (f"done joined {results['press_to_joined_s']} s after the press, peer heard the device "
             f"{results['answer_to_heard_s']} s after answering, left {results['press_to_left_s']} s after the press")


def main():
    global state
    stack, peer_ns, python, script, out, port = sys.argv[1:7]
    s = json.load(open(stack))
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
    try:
        scenario(s, peer_ns, python, script)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the guest and the file
        results["error"] = str(e)
        state = f"fail {e}"
        log("FAIL:", e)
    with open(out + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.rename(out + ".tmp", out)
    log("results:", json.dumps(results))
    # Keep answering the guest until the harness stops this process.
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()

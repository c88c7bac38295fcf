#!/usr/bin/env python3
"""E2EE interop peer for tests/livekit_python.rs, using the official LiveKit Python SDK.

Joins with a shared AES-GCM media key (HKDF derivation, as Element Call keys are derived),
publishes a mono 48 kHz sine "microphone", and reports as JSON lines on stdout:
  {"event":"connected"}, {"event":"track_subscribed","identity":...},
  {"event":"tone","identity":...,"ratio":...,"level_db":...}   (about once a second)
  {"event":"error","message":...}
Exits on stdin EOF or after the duration.

KEY_HEX "-" selects per-participant keys (Element Call's mode, key ring 256): they come as JSON
lines on stdin, {"identity": ..., "index": n, "key_hex": ..., "own": bool}; an own key is also
the one the microphone track is encrypted with from then on.

usage: lk_e2ee_peer.py URL TOKEN KEY_HEX TONE_HZ EXPECT_HZ DURATION_S
"""

import asyncio
import json
import math
import sys
import threading

import numpy as np
from livekit import rtc

RATE = 48000
FRAME = 480  # 10 ms


def emit(**kw):
    print(json.dumps(kw), flush=True)


def goertzel(samples: np.ndarray, freq: float):
    """(share of the window's energy at freq, level in dBFS) for floats in [-1, 1]."""
    n = len(samples)
    k = 2.0 * math.cos(2.0 * math.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    total = float(np.sum(samples * samples))
    share = (2.0 * power / n) / total if total > 0 else 0.0
    rms = math.sqrt(total / n) if n else 0.0
    return min(share, 1.0), (20.0 * math.log10(rms) if rms > 0 else -120.0)


async def publish_tone(source, freq, stop):
    frame = rtc.AudioFrame.create(RATE, 1, FRAME)
    t = np.arange(FRAME)
    phase = 0
    while not stop.is_set():
        buf = np.frombuffer(frame.data, dtype=np.int16)
        buf[:] = (0.3 * 32767 * np.sin(2 * np.pi * freq * (t + phase) / RATE)).astype(np.int16)
        phase += FRAME
        await source.capture_frame(frame)


async def listen(track, identity, expect, stop):
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    window, count = [], 0
    async for ev in stream:
        if stop.is_set():
            break
        data = np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float64) / 32768.0
        window.append(data)
        count += len(data)
        if count >= RATE:
            share, level = goertzel(np.concatenate(window)[:RATE], expect)
            emit(event="tone", identity=identity, ratio=round(share, 3), level_db=round(level, 1))
            window, count = [], 0
    await stream.aclose()


async def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, token, key_hex, tone, expect, duration = sys.argv[1:]
    tone, expect, duration = float(tone), float(expect), float(duration)
    stop = asyncio.Event()
    room = rtc.Room()
    tasks = []

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            emit(event="track_subscribed", identity=participant.identity)
            tasks.append(asyncio.ensure_future(listen(track, participant.identity, expect, stop)))

    per_participant = key_hex == "-"
    encryption = rtc.E2EEOptions(
        key_provider_options=rtc.KeyProviderOptions(
            shared_key=None if per_participant else bytes.fromhex(key_hex),
            key_derivation_function=rtc.KeyDerivationFunction.HKDF,
            key_ring_size=256 if per_participant else 16,
        )
    )
    try:
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=True, encryption=encryption))
    except Exception as e:  # noqa: BLE001 - reported to the test
        emit(event="error", message=str(e))
        sys.exit(1)
    emit(event="connected")
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    tasks.append(asyncio.ensure_future(publish_tone(source, tone, stop)))
    loop = asyncio.get_running_loop()
    own_index = [None]

    def apply_own_index():
        for fc in room.e2ee_manager.frame_cryptors():
            if fc.participant_identity == room.local_participant.identity and own_index[0] is not None:
                fc.set_key_index(own_index[0])

    async def keep_own_index():
        # The microphone's frame cryptor appears some time after publishing.
        while not stop.is_set():
            apply_own_index()
            await asyncio.sleep(0.5)

    if per_participant:
        tasks.append(asyncio.ensure_future(keep_own_index()))

    def set_key(line):
        try:
            k = json.loads(line)
            provider = room.e2ee_manager.key_provider
            identity = room.local_participant.identity if k.get("own") else k["identity"]
            provider.set_key(identity, bytes.fromhex(k["key_hex"]), int(k["index"]))
            if k.get("own"):
                own_index[0] = int(k["index"])
            apply_own_index()
            emit(event="key_set", identity=identity, index=int(k["index"]))
        except Exception as e:  # noqa: BLE001 - reported to the test
            emit(event="error", message=f"bad key line: {e}")

    def read_stdin():
        for line in sys.stdin:
            if per_participant and line.strip():
                loop.call_soon_threadsafe(set_key, line)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stop.wait(), timeout=duration)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await room.disconnect()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""Interop test peer using the official LiveKit Python SDK (`livekit.rtc`).

Joins a room, publishes a mono 48 kHz sine "microphone" track, subscribes to remote audio and
reports, as JSON lines on stdout:
  {"event":"connected","identity":...,"connect_ms":...}
  {"event":"published","publish_ms":...}
  {"event":"track_subscribed","identity":...}
  {"event":"first_audio","identity":...,"ms":...}   (first decoded frame of that participant)
  {"event":"tone","identity":...,"freq":...,"level_db":...,"ratio":...}   (about once a second;
      env LK_PEER_WINDOW_MS sets another window length, e.g. 200 for audio with dropouts)
  {"event":"participant_disconnected","identity":...,"reason":...}
  {"event":"disconnected","reason":...}
  {"event":"reconnecting"} / {"event":"reconnected"}   (signalling resume)
  {"event":"error","message":...}
`ratio` is the Goertzel power at the expected frequency divided by the total power of the
window (1.0 = pure tone). `connect_ms`, `publish_ms` and `ms` count from just before
`Room.connect()` (the token in hand); `publish_ms` is when `publish_track()` returned. Exits on stdin EOF, after the duration, or when disconnected.

usage: lk_peer.py URL TOKEN TONE_HZ EXPECT_HZ DURATION_S
"""

import asyncio
import json
import math
import os
import sys
import threading
import time

import numpy as np
from livekit import rtc

RATE = 48000
FRAME = 480  # 10 ms
WINDOW = RATE * int(os.environ.get("LK_PEER_WINDOW_MS", "1000")) // 1000


def emit(**kw):
    print(json.dumps(kw), flush=True)


def reason_name(reason):
    try:
        return rtc.DisconnectReason.Name(int(reason))
    except Exception:  # noqa: BLE001 - unknown values are printed as numbers
        return str(reason)


def goertzel_ratio(samples: np.ndarray, freq: float):
    """Return (power ratio at freq, level in dBFS) of a float window in [-1, 1]."""
    n = len(samples)
    if n == 0:
        return 0.0, -120.0
    # Goertzel power = |DFT at freq|^2, computed with numpy (a Python loop over every sample
    # would cost more CPU than the SDK itself, skewing the benchmark's CPU figure).
    phase = np.exp(-2j * np.pi * freq * np.arange(n) / RATE)
    power = float(abs(np.dot(samples, phase)) ** 2)
    total = float(np.sum(samples * samples))
    # A pure sine of energy E gives Goertzel power ~ E * n / 2.
    ratio = (2.0 * power / n) / total if total > 0 else 0.0
    rms = math.sqrt(total / n)
    level = 20.0 * math.log10(rms) if rms > 0 else -120.0
    return min(ratio, 1.0), level


async def publish_tone(source: rtc.AudioSource, freq: float, stop: asyncio.Event):
    phase = 0
    frame = rtc.AudioFrame.create(RATE, 1, FRAME)
    t = np.arange(FRAME)
    while not stop.is_set():
        buf = np.frombuffer(frame.data, dtype=np.int16)
        buf[:] = (0.3 * 32767 * np.sin(2 * np.pi * freq * (t + phase) / RATE)).astype(np.int16)
        phase += FRAME
        await source.capture_frame(frame)


def since_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)


async def listen(track, identity: str, expect: float, stop: asyncio.Event, t0: float):
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    window = []
    count = 0
    first = True
    async for ev in stream:
        if stop.is_set():
            break
        if first:
            emit(event="first_audio", identity=identity, ms=since_ms(t0))
            first = False
        data = np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float64) / 32768.0
        window.append(data)
        count += len(data)
        if count >= WINDOW:
            samples = np.concatenate(window)[:WINDOW]
            ratio, level = goertzel_ratio(samples, expect)
            emit(event="tone", identity=identity, freq=expect, level_db=round(level, 1), ratio=round(ratio, 3))
            window, count = [], 0
    await stream.aclose()


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event):
    """Set `stop` on stdin EOF (daemon thread: never blocks exit)."""
    def run():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)
    threading.Thread(target=run, daemon=True).start()


async def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, token, tone, expect, duration = sys.argv[1:]
    tone, expect, duration = float(tone), float(expect), float(duration)
    stop = asyncio.Event()
    room = rtc.Room()
    tasks = []

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            emit(event="track_subscribed", identity=participant.identity, track=publication.sid)
            tasks.append(asyncio.ensure_future(listen(track, participant.identity, expect, stop, t0)))

    @room.on("participant_disconnected")
    def on_gone(participant):
        emit(event="participant_disconnected", identity=participant.identity,
             reason=reason_name(participant.disconnect_reason))

    @room.on("reconnecting")
    def on_reconnecting():
        emit(event="reconnecting")

    @room.on("reconnected")
    def on_reconnected():
        emit(event="reconnected")

    @room.on("disconnected")
    def on_disconnected(reason):
        emit(event="disconnected", reason=reason_name(reason))
        stop.set()

    t0 = time.perf_counter()
    try:
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))
    except Exception as e:  # noqa: BLE001 - reported to the test, which decides
        emit(event="error", message=str(e))
        sys.exit(1)
    emit(event="connected", identity=room.local_participant.identity, connect_ms=since_ms(t0))

    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    emit(event="published", publish_ms=since_ms(t0))
    tasks.append(asyncio.ensure_future(publish_tone(source, tone, stop)))
    watch_stdin(asyncio.get_running_loop(), stop)
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

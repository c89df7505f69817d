"""Mark granularity: truncation accuracy against messages sent, on a simulated network.

Run: python benchmarks/marks.py

Each strategy decides how assistant audio is cut into Twilio ``media`` messages and where marks go:

- ``per-delta``   one media message per Realtime delta, then one mark (what the relay does);
- ``rechunk-Nms`` the delta re-chunked into N ms media messages, each followed by a mark;
- ``end-only``    one mark after the last delta of a response (the common sample's approach);
- ``no-marks``    clock only, anchored when audio was first sent (the baseline).

The relay side is the real ``bridge.playback.Playback``; the phone is ``simulate.PhonePlayback`` (Twilio's
documented buffer semantics). Messages reach the phone after a random one-way delay (in order, as
over TCP) and echoes come back the same way; the phone's playback starts a random jitter-buffer
delay after the first audio arrives. At a random moment the caller barges in: the truth is what the
phone had played when the ``clear`` arrived, the estimate is ``Playback.barge_in`` at send time.
Everything runs on a virtual clock, so the figures are repeatable.
"""

from __future__ import annotations

import heapq
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.playback import Playback
from standins.phone_playback import PhonePlayback

Strategy = Callable[[int], list[int]]
"""Given a delta's size in bytes, the sizes of the media messages it becomes (each followed by a mark
unless the strategy says otherwise)."""


@dataclass
class Outcome:
    errors_ms: list[float]
    messages: int
    audio_ms: float


def simulate_once(rng: random.Random, chunker: Strategy, marks: str) -> tuple[float, int, float]:
    """One response interrupted at a random point; returns (estimate - truth in ms, messages sent,
    audio ms sent). Positive: the model would believe the caller heard audio they never heard."""
    one_way = lambda: rng.uniform(0.010, 0.060)  # noqa: E731 - relay <-> Twilio, seconds
    jitter_start = rng.uniform(0.0, 0.080)  # Twilio's playback starts a little after arrival
    deltas = []
    total = rng.randint(2000, 6000) * 8
    while sum(deltas) < total:
        deltas.append(rng.randint(20, 400) * 8)
    speed = rng.uniform(3, 15)
    relay, phone = Playback(), PhonePlayback()
    phone.end = 0.0
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(at: float, kind: str, data: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, data))

    t, last_arrival, messages = 1.0, 0.0, 0
    first_arrival: float | None = None
    pieces: list[tuple[float, int, bool]] = []
    for index, size in enumerate(deltas):
        parts = chunker(size)
        for k, part in enumerate(parts):
            last_piece = index == len(deltas) - 1 and k == len(parts) - 1
            pieces.append((t, part, marks == "each" or (marks == "end" and last_piece)))
        t += size / 8000 / speed
    barge_at = 1.0 + rng.uniform(0.1, total / 8000 - 0.1) + jitter_start
    for at, size, with_mark in pieces:
        push(at, "send", (size, with_mark))
    push(barge_at, "barge", None)
    truth = estimate = 0.0
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "send":
            size, with_mark = data  # type: ignore[misc]
            name = relay.on_audio_sent("item", size, now)
            messages += 1
            arrival = max(last_arrival, now + one_way())
            last_arrival = arrival
            push(arrival, "phone-media", size)
            if with_mark:
                messages += 1
                push(arrival, "phone-mark", name)
        elif kind == "phone-media":
            if first_arrival is None:
                first_arrival = now
                phone.end = now + jitter_start
            phone.enqueue_media(now, b"\x00" * int(data), ("item", 0))  # type: ignore[call-overload]
        elif kind == "phone-mark":
            for echoed in phone.enqueue_mark(now, str(data)):
                push(now + one_way(), "echo", echoed)
            next_at = phone.next_mark_at()
            if next_at is not None:
                push(next_at, "due", None)
        elif kind == "due":
            for echoed in phone.due_marks(now):
                push(now + one_way(), "echo", echoed)
        elif kind == "echo":
            relay.on_mark(str(data), now)
        elif kind == "barge":
            cuts = relay.barge_in(now)
            estimate = cuts[0].audio_end_ms if cuts else relay.sent_total / 8
            clear_arrival = max(last_arrival, now + one_way())
            truth = phone.heard_bytes_by_item(clear_arrival).get("item", 0) / 8
            break
    return estimate - truth, messages, relay.sent_total / 8


def run(name: str, chunker: Strategy, marks: str, trials: int = 2000) -> Outcome:
    rng = random.Random(42)
    errors, messages, audio_ms = [], 0, 0.0
    for _ in range(trials):
        error, count, sent_ms = simulate_once(rng, chunker, marks)
        errors.append(error)
        messages += count
        audio_ms += sent_ms
    return Outcome(errors, messages, audio_ms)


def rechunk(ms: int) -> Strategy:
    return lambda size: [min(ms * 8, size - i) for i in range(0, size, ms * 8)]


def main() -> None:
    strategies: list[tuple[str, Strategy, str]] = [
        ("no-marks (baseline)", lambda size: [size], "none"),
        ("end-only", lambda size: [size], "end"),
        ("per-delta (relay)", lambda size: [size], "each"),
        ("rechunk-100ms", rechunk(100), "each"),
        ("rechunk-20ms", rechunk(20), "each"),
    ]
    print("network: one-way 10-60 ms, playback start jitter 0-80 ms; 2000 barge-ins per strategy")
    print("error = estimate - truth; over = share of barge-ins where the model is told the caller heard")
    print("audio that was never played (the harmful direction)\n")
    print(f"{'strategy':<22}{'median |err|':>13}{'p90 |err|':>10}{'over':>7}{'worst over':>11}{'msgs/s audio':>14}")
    for name, chunker, marks in strategies:
        outcome = run(name, chunker, marks)
        magnitudes = sorted(abs(e) for e in outcome.errors_ms)
        over = [e for e in outcome.errors_ms if e > 1]
        per_s = outcome.messages / (outcome.audio_ms / 1000)
        print(f"{name:<22}{statistics.median(magnitudes):>11.1f}ms{magnitudes[int(len(magnitudes) * 0.9)]:>8.1f}ms"
              f"{len(over) / len(outcome.errors_ms):>7.0%}{max(over, default=0):>9.1f}ms{per_s:>14.1f}")


if __name__ == "__main__":
    main()

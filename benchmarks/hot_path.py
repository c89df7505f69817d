"""Per-frame cost of the relay's work in each direction, against a validated baseline.

Run: python benchmarks/hot_path.py

Inbound is one Twilio ``media`` frame (20 ms, 160 µ-law bytes) parsed by the Twilio dialect into a
``PhoneAudio`` and turned into an ``input_audio_buffer.append``; outbound is one Realtime
``response.output_audio.delta`` (here 100 ms of audio) parsed into an ``AudioDelta``, accounted in
``Playback`` and turned into a Twilio ``media`` + ``mark``.
The baseline does the same with each event validated by the ``openai`` package's pydantic models,
which the relay deliberately does not do per frame. Socket I/O is not included.

GPT-Live's rows do the same with its events (``session.input_audio.append``; a
``session.output_audio.delta`` of 100 ms checked for silence, then sent); its silent deltas (10 a
second whenever the voice is quiet, none of them forwarded) are the last row.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.playback import Playback, b64_decoded_len
from model import live_wire, realtime_wire
from phones import twilio as phone_twilio
from phones.leg import PhoneAudio
from standins import validation
from standins.phone_dialects import TwilioMessages

FRAME = TwilioMessages().media(os.urandom(160), 820)
DELTA = json.dumps({"type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1",
                    "item_id": "item_1", "output_index": 0, "content_index": 0,
                    "delta": base64.b64encode(os.urandom(800)).decode()})


def inbound() -> str:
    event = phone_twilio.parse_message(FRAME)
    assert type(event) is PhoneAudio
    return realtime_wire.input_audio_append(event.payload)


def inbound_validated() -> str:
    event = phone_twilio.parse_message(FRAME)
    assert type(event) is PhoneAudio
    out = json.loads(realtime_wire.input_audio_append(event.payload))
    assert not validation.client_event_problems(out)
    return json.dumps(out)


PLAYBACK = Playback(max_ahead_ms=10**9)  # the bound checked on every delta, as in the relay, never reached here


def outbound(raw: str = DELTA) -> tuple[str, str]:
    event = realtime_wire.parse_server_event(raw)
    assert type(event) is realtime_wire.AudioDelta
    name = PLAYBACK.on_audio_sent(event.item_id, b64_decoded_len(event.payload), time.monotonic())
    return phone_twilio.media_message("MZ1", event.payload), phone_twilio.mark_message("MZ1", name)


def outbound_validated() -> tuple[str, str]:
    assert not validation.server_event_problems(json.loads(DELTA))
    return outbound()


LIVE_DELTA = json.dumps({"type": "session.output_audio.delta", "delta": base64.b64encode(os.urandom(800)).decode()})
LIVE_SILENCE = json.dumps({"type": "session.output_audio.delta", "delta": base64.b64encode(b"\xff" * 800).decode()})


def live_inbound() -> bytes:
    event = phone_twilio.parse_message(FRAME)
    assert type(event) is PhoneAudio
    return live_wire.input_audio_append(event.payload)


def live_outbound(raw: str = LIVE_DELTA) -> tuple[str, str] | None:
    event = live_wire.parse_server_event(raw)
    assert type(event) is live_wire.OutputAudio
    if live_wire.is_silence(event.payload):
        return None
    name = PLAYBACK.on_audio_sent("live_turn_1", b64_decoded_len(event.payload), time.monotonic())
    return phone_twilio.media_message("MZ1", event.payload), phone_twilio.mark_message("MZ1", name)


def live_outbound_validated() -> tuple[str, str] | None:
    assert not validation.live_server_event_problems(json.loads(LIVE_DELTA))
    return live_outbound()


def per_call_us(fn: Callable[[], object], n: int = 20000) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def main() -> None:
    validation.warm_up_validators()
    rows = [
        ("inbound frame (relay)", per_call_us(inbound), 50),
        ("inbound frame (validated)", per_call_us(inbound_validated, 5000), 50),
        ("outbound delta (relay)", per_call_us(outbound), 10),
        ("outbound delta (validated)", per_call_us(outbound_validated, 5000), 10),
        ("GPT-Live inbound frame", per_call_us(live_inbound), 50),
        ("GPT-Live outbound delta", per_call_us(live_outbound), 10),
        ("GPT-Live delta (validated)", per_call_us(live_outbound_validated, 5000), 10),
        ("GPT-Live silent delta", per_call_us(lambda: live_outbound(LIVE_SILENCE)), 10),
    ]
    print(f"{'path':<30}{'µs each':>10}{'per s of call':>15}{'calls per core':>16}")
    for name, us, rate in rows:
        cpu_share = us * rate / 1e6
        print(f"{name:<30}{us:>10.1f}{rate:>12}/s{1 / cpu_share:>16.0f}")
    print("\ncalls per core counts only this work at 50 inbound frames/s and 10 deltas/s per call; "
          "sockets, TLS and the event loop cost more.")


if __name__ == "__main__":
    main()

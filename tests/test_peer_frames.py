"""Every field of every peer message may carry any JSON type: the parsers of Twilio's, Plivo's, Telnyx's and the
Realtime service's messages, fed messages of each shape they read with any field replaced by arbitrary JSON
(hypothesis), return a typed event or raise their own Malformed error, never anything else; and a call fed such
frames goes on."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import RawLeg, make_config, start_relay, start_standin, until

from model import live_wire
from model.realtime_wire import MalformedEvent, parse_server_event
from phones import plivo, telnyx, twilio
from phones.leg import MalformedFrame
from standins.openai_service import AssistantTurn

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
"""Any JSON value."""
PAYLOAD = base64.b64encode(b"\xff" * 160).decode()

TWILIO = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
     "start": {"streamSid": "MZ1", "callSid": "CA1", "customParameters": {"caller_number": "+14155550100"},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
    {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "payload": PAYLOAD}},
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "0.160"}},
    {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "5"}},
    {"event": "stop", "streamSid": "MZ1", "stop": {"callSid": "CA1"}},
]
PLIVO = [
    {"event": "start", "start": {"streamId": "S1", "callId": "C1"},
     "extra_headers": "callerNumber=14155550100,streamToken=t"},
    {"event": "media", "streamId": "S1", "media": {"payload": PAYLOAD, "contentType": "audio/x-mulaw"}},
    {"event": "playedStream", "streamId": "S1", "name": "0.160"},
    {"event": "dtmf", "streamId": "S1", "dtmf": {"digit": "#"}},
    {"event": "clearedAudio", "streamId": "S1"},
    {"event": "stop", "streamId": "S1"},
]
TELNYX = [
    {"event": "connected", "version": "1.0.0"},
    {"event": "start", "sequence_number": "1", "stream_id": "S1",
     "start": {"call_control_id": "v3:c", "from": "+14155550100", "custom_parameters": {"call_id": "v3:c"},
               "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}},
    {"event": "media", "sequence_number": "4", "stream_id": "S1",
     "media": {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": PAYLOAD}},
    {"event": "mark", "sequence_number": "5", "stream_id": "S1", "mark": {"name": "0.160"}},
    {"event": "dtmf", "sequence_number": "6", "stream_id": "S1", "dtmf": {"digit": "1"}},
    {"event": "error", "stream_id": "S1", "payload": {"code": 100003, "title": "malformed_frame", "detail": "x"}},
    {"event": "stop", "sequence_number": "7", "stream_id": "S1", "stop": {"call_control_id": "v3:c"}},
]
REALTIME = [
    {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": PAYLOAD},
    {"type": "response.output_audio.done", "item_id": "i"},
    {"type": "session.updated", "session": {"audio": {"input": {"noise_reduction": {"type": "far_field"}}}}},
    {"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": 5},
    {"type": "input_audio_buffer.speech_stopped", "item_id": "u"},
    {"type": "input_audio_buffer.committed", "item_id": "u"},
    {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u", "transcript": "hi"},
    {"type": "conversation.item.input_audio_transcription.delta", "item_id": "u", "delta": "h"},
    {"type": "response.output_audio_transcript.delta", "item_id": "i", "delta": "He"},
    {"type": "response.output_audio_transcript.done", "item_id": "i", "transcript": "Hello"},
    {"type": "response.created", "response": {"id": "r"}},
    {"type": "response.done", "response": {"id": "r", "status": "completed", "output": [
        {"type": "message", "content": [{"type": "output_audio", "transcript": "One moment."}]},
        {"type": "function_call", "call_id": "c", "name": "end_call", "arguments": "{}"}]}},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m", "event_id": "e"}},
]
LIVE = [
    {"type": "session.output_audio.delta", "delta": PAYLOAD},
    {"type": "session.output_transcript.delta", "delta": "He", "start_ms": 1, "end_ms": 2},
    {"type": "session.input_transcript.delta", "delta": "hi", "start_ms": 1, "end_ms": 2},
    {"type": "session.started", "session": {"id": "live_1", "expires_at": 5}},
    {"type": "session.closed", "reason": "expired", "usage": {"seconds": 1.5}},
    {"type": "session.usage.updated", "usage": {"seconds": 1.5}},
    {"type": "response.event", "delegation_id": "d", "event": {"type": "response.output_item.done", "item": {
        "type": "function_call", "status": "completed", "call_id": "c", "name": "end_call", "arguments": "{}"}}},
    {"type": "response.event", "delegation_id": "d", "event": {"type": "response.completed"}},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m"}, "client_event_id": "e"},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a message (the message itself included), each a place a field can be replaced."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replaced(message: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``message`` with the field at ``path`` (the message itself for ``()``) replaced by ``value``."""
    if not path:
        return value
    message = copy.deepcopy(message)
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return message


PARSERS: dict[str, tuple[Callable[[bytes], Any], type[Exception], list[dict[str, Any]]]] = {
    "twilio": (twilio.parse_message, MalformedFrame, TWILIO),
    "plivo": (plivo.parse_message, MalformedFrame, PLIVO),
    "telnyx": (telnyx.parse_message, MalformedFrame, TELNYX),
    "realtime": (parse_server_event, MalformedEvent, REALTIME),
    "live": (live_wire.parse_server_event, live_wire.MalformedEvent, LIVE),
}
CASES = [(peer, template, path) for peer, (_, _, templates) in PARSERS.items() for template in templates
         for path in _paths(template)]
"""Every field of every message shape each parser reads, one case each."""


EVERY_TYPE = (None, True, False, 0, 1, -1, 2**70, 1.5, "", "x", [], [1], ["media"], {}, {"a": 1})
"""One value of each JSON type (and the values a careless check lets through)."""


@pytest.mark.parametrize("peer", PARSERS)
def test_each_field_of_each_json_type(peer: str) -> None:
    """Each field of each message shape, replaced by a value of each JSON type in turn: the parser returns an
    event or raises its own Malformed error, never anything else."""
    parse, allowed, templates = PARSERS[peer]
    escaped = []
    for template in templates:
        for path in _paths(template):
            for value in EVERY_TYPE:
                try:
                    parse(json.dumps(_replaced(template, path, value)).encode())
                except allowed:
                    pass
                except Exception as exc:
                    escaped.append(f"{'.'.join(map(str, path))}={value!r}: {type(exc).__name__}: {exc}")
    assert escaped == []


@pytest.mark.parametrize(("peer", "template", "path"), CASES,
                         ids=[f"{peer}-{t.get('type') or t.get('event')}-{'.'.join(map(str, path)) or '$'}"
                              for peer, t, path in CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, other=st.data())
def test_any_field_of_any_json_type(peer: str, template: dict[str, Any], path: tuple[Any, ...], value: Any,
                                    other: st.DataObject) -> None:
    """A peer message with this field (and maybe one more) of any JSON type parses to a typed event or raises
    the parser's own Malformed error, never anything else."""
    parse, allowed, _ = PARSERS[peer]
    message = _replaced(template, path, value)
    more = _paths(message)
    message = _replaced(message, other.draw(st.sampled_from(more)), other.draw(JSON)) if other.draw(st.booleans()) \
        else message
    frame = json.dumps(message).encode()  # the stdlib: any integer, as a peer may send
    try:
        parse(frame)
    except allowed:
        pass


@pytest.mark.parametrize("network", [twilio, plivo, telnyx], ids=["twilio", "plivo", "telnyx"])
def test_an_event_name_that_is_not_a_string_is_malformed(network: Any) -> None:
    """``{"event": ["media"]}`` (a list cannot be looked up in a set of names) is a malformed frame."""
    with pytest.raises(MalformedFrame):
        network.parse_message(b'{"event": ["media"]}')


async def test_a_frame_of_any_shape_mid_call_leaves_the_call_alive(stack: contextlib.AsyncExitStack,
                                                                   http: aiohttp.ClientSession,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """After the start, frames whose event or fields are of the wrong JSON type are dropped with one warning
    per kind; the caller's audio after them still reaches the model and the call stays open."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    session = await until(lambda: standin.sessions and standin.sessions[0].updated_at and standin.sessions[0],
                          what="session")
    for bad in ({"event": ["media"]}, {"event": {"media": 1}}, {"event": "media", "media": ["payload"]},
                {"event": "mark", "mark": {"name": 7}}, {"event": "dtmf", "dtmf": {"digit": None}}, [1, 2], 5):
        for _ in range(3):
            await leg.send(bad)  # type: ignore[arg-type]
    before = session.input_bytes
    await leg.media(b"\x20" * 160)
    await until(lambda: session.input_bytes == before + 160, what="good audio after the bad")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if w.startswith("twilio event that is not a string dropped")]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not leg.ws.closed

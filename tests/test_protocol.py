"""Sans-I/O parsing and state: Realtime server events, Twilio frames, the response slot, the goodbye."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.goodbye import Goodbye, GoodbyeState
from model.realtime_wire import (
    AudioDelta,
    AudioDone,
    FunctionCall,
    MalformedEvent,
    OtherEvent,
    RealtimeError,
    ResponseCreated,
    ResponseDone,
    ResponseSlot,
    SessionUpdated,
    SpeechStarted,
    parse_server_event,
)
from phones import twilio as phone_twilio
from phones.leg import MalformedFrame, PhoneAudio, PhoneDtmf, PhoneMarkPlayed, PhoneStart, PhoneStop

DONE_WITH_CALLS = {
    "type": "response.done",
    "response": {"id": "resp_1", "status": "completed", "output": [
        {"type": "message", "content": [{"type": "output_audio", "transcript": "One moment."}]},
        {"type": "function_call", "call_id": "call_1", "name": "gpt_web_search", "arguments": '{"query": "q"}'},
        {"type": "function_call", "name": "end_call", "arguments": "{}"},
    ]},
}


@pytest.mark.parametrize(
    ("event", "parsed"),
    [
        pytest.param({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "AAA="},
                     AudioDelta(response_id="r", item_id="i", payload="AAA="), id="delta"),
        pytest.param({"type": "response.output_audio.done", "item_id": "i"}, AudioDone("i"), id="audio-done"),
        pytest.param({"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "u"},
                     SpeechStarted("u"), id="speech-started"),
        pytest.param({"type": "response.created", "response": {"id": "resp_1"}}, ResponseCreated("resp_1"),
                     id="created"),
        pytest.param(DONE_WITH_CALLS, ResponseDone("resp_1", "completed", (
            FunctionCall("call_1", "gpt_web_search", '{"query": "q"}'), FunctionCall(None, "end_call", "{}")), True),
                     id="done-with-calls-after-speech"),
        pytest.param({**DONE_WITH_CALLS, "response": {**DONE_WITH_CALLS["response"], "status": "cancelled"}},
                     ResponseDone("resp_1", "cancelled", (), True), id="cancelled-calls-not-run"),
        pytest.param({"type": "session.updated", "session": {"audio": {"input": {"noise_reduction": None}}}},
                     SessionUpdated("off"), id="noise-off"),
        pytest.param({"type": "session.updated",
                      "session": {"audio": {"input": {"noise_reduction": {"type": "far_field"}}}}},
                     SessionUpdated("far_field"), id="noise-far"),
        pytest.param({"type": "session.updated", "session": {"type": "realtime"}}, SessionUpdated(None),
                     id="noise-unsaid"),
        pytest.param({"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m",
                                                 "event_id": "e1"}},
                     RealtimeError("invalid_request_error", "x", "m", "e1"), id="error"),
        pytest.param({"type": "error"}, RealtimeError(None, None, None, None), id="error-without-body"),
        pytest.param({"type": "rate_limits.updated", "rate_limits": []}, OtherEvent("rate_limits.updated"),
                     id="other"),
    ],
)
def test_server_events_parse_to_typed_objects(event: dict[str, Any], parsed: object) -> None:
    """Each event the bridge acts on becomes a small typed object carrying what it reads."""
    assert parse_server_event(json.dumps(event)) == parsed


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param("{not json", "json", id="not-json"),
        pytest.param("[1, 2]", "json", id="not-object"),
        pytest.param("[" * 100_000 + "]" * 100_000, "json", id="nested-too-deep"),
        pytest.param('{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": 7}',
                     "response.output_audio.delta", id="delta-not-text"),
        pytest.param('{"type": "response.created", "response": "r"}', "response.created", id="created-no-object"),
        pytest.param('{"type": "response.done", "response": {"id": "r", "status": "completed", "output": 3}}',
                     "response.done", id="done-output-not-list"),
        pytest.param('{"type": "response.output_audio.done"}', "response.output_audio.done", id="done-no-item"),
    ],
)
def test_malformed_server_events_are_refused_with_their_kind(raw: str, kind: str) -> None:
    """A frame the bridge cannot use raises MalformedEvent naming its kind (one warning per kind)."""
    with pytest.raises(MalformedEvent) as info:
        parse_server_event(raw)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        pytest.param({"event": "connected", "protocol": "Call", "version": "1.0.0"}, None, id="connected"),
        pytest.param({"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "callSid": "CA1",
                      "customParameters": {"caller_number": "+1", "n": 5}}},
                     PhoneStart("MZ1", "CA1", {"caller_number": "+1"}), id="start"),
        pytest.param({"event": "media", "media": {"payload": "AAA="}}, PhoneAudio("AAA="), id="media"),
        pytest.param({"event": "mark", "mark": {"name": "0.800"}}, PhoneMarkPlayed("0.800"), id="mark"),
        pytest.param({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}, PhoneDtmf("5"), id="dtmf"),
        pytest.param({"event": "stop", "stop": {}}, PhoneStop(), id="stop"),
        pytest.param({"event": "mystery"}, None, id="unknown"),
    ],
)
def test_twilio_messages_parse_to_phone_events(message: dict[str, Any], parsed: object) -> None:
    """Twilio's wire format becomes the transport-neutral phone events the bridge reads."""
    assert phone_twilio.parse_message(json.dumps(message)) == parsed


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param("{not json", "json", id="not-json"),
        pytest.param("[" * 100_000 + "]" * 100_000, "json", id="nested-too-deep"),
        pytest.param('{"event": "media", "media": {}}', "media", id="media-no-payload"),
        pytest.param('{"event": "mark", "mark": {"name": 5}}', "mark", id="mark-no-name"),
        pytest.param('{"event": "start", "start": {}}', "start", id="start-no-sid"),
    ],
)
def test_malformed_twilio_frames_are_refused_with_their_kind(raw: str, kind: str) -> None:
    """A Twilio frame that cannot be used raises MalformedFrame naming its kind."""
    with pytest.raises(MalformedFrame) as info:
        phone_twilio.parse_message(raw)
    assert info.value.kind == kind


def test_twilio_outbound_messages() -> None:
    """media, mark and clear as Twilio's docs show them."""
    assert json.loads(phone_twilio.media_message("MZ1", "AAA=")) == {
        "event": "media", "streamSid": "MZ1", "media": {"payload": "AAA="}}
    assert json.loads(phone_twilio.mark_message("MZ1", "0.8")) == {
        "event": "mark", "streamSid": "MZ1", "mark": {"name": "0.8"}}
    assert json.loads(phone_twilio.clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_response_slot_one_at_a_time() -> None:
    """A second request waits for the active response; a refused create is asked again after the VAD's response."""
    slot = ResponseSlot()
    assert slot.request() is True
    assert slot.request() is False  # in flight: queued
    assert slot.on_created("r1") is True
    assert slot.on_done("r1") is True  # the queued one goes now
    slot.on_refused()  # ... but a VAD response won the race
    assert slot.on_created("r2") is False  # the service's own
    assert slot.interrupt() == "r2" and "r2" in slot.interrupted
    assert slot.on_done("r2") is True and slot.interrupted == set()
    assert slot.on_created("r3") is True
    assert slot.on_done("r3") is False


@pytest.mark.parametrize(
    ("spoke", "asks", "state"),
    [
        pytest.param(False, True, GoodbyeState.ASKED, id="asks-for-the-goodbye"),
        pytest.param(True, False, GoodbyeState.SPOKEN, id="goodbye-came-with-end_call"),
    ],
)
def test_goodbye_states(spoke: bool, asks: bool, state: GoodbyeState) -> None:
    """end_call then its answers: the goodbye is asked for unless it was already spoken; later batches ask nothing."""
    goodbye = Goodbye()
    assert goodbye.after_tools(spoke=False) is True  # no end_call: the model's next answer
    assert goodbye.request("bye") is True and goodbye.request("again") is False
    assert goodbye.after_tools(spoke) is asks and goodbye.state is state
    assert goodbye.after_tools(spoke=False) is False
    goodbye.on_response_created("r9", ours=True)
    goodbye.on_response_done("r9")
    assert goodbye.state is GoodbyeState.SPOKEN and goodbye.reason == "end_call: bye"

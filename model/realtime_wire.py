"""The Realtime API (GA), sans-I/O: client event builders, the server event parser, and the response slot.

Nothing here touches a socket or a clock. The Realtime protocol's wire names are written here once;
``model.realtime.RealtimeSession`` moves them over a websocket. Parsed server events that the call acts
on are the interface's model events (``model.session``), or subclasses of them carrying what only the
Realtime session reads (an audio delta's ``response_id``).

Sources: the ``openai`` package's ``openai.types.realtime`` event models (GA interface); OpenAI
"Realtime conversations" guide (one active response per conversation; truncating on barge-in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from model.envelope import MalformedEvent, optional_text, parse_event, text_field
from model.prices import usage_of
from model.session import (
    AssistantAudio,
    AssistantAudioDone,
    AssistantTranscriptDelta,
    AssistantTranscriptDone,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTranscriptDelta,
    CallerTranscriptDone,
    CallerTurn,
    FunctionCall,
    ResponseDone,
)

# --- Client events -------------------------------------------------------------------------


def input_audio_append(payload: str) -> bytes:
    """``input_audio_buffer.append`` (UTF-8 JSON) carrying the phone's base64 µ-law payload
    unchanged (the hot path; the dialects have checked that the payload is base64)."""
    return orjson.dumps({"type": "input_audio_buffer.append", "audio": payload})


def session_update(session: dict[str, Any]) -> dict[str, Any]:
    """``session.update``; ``session`` must carry ``"type": "realtime"`` (GA requires it)."""
    if session.get("type") != "realtime":
        raise ValueError("session.update needs session.type 'realtime'")
    return {"type": "session.update", "session": session}


def realtime_session(
    *,
    instructions: str,
    voice: str,
    turn_detection: dict[str, Any] | None,
    noise_reduction: str | None,
    transcription_model: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    reasoning_effort: str | None = None,
) -> dict[str, Any]:
    """The telephony session: µ-law (``audio/pcmu``) in and out, audio output only.

    Args:
        instructions: the system prompt.
        voice: ``audio.output.voice`` (e.g. ``cedar``); fixed once the model has spoken.
        turn_detection: ``server_vad`` or ``semantic_vad`` object, or None for no VAD.
        noise_reduction: ``near_field``, ``far_field``, or None for off.
        transcription_model: caller transcription model, or None for none.
        tools: function tool definitions (``{"type": "function", "name", ...}``).
        reasoning_effort: ``reasoning.effort`` (``minimal`` to ``xhigh``) for a model that reasons
            (``takes_reasoning``); None: the service's default.
    """
    audio_input: dict[str, Any] = {
        "format": {"type": "audio/pcmu"},
        "turn_detection": turn_detection,
        "noise_reduction": {"type": noise_reduction} if noise_reduction else None,
    }
    if transcription_model:
        audio_input["transcription"] = {"model": transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": instructions,
        "audio": {
            "input": audio_input,
            "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
        },
    }
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    if reasoning_effort:
        session["reasoning"] = {"effort": reasoning_effort}
    return session


REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
"""``reasoning.effort`` values (``openai.types.realtime.RealtimeReasoningEffort``)."""


def takes_reasoning(model: str) -> bool:
    """True for a Realtime model that takes ``reasoning`` in its session (the ``gpt-realtime-2`` family:
    ``openai.types.realtime.RealtimeReasoningParam``); earlier models refuse the field."""
    return model.startswith("gpt-realtime-2")


def noise_reduction_update(mode: str | None, event_id: str) -> dict[str, Any]:
    """Partial ``session.update`` changing only ``audio.input.noise_reduction``.

    GA rejects a ``session.update`` without ``session.type`` (the earlier systems' defect: the
    switch failed while the tool reported success), so it is always sent. ``event_id`` comes
    back in ``error.event_id`` if the service refuses the update.

    Args:
        mode: ``near_field``, ``far_field``, or None for off.
        event_id: the client event id to correlate a refusal.
    """
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "audio": {"input": {"noise_reduction": {"type": mode} if mode else None}},
        },
    }


def response_create(instructions: str | None = None) -> dict[str, Any]:
    """``response.create``, optionally with per-response instructions."""
    if instructions is None:
        return {"type": "response.create"}
    return {"type": "response.create", "response": {"instructions": instructions}}


def response_cancel() -> dict[str, Any]:
    """``response.cancel``; answered by ``response_cancel_not_active`` when none is active."""
    return {"type": "response.cancel"}


def item_truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    """``conversation.item.truncate`` of an assistant audio item at ``audio_end_ms``.

    The service rejects a position past the audio it generated ("Audio content of X ms is
    already shorter than Y ms"), so callers clamp first (see ``Playback.barge_in``).
    """
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def system_message(text: str) -> dict[str, Any]:
    """``conversation.item.create`` of a system message (system items take input_text only)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
    }


def text_message(role: str, text: str) -> dict[str, Any]:
    """``conversation.item.create`` of a past turn replayed as text into a new session: the caller's
    (``role="user"``, ``input_text``) or the assistant's (``role="assistant"``, ``output_text``; an
    assistant item cannot be created with audio). The same shapes LiveKit's agents replay on a session
    reconnect (livekit/agents-js PR #977)."""
    if role not in ("user", "assistant"):
        raise ValueError(f"a replayed turn is a user or an assistant message, not {role!r}")
    part = "input_text" if role == "user" else "output_text"
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": part, "text": text}]},
    }


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """``conversation.item.create`` answering the function call ``call_id`` with ``output``
    (a JSON string)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


# --- Server events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """``session.updated``: the service applied a ``session.update``."""

    noise_reduction: str | None
    """``audio.input.noise_reduction.type`` now in force (``off`` when null); None when the event
    does not say."""


@dataclass(slots=True)  # not frozen: built per delta, and frozen construction costs 0.55 µs against 0.2 µs
class AudioDelta(AssistantAudio):
    """``response.output_audio.delta``: assistant audio, base64 µ-law when the session's output
    format is ``audio/pcmu`` (8 bytes per ms), with the response it belongs to."""

    response_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted(CallerSpeechStarted):
    """``input_audio_buffer.speech_started``: the service's VAD heard the caller start speaking."""

    item_id: str | None


@dataclass(frozen=True, slots=True)
class SpeechStopped(CallerSpeechStopped):
    """``input_audio_buffer.speech_stopped``: the caller's turn ended (its item is committed next)."""

    item_id: str | None


AudioDone = AssistantAudioDone
"""``response.output_audio.done``: no more audio for ``item_id`` (sent for cancelled responses too)."""
InputCommitted = CallerTurn
"""``input_audio_buffer.committed``: the caller's turn is a user item in the conversation."""
CallerTranscript = CallerTranscriptDone
"""``conversation.item.input_audio_transcription.completed`` (asynchronous: it may arrive after the
assistant has answered)."""
TranscriptDelta = AssistantTranscriptDelta
"""``response.output_audio_transcript.delta``."""
TranscriptDone = AssistantTranscriptDone
"""``response.output_audio_transcript.done``: the whole text as generated."""


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """``response.created``: a response is now active (one at a time per conversation)."""

    response_id: str


@dataclass(frozen=True, slots=True)
class RealtimeError:
    """``error``: most leave the session usable (OpenAI Realtime API reference, "error")."""

    type: str | None
    code: str | None
    message: str | None
    event_id: str | None
    """The client event that caused it, when the service says."""


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A server event the relay does not act on (logged at DEBUG)."""

    type: str


ServerEvent = (
    SessionUpdated
    | AudioDelta
    | AssistantAudioDone
    | SpeechStarted
    | SpeechStopped
    | CallerTurn
    | CallerTranscriptDone
    | CallerTranscriptDelta
    | AssistantTranscriptDelta
    | AssistantTranscriptDone
    | ResponseCreated
    | ResponseDone
    | RealtimeError
    | OtherEvent
)


def _object(event: dict[str, Any], key: str, kind: str) -> dict[str, Any]:
    value = event.get(key)
    if type(value) is not dict:
        raise MalformedEvent(kind, f"{key} is not an object")
    return value


def _audio_delta(event: dict[str, Any]) -> AudioDelta:
    # The hot path (tens of deltas per second per call): three type checks, no helper calls.
    response_id, item_id, payload = event.get("response_id"), event.get("item_id"), event.get("delta")
    if type(response_id) is str and type(item_id) is str and type(payload) is str:
        return AudioDelta(item_id, payload, response_id)
    raise MalformedEvent("response.output_audio.delta", "response_id, item_id or delta is not a string")


def _session_updated(event: dict[str, Any]) -> SessionUpdated:
    kind = "session.updated"
    audio = _object(event, "session", kind).get("audio")
    audio_input = audio.get("input") if type(audio) is dict else None
    if type(audio_input) is not dict or "noise_reduction" not in audio_input:
        return SessionUpdated(None)
    noise = audio_input["noise_reduction"]
    mode = noise.get("type") if type(noise) is dict else None
    return SessionUpdated(mode if type(mode) is str else "off")


def _response_done(event: dict[str, Any]) -> ResponseDone:
    kind = "response.done"
    response = _object(event, "response", kind)
    status = text_field(response, "status", kind)
    output = response.get("output") or []
    if type(output) is not list:
        raise MalformedEvent(kind, "response.output is not a list")
    calls, spoke = [], False
    for item in output:
        if type(item) is not dict:
            raise MalformedEvent(kind, "an output item is not an object")
        if item.get("type") == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            calls.append(FunctionCall(optional_text(item, "call_id") or None, str(name or ""),
                                      arguments if type(arguments) is str else ""))
        elif item.get("type") == "message":
            content = item.get("content")
            if type(content) is list:
                spoke = spoke or any(type(part) is dict and part.get("type") == "output_audio" for part in content)
    return ResponseDone(text_field(response, "id", kind), status, tuple(calls) if status == "completed" else (), spoke,
                        usage_of(response.get("usage")))


def _error(event: dict[str, Any]) -> RealtimeError:
    error = event.get("error")
    if type(error) is not dict:
        error = {}
    return RealtimeError(
        optional_text(error, "type"),
        optional_text(error, "code"),
        optional_text(error, "message"),
        optional_text(error, "event_id"),
    )


def _item_text(event_type: type, key: str) -> Callable[[dict[str, Any]], Any]:
    """The parser of a transcript event: ``event_type(item_id, <key>)``, both strings."""

    def parse(event: dict[str, Any]) -> Any:
        kind = str(event["type"])
        return event_type(text_field(event, "item_id", kind), text_field(event, key, kind))

    return parse


_PARSERS: dict[str, Any] = {
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda e: AudioDone(text_field(e, "item_id", "response.output_audio.done")),
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": lambda e: SpeechStarted(optional_text(e, "item_id")),
    "input_audio_buffer.speech_stopped": lambda e: SpeechStopped(optional_text(e, "item_id")),
    "input_audio_buffer.committed": lambda e: InputCommitted(text_field(e, "item_id", "input_audio_buffer.committed")),
    "conversation.item.input_audio_transcription.completed": _item_text(CallerTranscript, "transcript"),
    "conversation.item.input_audio_transcription.delta": _item_text(CallerTranscriptDelta, "delta"),
    "response.output_audio_transcript.delta": _item_text(TranscriptDelta, "delta"),
    "response.output_audio_transcript.done": _item_text(TranscriptDone, "transcript"),
    "response.created": lambda e: ResponseCreated(text_field(_object(e, "response", "response.created"), "id",
                                                        "response.created")),
    "response.done": _response_done,
    "error": _error,
}


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """One Realtime server event as a small typed object; checks only what the relay reads.

    Args:
        raw: one websocket text frame from the Realtime service.

    Returns:
        The typed event, or ``OtherEvent`` for a type the relay does not act on.

    Raises:
        MalformedEvent: not JSON (nesting too deep included), not an object, or a known type
            with a field the relay needs missing or of the wrong type.
    """
    return parse_event(raw, _PARSERS, OtherEvent)


# --- One response at a time ------------------------------------------------------------


class ResponseSlot:
    """One response at a time: the service refuses a second ``response.create`` while one is
    active (``conversation_already_has_active_response``), so a wanted response waits.

    Sans-I/O: the methods say whether to send ``response.create`` now; the call sends it.
    """

    def __init__(self) -> None:
        self.active: str | None = None
        """The active response's id."""
        self.create_in_flight = False
        """A ``response.create`` was sent and its ``response.created`` has not come yet."""
        self.wanted = False
        """A response was asked for while the slot was taken."""
        self.interrupted: set[str] = set()
        """Responses cut by a barge-in: their remaining audio must not reach the caller."""

    def request(self) -> bool:
        """A response is wanted. True: send ``response.create`` now; False: it is queued."""
        if self.active is not None or self.create_in_flight:
            self.wanted = True
            return False
        self.create_in_flight = True
        return True

    def on_created(self, response_id: str) -> bool:
        """``response.created``. Returns True when it answers the relay's ``response.create``
        (False: the service's VAD started it)."""
        ours = self.create_in_flight
        self.active, self.create_in_flight = response_id, False
        return ours

    def on_done(self, response_id: str) -> bool:
        """``response.done``. True: send the queued ``response.create`` now."""
        self.active = None
        self.interrupted.discard(response_id)
        if self.wanted and not self.create_in_flight:
            self.wanted, self.create_in_flight = False, True
            return True
        return False

    def on_refused(self) -> None:
        """The service refused the ``response.create`` in flight: a VAD response won the race.
        Ask again once that one is done."""
        if self.create_in_flight:
            self.create_in_flight, self.wanted = False, True

    def reset(self) -> bool:
        """The session was lost with its responses: start empty. True when a response was active,
        awaited or wanted (the new session should be asked for one)."""
        answering = self.active is not None or self.create_in_flight or self.wanted
        self.active, self.create_in_flight, self.wanted = None, False, False
        self.interrupted.clear()
        return answering

    def interrupt(self) -> str | None:
        """A barge-in cut the active response; returns its id (None when none is active)."""
        if self.active is not None:
            self.interrupted.add(self.active)
        return self.active

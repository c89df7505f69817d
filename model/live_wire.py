"""GPT-Live, sans-I/O: client event builders and the server event parser.

Nothing here touches a socket or a clock. GPT-Live's wire names are written here once;
``model.live.LiveSession`` moves them over a websocket and turns them into the interface's model events.

What differs from Realtime (``shared`` protocol notes §2, and the ``openai`` package's ``openai.types.live``):
the session is configured once by ``session.start`` (µ-law 8 kHz in and out, spelled with its ``rate``); the
voice model takes its own turns, so no event creates, cancels or truncates a response; output audio is a
continuous real-time stream, silence included; transcripts are deltas on the session timeline with no
"done"; tools run on a delegated Responses backend whose stream arrives wrapped in ``response.event``.

Sources: ``openai.types.live`` (``ClientEvent``, ``ServerEvent``, ``SessionConfig``, ``InitialItem``);
OpenAI "Live conversations", "Live delegation" and "Voice over WebSockets" guides.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from model.envelope import MalformedEvent, optional_text, parse_event, text_field
from model.session import FunctionCall

AUDIO_FORMAT = {"type": "audio/pcmu", "rate": 8000}
"""µ-law 8 kHz both ways: the phone's audio passes through untouched."""
MAX_APPEND_CHARS = 1700
"""A context append may hold at most 500 tokens; 1,756 characters were measured to pass, 1,900 refused."""
MAX_HISTORY_MESSAGES = 128
"""``session.start``'s ``input``: at most 128 messages..."""
MAX_HISTORY_CHARS = 24_000
"""...and 8,192 rendered tokens: about 4 characters a token, less a margin for the rendering."""
BACKEND_INSTRUCTIONS = (
    "You carry out tasks for a voice assistant on a phone call. Use the function that fits the task. Reply in "
    "one or two short plain sentences the assistant can say aloud: no lists, markdown or URLs."
)

# --- Client events -------------------------------------------------------------------------


def input_audio_append(payload: str) -> bytes:
    """``session.input_audio.append`` (UTF-8 JSON) carrying the phone's base64 µ-law payload unchanged
    (the hot path; the dialects have checked that the payload is base64)."""
    return orjson.dumps({"type": "session.input_audio.append", "audio": payload})


def live_session(
    *,
    model: str,
    instructions: str,
    voice: str,
    backend_model: str,
    tools: Sequence[dict[str, Any]],
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``session`` of ``session.start`` (``SessionConfig``): the phone's audio format, the voice, and a
    Responses backend holding the function ``tools`` (``{"type": "function", "name", ...}``).

    Args:
        history: ``input`` items (``history``), for a session that takes over a call.
    """
    session: dict[str, Any] = {
        "model": model,
        "instructions": instructions,
        "audio": {"format": dict(AUDIO_FORMAT), "output": {"voice": voice}},
        "delegation": {
            "type": "responses",
            "responses": {
                "model": backend_model,
                "instructions": BACKEND_INSTRUCTIONS,
                "tools": [_function_tool(tool) for tool in tools],
                "tool_choice": "auto",
            },
        },
    }
    if history:
        session["input"] = history
    return session


def _function_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Realtime-shaped function definition as GPT-Live's ``FunctionTool`` (the same fields)."""
    return {key: tool[key] for key in ("type", "name", "description", "parameters", "strict") if key in tool}


def session_start(session: dict[str, Any]) -> dict[str, Any]:
    """``session.start``: the first and only configuration of the session."""
    return {"type": "session.start", "event_id": "evt_start", "session": session}


def history(intro: str, turns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """``input`` items (``InitialItem``): ``intro`` as a developer message, then the turns; the newest turns
    win within ``MAX_HISTORY_MESSAGES`` and ``MAX_HISTORY_CHARS``. Empty texts are skipped (each message
    needs one text part)."""
    budget = MAX_HISTORY_CHARS - len(intro)
    kept: list[dict[str, Any]] = []
    for role, text in reversed(turns):
        if not text or role not in ("user", "assistant"):
            continue
        if len(kept) + 1 >= MAX_HISTORY_MESSAGES or len(text) > budget:
            break
        budget -= len(text)
        kind = "output_text" if role == "assistant" else "input_text"
        kept.append({"type": "message", "role": role, "content": [{"type": kind, "text": text}]})
    opening = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": intro}]}
    return [opening, *reversed(kept)]


def context_append(kind: str, text: str) -> dict[str, Any]:
    """``session.<kind>.append`` with ``delegation_id: null`` (general context): ``commentary`` for context
    the model should speak to now, ``thinking`` for silent context, ``instructions`` for a standing rule.
    ``text`` is cut to ``MAX_APPEND_CHARS``."""
    if kind not in ("commentary", "thinking", "instructions"):
        raise ValueError(f"no session.{kind}.append")
    return {"type": f"session.{kind}.append", "delegation_id": None, "content": text[:MAX_APPEND_CHARS]}


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """``response.item.create`` with a ``function_call_output`` for the backend."""
    return {"type": "response.item.create", "item": {"type": "function_call_output", "call_id": call_id,
                                                      "output": output}}


def response_create() -> dict[str, Any]:
    """``response.create``: the backend continues (refused until every pending call has its output)."""
    return {"type": "response.create"}


def session_close() -> dict[str, Any]:
    """``session.close``: the service finalises and answers ``session.closed`` with the billed seconds."""
    return {"type": "session.close", "event_id": "evt_close"}


# --- Server events -------------------------------------------------------------------------


@dataclass(slots=True)
class OutputAudio:
    """``session.output_audio.delta``: base64 µ-law, in delivery order, paced in real time."""

    payload: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """``session.input_transcript.delta`` (``caller``) or ``session.output_transcript.delta``: a fragment
    with its place on the session timeline (ms from the session's start)."""

    caller: bool
    delta: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Started:
    """``session.started``: the session is configured; it ends by ``expires_at`` (Unix seconds)."""

    session_id: str
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Closed:
    """``session.closed``: ``reason`` (``close_requested``, ``expired``, ``content``, ``remote_hangup``,
    ``connection_lost``) and the billed seconds."""

    reason: str
    seconds: float | None


@dataclass(frozen=True, slots=True)
class Usage:
    """``session.usage.updated``: the billed seconds so far (a total, not an increment)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Backend:
    """``response.event``: one event of the Responses backend's stream, for ``delegation_id``.

    ``kind`` is the nested event's type; ``call`` a completed function call
    (``response.output_item.done``); ``status`` a finished response's status (``response.completed``,
    ``.failed``, ``.incomplete``, ``.cancelled``)."""

    delegation_id: str | None
    kind: str
    call: FunctionCall | None = None
    call_status: str | None = None
    """The function call item's ``status`` (only ``completed`` ones are run)."""
    status: str | None = None


@dataclass(frozen=True, slots=True)
class LiveError:
    """``error``: ``code`` such as ``unknown_parameter`` or ``function_call_outputs_required``."""

    type: str | None
    code: str | None
    message: str | None
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A server event the relay does not act on (logged at DEBUG)."""

    type: str


ServerEvent = OutputAudio | Transcript | Started | Closed | Usage | Backend | LiveError | OtherEvent


_SILENT_HEADS = frozenset(base64.b64encode(bytes(combo)).decode()
                          for combo in itertools.product((0xFF, 0x7F), repeat=3))
"""The base64 of every 3 bytes of µ-law silence: a payload starting otherwise is speech, told without decoding."""


def is_silence(payload: str) -> bool:
    """The payload is µ-law digital silence (0xFF or 0x7F, ±0): the stream the service sends while the voice
    is quiet. Not base64: False. Speech is told from its first 4 characters (0.1 µs); silence is decoded."""
    if payload[:4] not in _SILENT_HEADS:
        return False
    try:
        return not binascii.a2b_base64(payload).strip(b"\xff\x7f")
    except binascii.Error:
        return False


def _seconds(usage: Any) -> float | None:
    seconds = usage.get("seconds") if type(usage) is dict else None
    return float(seconds) if type(seconds) in (int, float) else None


def _transcript(event: dict[str, Any], caller: bool) -> Transcript:
    kind = str(event["type"])
    start, end = event.get("start_ms"), event.get("end_ms")
    if type(start) is not int or type(end) is not int:
        raise MalformedEvent(kind, "start_ms or end_ms is not an integer")
    return Transcript(caller, text_field(event, "delta", kind), start, end)


def _started(event: dict[str, Any]) -> Started:
    session = event.get("session")
    if type(session) is not dict:
        raise MalformedEvent("session.started", "session is not an object")
    expires = session.get("expires_at")
    return Started(text_field(session, "id", "session.started"), expires if type(expires) is int else None)


def _closed(event: dict[str, Any]) -> Closed:
    return Closed(text_field(event, "reason", "session.closed"), _seconds(event.get("usage")))


def _usage(event: dict[str, Any]) -> Usage:
    seconds = _seconds(event.get("usage"))
    if seconds is None:
        raise MalformedEvent("session.usage.updated", "usage.seconds is not a number")
    return Usage(seconds)


_FINISHED = {"response.completed": "completed", "response.failed": "failed", "response.incomplete": "incomplete",
             "response.cancelled": "cancelled"}


def _backend(event: dict[str, Any]) -> Backend:
    inner = event.get("event")
    if type(inner) is not dict or type(inner.get("type")) is not str:
        raise MalformedEvent("response.event", "event is not an object with a type")
    delegation_id, kind = optional_text(event, "delegation_id"), inner["type"]
    if kind == "response.output_item.done":
        item = inner.get("item")
        if type(item) is not dict:
            raise MalformedEvent("response.event", "response.output_item.done has no item")
        if item.get("type") != "function_call":
            return Backend(delegation_id, kind)
        arguments = item.get("arguments")
        call = FunctionCall(optional_text(item, "call_id") or None, str(item.get("name") or ""),
                            arguments if type(arguments) is str else "")
        return Backend(delegation_id, kind, call, optional_text(item, "status"))
    return Backend(delegation_id, kind, status=_FINISHED.get(kind))


def _error(event: dict[str, Any]) -> LiveError:
    error = event.get("error")
    if type(error) is not dict:
        error = {}
    return LiveError(optional_text(error, "type"), optional_text(error, "code"), optional_text(error, "message"),
                     optional_text(error, "client_event_id") or optional_text(event, "client_event_id"))


def _audio(event: dict[str, Any]) -> OutputAudio:
    payload = event.get("delta")
    if type(payload) is str:
        return OutputAudio(payload)
    raise MalformedEvent("session.output_audio.delta", "delta is not a string")


_PARSERS: dict[str, Any] = {
    "session.output_audio.delta": _audio,
    "session.output_transcript.delta": lambda e: _transcript(e, caller=False),
    "session.input_transcript.delta": lambda e: _transcript(e, caller=True),
    "session.started": _started,
    "session.closed": _closed,
    "session.usage.updated": _usage,
    "response.event": _backend,
    "error": _error,
}


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """One GPT-Live server event as a small typed object; checks only what the relay reads.

    Raises:
        MalformedEvent: not JSON, not an object, or a known type with a field the relay needs missing or
            of the wrong type.
    """
    return parse_event(raw, _PARSERS, OtherEvent)

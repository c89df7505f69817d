"""Sans-I/O OpenAI Realtime (GA): client event builders, server event parsers, the response slot,
playback accounting, and the phone leg interface every telephony dialect implements.

Nothing here touches a socket or a clock: callers pass ``now`` (monotonic seconds) in, and get
strings, dicts and small typed objects out. The Realtime protocol's wire names are written here
once; each phone network's are in its own dialect module (``phone_twilio.py``).

Sources: the ``openai`` package's ``openai.types.realtime`` event models (GA interface); OpenAI
"Realtime conversations" guide (one active response per conversation; truncating on barge-in);
Twilio Media Streams and Plivo Audio Streams docs for the phone side.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from audio import BYTES_PER_MS, SAMPLE_RATE_HZ

# --- Phone leg events (what every telephony dialect yields) ---------------------------------


@dataclass(frozen=True, slots=True)
class PhoneStart:
    """The phone stream has started (Twilio ``start``; Plivo ``start``)."""

    stream_sid: str
    """The stream's id (Twilio ``streamSid``, Plivo ``streamId``)."""
    call_sid: str
    """The call's id (Twilio ``callSid``, Plivo ``callId``); "" when the network sent none."""
    custom_parameters: dict[str, str]
    """What the webhook answer attached to the stream (TwiML ``<Parameter>``s)."""


@dataclass(slots=True)  # not frozen: built per frame, and frozen construction costs 0.55 µs against 0.2 µs
class PhoneAudio:
    """One frame of caller audio: base64 µ-law 8 kHz, usually 20 ms (160 bytes, 216 characters)."""

    payload: str


@dataclass(slots=True)  # not frozen: built per frame, and frozen construction costs 0.55 µs against 0.2 µs
class PhoneMarkPlayed:
    """The phone reached a mark the relay sent after some audio (Twilio ``mark`` echo, Plivo
    ``playedStream``). Twilio also echoes marks discarded by a ``clear``; ``Playback`` tells them
    apart by generation."""

    name: str


@dataclass(frozen=True, slots=True)
class PhoneDtmf:
    """The caller pressed a key (``0``-``9``, ``*``, ``#``, ``A``-``D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class PhoneStop:
    """The phone network ended the stream (Twilio ``stop``): the caller hung up."""


PhoneEvent = PhoneStart | PhoneAudio | PhoneMarkPlayed | PhoneDtmf | PhoneStop


def decode_json_object(raw: str | bytes) -> dict[str, Any]:
    """One peer frame that must hold a JSON object (phone or Realtime), parsed by ``orjson``
    (UTF-8 bytes as they came off the socket, or a str).

    Raises:
        ValueError: ``non-JSON frame`` (invalid UTF-8 and nesting over 1024 deep included) or
            ``non-object frame``.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("non-JSON frame") from None
    if type(value) is not dict:
        raise ValueError("non-object frame")
    return value


_PEER_ID = re.compile(r"[!-~]{1,64}")


def peer_id(value: Any) -> str | None:
    """An identifier a peer sent (``streamSid``, ``callId``...) when it is 1-64 printable ASCII
    characters, else None: a newline in it would forge log lines, and a 30 KB one would be logged
    and echoed in every message."""
    return value if type(value) is str and _PEER_ID.fullmatch(value) else None


def inner_text(event: dict[str, Any], outer: str, inner: str) -> str | None:
    """``event[outer][inner]`` when it is a string, else None (``media.payload``, ``dtmf.digit``)."""
    body = event.get(outer)
    value = body.get(inner) if type(body) is dict else None
    return value if type(value) is str else None


class MalformedFrame(ValueError):
    """A phone frame a dialect cannot use. ``kind`` groups it for one warning per kind and call;
    ``message`` says what was dropped."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# --- The phone leg (what every dialect offers the bridge) ----------------------------------


class PhoneLeg(Protocol):
    """One phone call's media websocket, in the bridge's terms (``phone_twilio.TwilioLeg``).

    Modelled on livekit's transport-neutral ``AudioOutput`` and pipecat's one serializer per
    dialect: the leg parses and builds its network's messages; the bridge never sees them.
    """

    network: str
    """The phone network's name for logs and reasons (``twilio``)."""

    def __aiter__(self) -> AsyncIterator[PhoneEvent]:
        """Phone events in arrival order until the socket closes; unusable frames are dropped by
        the leg with one warning per kind."""
        ...

    async def send_audio(self, payload: str) -> None:
        """Queue base64 µ-law 8 kHz audio (any length) for playback in the order sent."""
        ...

    async def send_mark(self, name: str) -> None:
        """Send a mark the phone reports back (``PhoneMarkPlayed``) when the audio before it has played."""
        ...

    async def clear(self) -> None:
        """Drop every byte of audio queued at the phone."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close the media socket with a websocket close ``code``; this hangs up the call."""
        ...

    @property
    def closed(self) -> bool:
        """True once the socket is closed by either side."""
        ...

    @property
    def write_stalled(self) -> bool:
        """True while sends are waiting for the phone to take what was sent before (it is not
        reading); checked once a second, never per frame."""
        ...

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued for the phone and not yet taken, for the log."""
        ...


# --- OpenAI Realtime (GA) client events ------------------------------------------------


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
) -> dict[str, Any]:
    """The telephony session: µ-law (``audio/pcmu``) in and out, audio output only.

    Args:
        instructions: the system prompt.
        voice: ``audio.output.voice`` (e.g. ``cedar``); fixed once the model has spoken.
        turn_detection: ``server_vad`` or ``semantic_vad`` object, or None for no VAD.
        noise_reduction: ``near_field``, ``far_field``, or None for off.
        transcription_model: caller transcription model, or None for none.
        tools: function tool definitions (``{"type": "function", "name", ...}``).
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
    return session


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


# --- OpenAI Realtime (GA) server events -----------------------------------------------------


class MalformedEvent(ValueError):
    """A server event the relay cannot use: not JSON, not an object, or a known type whose fields
    are missing or of the wrong type. ``kind`` is the event type (or ``json``), for one warning
    per kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """``session.updated``: the service applied a ``session.update``."""

    noise_reduction: str | None
    """``audio.input.noise_reduction.type`` now in force (``off`` when null); None when the event
    does not say."""


@dataclass(slots=True)  # not frozen: built per frame, and frozen construction costs 0.55 µs against 0.2 µs
class AudioDelta:
    """``response.output_audio.delta``: assistant audio, base64 µ-law when the session's output
    format is ``audio/pcmu`` (8 bytes per ms)."""

    response_id: str
    item_id: str
    payload: str


@dataclass(frozen=True, slots=True)
class AudioDone:
    """``response.output_audio.done``: no more audio for ``item_id`` (sent for cancelled
    responses too)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """``input_audio_buffer.speech_started``: the service's VAD heard the caller start speaking."""

    item_id: str | None


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """``input_audio_buffer.speech_stopped``: the caller's turn ended (its item is committed next)."""

    item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """``input_audio_buffer.committed``: the caller's turn is a user item in the conversation, in
    this order (its transcript, when transcription is on, comes later)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    """``conversation.item.input_audio_transcription.completed``: what the caller said in
    ``item_id`` (asynchronous: it may arrive after the assistant has answered)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class CallerTranscriptDelta:
    """``conversation.item.input_audio_transcription.delta``: more of what the caller said in ``item_id``."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """``response.output_audio_transcript.delta``: more of the text of assistant item ``item_id``."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    """``response.output_audio_transcript.done``: the whole text of assistant item ``item_id`` as
    generated (a barge-in may have cut what the caller heard of it)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """``response.created``: a response is now active (one at a time per conversation)."""

    response_id: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A ``function_call`` output item of a completed response."""

    call_id: str | None
    """None when the service sent none (such a call cannot be answered)."""
    name: str
    arguments: str
    """The arguments as the model wrote them: a JSON string, not yet parsed."""


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done``: the active response ended."""

    response_id: str
    status: str
    """``completed``, ``cancelled``, ``failed`` or ``incomplete``."""
    function_calls: tuple[FunctionCall, ...]
    """Every ``function_call`` item in output order; empty unless ``completed`` (the calls of a
    response cut off before it finished are not to be run)."""
    spoke: bool
    """The response holds an assistant audio message."""


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
    """A server event the bridge does not act on (logged at DEBUG)."""

    type: str


ServerEvent = (
    SessionUpdated
    | AudioDelta
    | AudioDone
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | CallerTranscript
    | CallerTranscriptDelta
    | TranscriptDelta
    | TranscriptDone
    | ResponseCreated
    | ResponseDone
    | RealtimeError
    | OtherEvent
)


def b64_decoded_len(payload: str) -> int:
    """Bytes encoded by a padded base64 string, without decoding it (µ-law: 8 bytes per ms)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def _text(event: dict[str, Any], key: str, kind: str) -> str:
    value = event.get(key)
    if type(value) is not str:
        raise MalformedEvent(kind, f"{key} is not a string")
    return value


def _optional_text(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    return value if type(value) is str else None


def _object(event: dict[str, Any], key: str, kind: str) -> dict[str, Any]:
    value = event.get(key)
    if type(value) is not dict:
        raise MalformedEvent(kind, f"{key} is not an object")
    return value


def _audio_delta(event: dict[str, Any]) -> AudioDelta:
    # The hot path (tens of deltas per second per call): three type checks, no helper calls.
    response_id, item_id, payload = event.get("response_id"), event.get("item_id"), event.get("delta")
    if type(response_id) is str and type(item_id) is str and type(payload) is str:
        return AudioDelta(response_id, item_id, payload)
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
    status = _text(response, "status", kind)
    output = response.get("output") or []
    if type(output) is not list:
        raise MalformedEvent(kind, "response.output is not a list")
    calls, spoke = [], False
    for item in output:
        if type(item) is not dict:
            raise MalformedEvent(kind, "an output item is not an object")
        if item.get("type") == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            calls.append(FunctionCall(_optional_text(item, "call_id") or None, str(name or ""),
                                      arguments if type(arguments) is str else ""))
        elif item.get("type") == "message":
            content = item.get("content") or ()
            spoke = spoke or any(type(part) is dict and part.get("type") == "output_audio" for part in content)
    return ResponseDone(_text(response, "id", kind), status, tuple(calls) if status == "completed" else (), spoke)


def _error(event: dict[str, Any]) -> RealtimeError:
    error = event.get("error")
    if type(error) is not dict:
        error = {}
    return RealtimeError(
        _optional_text(error, "type"),
        _optional_text(error, "code"),
        _optional_text(error, "message"),
        _optional_text(error, "event_id"),
    )


def _item_text(event_type: type, key: str) -> Callable[[dict[str, Any]], Any]:
    """The parser of a transcript event: ``event_type(item_id, <key>)``, both strings."""

    def parse(event: dict[str, Any]) -> Any:
        kind = str(event["type"])
        return event_type(_text(event, "item_id", kind), _text(event, key, kind))

    return parse


_PARSERS: dict[str, Any] = {
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda e: AudioDone(_text(e, "item_id", "response.output_audio.done")),
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": lambda e: SpeechStarted(_optional_text(e, "item_id")),
    "input_audio_buffer.speech_stopped": lambda e: SpeechStopped(_optional_text(e, "item_id")),
    "input_audio_buffer.committed": lambda e: InputCommitted(_text(e, "item_id", "input_audio_buffer.committed")),
    "conversation.item.input_audio_transcription.completed": _item_text(CallerTranscript, "transcript"),
    "conversation.item.input_audio_transcription.delta": _item_text(CallerTranscriptDelta, "delta"),
    "response.output_audio_transcript.delta": _item_text(TranscriptDelta, "delta"),
    "response.output_audio_transcript.done": _item_text(TranscriptDone, "transcript"),
    "response.created": lambda e: ResponseCreated(_text(_object(e, "response", "response.created"), "id",
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
    try:
        event = decode_json_object(raw)
    except ValueError as exc:
        raise MalformedEvent("json", str(exc)) from None
    kind = event.get("type")
    parser = _PARSERS.get(kind) if type(kind) is str else None
    if parser is None:
        return OtherEvent(str(kind))
    result: ServerEvent = parser(event)
    return result


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


# --- Playback accounting ----------------------------------------------------------------


@dataclass(slots=True)
class _ItemAudio:
    start: int
    """Offset of the item's first byte in the outbound stream (bytes since the call began)."""
    sent: int = 0
    """µ-law bytes of this item sent to the phone."""
    closed: bool = False
    """The model finished this item's audio (``response.output_audio.done``)."""

    def heard_ms(self, played: int) -> int:
        """Milliseconds of this item heard when the stream has played up to offset ``played``,
        clamped to what was sent for it."""
        return min(max(played - self.start, 0), self.sent) // BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Truncation:
    """Where to cut one assistant item after a barge-in."""

    item_id: str
    audio_end_ms: int
    """Milliseconds of the item the caller heard, clamped to the audio sent for it."""
    sent_ms: int
    """Milliseconds of the item sent to the phone by the cut (``audio_end_ms`` of them were heard)."""


class Playback:
    """What the phone has played of the assistant's audio, per item.

    The outbound audio is one stream of µ-law bytes; every byte has an offset (bytes since
    the call began). After each media message the relay sends a mark named
    ``"<generation>.<end offset>"``. An echo of a mark of the current generation means the
    phone has played up to that offset at the echo's arrival; between echoes the play
    position advances with the wall clock at 8 bytes per ms (playback is real time),
    anchored at the last echo or at the moment audio was sent into an empty queue, and
    never past what was sent. ``clear`` starts a new generation, so the echoes Twilio sends
    for the cleared marks (Twilio docs: marks are echoed on clear) never count as played.

    Plivo's checkpoints are marks by another name (``playedStream`` answers one once the audio
    before it has played; none is answered after ``clearAudio``).

    Each item records the offset of its first byte, so later responses are measured from
    their own start, never from the first response's.
    """

    MAX_ITEMS = 16
    """Items remembered; older ones are long played out."""
    MAX_PENDING_MARKS = 4096
    """Marks awaiting their echo (about 7 minutes of deltas); past it the oldest is forgotten, so a
    phone that never echoes cannot grow the relay's memory."""
    MAX_MARK_DIGITS = 15

    def __init__(self) -> None:
        self.generation = 0
        self.sent_total = 0
        """Offset one past the last byte sent to the phone."""
        self._anchor_offset = 0
        self._anchor_time = 0.0
        self._pending_marks: deque[int] = deque()
        """End offsets of this generation's marks not yet echoed, oldest first."""
        self._pending_set: set[int] = set()
        """The same offsets, for an O(1) check of each echo."""
        self._items: OrderedDict[str, _ItemAudio] = OrderedDict()

    def played(self, now: float) -> int:
        """Estimated stream offset the phone has played up to at ``now`` (bytes)."""
        elapsed = round((now - self._anchor_time) * SAMPLE_RATE_HZ)
        return min(self.sent_total, self._anchor_offset + max(elapsed, 0))

    def is_playing(self, now: float) -> bool:
        """True while assistant audio is queued at the phone (an echo is still due, or the
        clock estimate has not reached the end of what was sent)."""
        return bool(self._pending_marks) or self.played(now) < self.sent_total

    @property
    def marks_pending(self) -> bool:
        """True until the phone has echoed every mark of the current generation (everything
        sent has been played, or was cleared)."""
        return bool(self._pending_marks)

    def unplayed_ms(self, now: float) -> int:
        """Estimated milliseconds of sent audio the phone has not played yet at ``now``."""
        return (self.sent_total - self.played(now)) // BYTES_PER_MS

    def on_audio_sent(self, item_id: str, nbytes: int, now: float) -> str:
        """Account ``nbytes`` µ-law bytes of ``item_id`` just sent to the phone.

        Returns:
            The name of the mark to send right after that media message.
        """
        if not self._pending_marks and self.played(now) >= self.sent_total:
            # The queue had run dry: this audio starts playing now.
            self._anchor_offset, self._anchor_time = self.sent_total, now
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _ItemAudio(start=self.sent_total)
            while len(self._items) > self.MAX_ITEMS:
                self._items.popitem(last=False)
        item.sent += nbytes
        self.sent_total += nbytes
        self._pending_marks.append(self.sent_total)
        self._pending_set.add(self.sent_total)
        if len(self._pending_marks) > self.MAX_PENDING_MARKS:
            self._pending_set.discard(self._pending_marks.popleft())
        return f"{self.generation}.{self.sent_total}"

    def on_mark(self, name: str, now: float) -> bool:
        """Account a mark echo from the phone.

        Returns:
            True when it proves playback up to its offset; False for an echo of a cleared
            generation or a name this relay did not make (ignored).
        """
        generation, _, offset_text = name.partition(".")
        if (
            generation != str(self.generation)
            or not offset_text.isascii()  # "²".isdigit() is true, and int() refuses it
            or not offset_text.isdigit()
            or len(offset_text) > self.MAX_MARK_DIGITS
        ):
            return False
        offset = int(offset_text)
        if offset not in self._pending_set:
            return False
        while self._pending_marks and self._pending_marks[0] <= offset:  # echoes come in order
            self._pending_set.discard(self._pending_marks.popleft())
        self._anchor_offset, self._anchor_time = offset, now
        return True

    def forget_items(self) -> None:
        """The Realtime session was replaced: its items are not in the new one, so a later barge-in
        truncates none of them (what is queued at the phone still plays and is still accounted)."""
        self._items.clear()

    def close_item(self, item_id: str) -> None:
        """The model will send no more audio for ``item_id`` (``response.output_audio.done``)."""
        item = self._items.get(item_id)
        if item is not None:
            item.closed = True

    def heard_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of ``item_id`` played by ``now`` (0 for an unknown item)."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        return item.heard_ms(self.played(now))

    def barge_in(self, now: float) -> list[Truncation]:
        """The phone's queue is being cleared at ``now``: close the generation.

        Returns:
            One truncation per item with audio not yet played or still being generated: the
            item being heard at its heard position, items queued behind it at 0 ms. Items
            fully played and closed need none.
        """
        played = self.played(now)
        cuts = [
            Truncation(item_id, item.heard_ms(played), item.sent // BYTES_PER_MS)
            for item_id, item in self._items.items()
            if item.start + item.sent > played or not item.closed
        ]
        self.generation += 1
        self._pending_marks.clear()
        self._pending_set.clear()
        self._anchor_offset, self._anchor_time = self.sent_total, now
        self._items.clear()
        return cuts

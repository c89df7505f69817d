"""What a call tells the world: its typed events for observers, how it ended, and the process's call counters.

Observers (``ops.console``, ``ops.metrics``) import this module only, never the call.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from bridge.latency import LatencyData
from model.prices import TokenUsage


class CallEventKind(enum.StrEnum):
    """What a ``CallEvent`` reports; its ``data`` is the TypedDict named for each."""

    STARTED = "call.started"
    """``StartedData``."""
    ENDED = "call.ended"
    """``EndedData``."""
    BARGE_IN = "barge_in"
    """``BargeInData``."""
    TOOL_STARTED = "tool.started"
    """``ToolStartedData``."""
    TOOL_FINISHED = "tool.finished"
    """``ToolFinishedData``."""
    MUSIC_STARTED = "music.started"
    """No data."""
    MUSIC_STOPPED = "music.stopped"
    """No data."""
    DTMF = "dtmf"
    """``DtmfData``."""
    REALTIME_ERROR = "realtime.error"
    """``ModelErrorData``: an error the voice model's service reported."""
    TRANSCRIPT = "transcript"
    """``TranscriptData``: a turn's text is known."""
    CALLER_TURN = "caller.turn"
    """``CallerTurnData``: the caller's turn takes its place in the conversation now, its text comes later."""
    TRANSCRIPT_DELTA = "transcript.delta"
    """``TranscriptDeltaData``: more text of a turn in progress."""
    SESSION_REPLACED = "session.replaced"
    """``SessionReplacedData``: the call moved to a new model session."""


class StartedData(TypedDict):
    network: str
    caller: str
    """Masked as in the logs (``+*******0100``)."""
    group: str
    call_sid: str
    direction: str
    """``inbound`` or ``outbound``."""
    number: str
    """The caller's whole E.164 number, for the records (which mask it unless told not to); the console drops it."""


class EndedData(TypedDict):
    reason: str
    """The end reason's text (``twilio stop``, ``end_call: the caller said goodbye``)."""
    kind: str
    """The ``EndReason`` value (``phone stop``, ``end_call``): a bounded label."""
    failed: bool
    duration_s: float
    counts: dict[str, Any]
    """``CallCounts`` as a dict (``usage``: tokens by kind)."""
    latency: LatencyData
    """How long the caller waited for the first word and for each answer (``bridge.latency``)."""
    model: str
    """The voice model that served the call."""
    cost_usd: float | None
    """What the model's sessions cost, from the price table (``model.prices``); None for a model it does not price."""


class TruncationData(TypedDict):
    item_id: str
    audio_end_ms: int
    sent_ms: int


class BargeInData(TypedDict):
    truncations: list[TruncationData]


class ToolStartedData(TypedDict):
    name: str
    call_id: str
    arguments: str
    """The model's JSON string, unparsed."""


class ToolFinishedData(TypedDict):
    name: str
    call_id: str
    ok: bool
    duration_ms: float
    error: str | None


class DtmfData(TypedDict):
    digit: str


class ModelErrorData(TypedDict):
    type: str | None
    code: str | None
    message: str | None


class TranscriptData(TypedDict):
    role: str
    """``user`` (the caller) or ``assistant``."""
    item_id: str
    text: str
    """For a cut assistant turn, the part heard."""
    cut: bool
    unheard: str
    """The words of a cut turn the caller did not hear (sent again when the whole text arrives)."""


class CallerTurnData(TypedDict):
    item_id: str


class TranscriptDeltaData(TypedDict):
    role: str
    item_id: str
    delta: str


class SessionReplacedData(TypedDict):
    cause: str
    """``rollover``, ``expired`` or ``dropped``."""
    replayed: int
    """Turns replayed into the new session."""
    gap_ms: float
    """Caller audio held meanwhile."""


EventData = (
    StartedData
    | EndedData
    | BargeInData
    | ToolStartedData
    | ToolFinishedData
    | DtmfData
    | ModelErrorData
    | TranscriptData
    | CallerTurnData
    | TranscriptDeltaData
    | SessionReplacedData
    | dict[str, Any]
)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something that happened in one call, for observers (console, metrics)."""

    kind: CallEventKind
    stream_sid: str
    at: float
    """Wall-clock time, seconds since the epoch."""
    data: EventData


CallEventHook = Callable[[CallEvent], None]
"""Receives every event of a call. It must not block (put into a bounded queue and return); an exception
it raises is logged once per call and never reaches the call."""


class Publisher:
    """One call's events to its hook: ``publish(kind, **data)``. Nothing is built when no one listens; an
    exception from the hook is logged once and never reaches the call."""

    def __init__(self, hook: CallEventHook | None, log: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self._hook = hook
        self._log = log
        self._warned = False
        self.stream_sid = ""
        """The call's stream, once the phone has started it."""

    def __call__(self, what: CallEventKind, /, **data: Any) -> None:
        if self._hook is None:
            return
        try:
            self._hook(CallEvent(what, self.stream_sid, time.time(), data))  # type: ignore[arg-type]
        except Exception:
            if not self._warned:
                self._warned = True
                self._log.exception("call event hook failed on %s", what)


class EndReason(enum.StrEnum):
    """Why a call ended: a closed set, for metrics labels; ``Ending.text`` adds the detail."""

    NO_START = "no start"
    INVALID_TOKEN = "invalid stream token"
    RESTRICTED = "restricted caller"
    PHONE_STOP = "phone stop"
    """The network ended the stream: the caller hung up."""
    PHONE_CLOSED = "phone closed"
    PHONE_HUNG_UP = "phone hung up"
    """The caller's socket went while audio was being sent."""
    PHONE_NOT_READING = "phone not reading"
    PHONE_SILENT = "phone silent"
    END_CALL = "end_call"
    """The assistant hung up (the ``end_call`` tool) after its goodbye."""
    CLOSING_LINE = "closing line"
    """The server ended the call with a spoken line (a restart's drain)."""
    VOICEMAIL = "voicemail"
    """An outbound call reached an answering machine: a message was left, or it hung up (``VOICEMAIL``)."""
    TRANSFERRED = "transferred"
    """The caller was put through to a person (``transfer_call``)."""
    SHUTTING_DOWN = "shutting down"
    MODEL_UNAVAILABLE = "model unavailable"
    """No model session could be had at the start."""
    MODEL_LOST = "model lost"
    """The model session ended mid-call and no new one could be had."""
    MODEL_CLOSED = "model closed"
    """The model session ended during the goodbye, or again right after a reconnect."""
    MODEL_SILENT = "model silent"
    """The model never began the turn it was asked for."""
    INTERNAL_ERROR = "internal error"


@dataclass(frozen=True, slots=True)
class Ending:
    """How a call is ending: the reason, its text for logs and the console, and how the phone is closed."""

    reason: EndReason
    text: str
    """The reason with its detail (``twilio stop``, ``realtime closed (1011)``)."""
    failed: bool = False
    """Counted in ``Stats.errors``."""
    close_code: int | None = None
    """The phone websocket's close code (None: 1000, or what the call already chose)."""


class HangUp(Exception):
    """Ends the call from inside one of its tasks."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.text)
        self.ending = ending


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended (``Call.run``'s result)."""

    reason: str
    """``Ending.text``."""
    failed: bool
    """Counted in ``Stats.errors``."""
    duration_s: float
    kind: EndReason = EndReason.INTERNAL_ERROR


@dataclass(slots=True)
class Stats:
    """Process-wide call counters (``/health``)."""

    started: float = field(default_factory=time.monotonic)
    active: int = 0
    total: int = 0
    errors: int = 0
    """Calls that ended on a failure: the model unreachable, unconfigured or lost mid-call, or a bug."""
    upstream_lost: int = 0
    """Calls that ended with the apology: no model session could be had (at the start or after a drop)."""
    session_replacements: int = 0
    """Model sessions replaced mid-call (rollovers and reconnects)."""


@dataclass(slots=True)
class CallCounts:
    """Per-call counters for the end-of-call log line."""

    frames_in: int = 0
    frames_out: int = 0
    marks_acked: int = 0
    barge_ins: int = 0
    responses: int = 0
    realtime_errors: int = 0
    sessions: int = 0
    """Model sessions the call used (more than one after a rollover or a reconnect)."""
    billed_s: float = 0.0
    """Session seconds the voice API bills for, over every session of the call (GPT-Live ``usage.seconds``;
    0 where billing is per token)."""
    usage: TokenUsage = field(default_factory=TokenUsage)
    """Tokens by kind over every session of the call (Realtime; empty where billing is per second)."""

"""The model session interface: what a call asks of a voice model, whichever OpenAI voice API serves it.

A ``ModelSession`` is one open session of one voice API (``model.realtime.RealtimeSession`` for the
Realtime API; a GPT-Live session implements the same interface). The call opens it, feeds it the
caller's audio, reads typed model events from it, asks the model to speak, answers its tool calls,
tells it what the caller heard where the API needs that, and closes it. The call names no wire string
of any voice API: those are written once, in each implementation's protocol module.

How the two APIs differ, and how this interface absorbs it (``shared/docs/gpt-live-telnyx-outbound.md`` §2):

- Realtime has a response lifecycle (``response.create``/``created``/``done``, one active response per
  conversation) and item ids; GPT-Live's voice has none (the model takes its own turns), only its
  delegated tool backend does. ``ResponseStarted``/``ResponseDone`` are the assistant's turn
  boundaries where the API has them; a GPT-Live session reports a turn's end when its output
  transcript falls quiet, and a tool backend's response as ``ResponseDone`` with the calls.
- Realtime's server VAD says when the caller starts and stops speaking (``CallerSpeechStarted``,
  ``CallerSpeechStopped``); GPT-Live has no speech events, and its sessions infer them from the
  caller's transcript deltas or do not send them.
- Realtime answers a tool call only when asked again (``response.create``); GPT-Live's backend
  continues by itself once the outputs are in, and its voice speaks the result.
- Realtime must be told what the caller heard after a barge-in (``conversation.item.truncate``):
  ``truncates`` is True and ``interrupted`` sends it. GPT-Live handles barge-in itself: ``truncates``
  is False and ``interrupted`` sends nothing.

Sources: the ``openai`` package's ``openai.types.realtime`` and ``openai.types.live`` event models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from config import VoiceApi as VoiceApi  # the interface names the API a session speaks
from model.prices import TokenUsage

if TYPE_CHECKING:
    from redact import CallLog


class ModelUnavailable(Exception):
    """No configured session could be had: the service could not be reached, refused the handshake,
    closed, or did not confirm the configuration in time. The message says why, for the log."""


class SessionClosed(ConnectionError):
    """A send on a model session's socket that is closing or closed."""


class ModelRefused(Exception):
    """The service refused or did not confirm a mid-call change (a noise reduction switch); the message
    says which, for the tool's answer."""


# --- What the call tells the session ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Truncation:
    """Where a barge-in cut one assistant item (``PhoneOutput.clear``)."""

    item_id: str
    audio_end_ms: int
    """Milliseconds of the item the caller heard, clamped to the audio sent for it."""
    sent_ms: int
    """Milliseconds of the item sent to the phone by the cut (``audio_end_ms`` of them were heard)."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The answer to one function call: ``output`` is a JSON string."""

    call_id: str
    output: str


# --- What the session tells the call (model events) ------------------------------------------


@dataclass(slots=True)  # not frozen: built per delta, and frozen construction costs 0.55 µs against 0.2 µs
class AssistantAudio:
    """Assistant audio: base64 µ-law 8 kHz (8 bytes per ms), any length, to be played in order."""

    item_id: str
    """The assistant item it belongs to (Realtime ``item_id``; a session-made id per turn elsewhere)."""
    payload: str


@dataclass(frozen=True, slots=True)
class AssistantAudioDone:
    """No more audio will come for ``item_id`` (Realtime ``response.output_audio.done``)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class AssistantTranscriptDelta:
    """More of the text of assistant item ``item_id``."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class AssistantTranscriptDone:
    """The whole text of assistant item ``item_id`` as generated (a barge-in may have cut what the caller
    heard of it)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    """The caller started speaking (Realtime's server VAD); a barge-in when assistant audio is queued."""


@dataclass(frozen=True, slots=True)
class CallerSpeechStopped:
    """The caller stopped speaking."""


@dataclass(frozen=True, slots=True)
class CallerTurn:
    """The caller's turn ``item_id`` is in the conversation, in this order (its text comes later)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class CallerTranscriptDelta:
    """More of what the caller said in ``item_id``."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class CallerTranscriptDone:
    """What the caller said in ``item_id`` (it may arrive after the assistant has answered)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """The assistant began a turn (Realtime ``response.created``)."""

    response_id: str
    asked: bool
    """It answers the call's own ``respond`` (False: the model started it on its own, as VAD does)."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call the model made, to be answered once (``answer_tools``)."""

    call_id: str | None
    """None when the service sent none (such a call cannot be answered)."""
    name: str
    arguments: str
    """The arguments as the model wrote them: a JSON string, not yet parsed."""


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The assistant's turn ended (Realtime ``response.done``)."""

    response_id: str
    status: str
    """``completed``, ``cancelled``, ``failed`` or ``incomplete``."""
    function_calls: tuple[FunctionCall, ...]
    """Its function calls in order; empty unless ``completed`` (a cut-off turn's calls are not run)."""
    spoke: bool
    """The turn held assistant audio."""
    usage: TokenUsage | None = None
    """Its ``usage``: tokens by kind (None when the service sent none)."""


@dataclass(frozen=True, slots=True)
class ModelError:
    """The service reported an error (most leave the session usable)."""

    type: str | None
    code: str | None
    message: str | None
    harmless: bool = False
    """Expected in normal operation (a cancel that raced the response's end): counted, not warned about."""


ModelEvent = (
    AssistantAudio
    | AssistantAudioDone
    | AssistantTranscriptDelta
    | AssistantTranscriptDone
    | CallerSpeechStarted
    | CallerSpeechStopped
    | CallerTurn
    | CallerTranscriptDelta
    | CallerTranscriptDone
    | ResponseStarted
    | ResponseDone
    | ModelError
)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a session ended."""

    code: int | None
    """The websocket close code (1006 for a dropped connection, a missed pong or a deaf service)."""
    reason: str
    """The service's close reason, or what the relay saw."""
    expired: bool
    """The service ended it at its time limit (Realtime ``session_expired`` or close 1001): a replacement
    is due, not an apology."""


class ModelSession(Protocol):
    """One session of one voice API, from ``open`` to ``close``.

    Sends never raise for a session that has just closed: the event is dropped, iteration ends, and
    ``end`` says how (the call then replaces the session or ends). Caller audio raises
    ``SessionClosed`` instead, so the call can hold it for the next session.
    """

    api: VoiceApi
    truncates: bool
    """The API must be told what the caller heard after a barge-in (Realtime); False where the model
    handles barge-in itself (GPT-Live)."""
    paced_by_input: bool
    """The service's timeline moves with the input audio (GPT-Live: appended context is taken up as input frames
    arrive), so silence is sent while no caller audio comes; False for Realtime."""

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        """Connect and configure (Realtime ``session.update`` → ``session.updated``; GPT-Live
        ``session.start`` → ``session.started``). Raises ModelUnavailable."""
        ...

    def __aiter__(self) -> AsyncIterator[ModelEvent]:
        """Model events in arrival order until the session ends; malformed ones are dropped with one
        warning per kind."""
        ...

    async def send_audio(self, payload: str) -> None:
        """Caller audio: base64 µ-law 8 kHz as the phone sent it (the hot path, 50 a second). Raises
        SessionClosed on a closed session."""
        ...

    async def add_note(self, text: str) -> None:
        """Context the caller did not say, for the model's next turn (Realtime: a system message;
        GPT-Live: an instructions append)."""
        ...

    def replay(self, intro: str, turns: Sequence[tuple[str, str]]) -> None:
        """Before ``open``: seed a replacement session with the conversation so far, ``intro`` then
        ``(role, text)`` turns (``user`` or ``assistant``). Realtime sends them as conversation items once
        configured; GPT-Live puts them in ``session.start``'s ``input`` (its context is append-only)."""
        ...

    async def respond(self, instruction: str | None = None) -> None:
        """Ask the model to speak now, or once its current turn ends, following ``instruction`` when given
        (Realtime: a system message, then ``response.create``, one at a time; GPT-Live: a speakable
        context append, or nothing when a tool answer is already making it continue)."""
        ...

    async def answer_tools(self, outputs: Sequence[ToolOutput]) -> None:
        """Answer this session's function calls (all of one turn's at once); ``respond`` follows."""
        ...

    async def interrupted(self, cuts: Sequence[Truncation], cancel: bool) -> None:
        """A barge-in cleared the phone: what the caller heard of each cut item, and (``cancel``)
        whether to stop the turn in progress. Realtime cancels and truncates; GPT-Live sends nothing."""
        ...

    async def set_noise_reduction(self, mode: str) -> None:
        """Switch the input noise reduction (``near_field``, ``far_field``, ``off``) and return once the
        service confirms it. Raises ModelRefused."""
        ...

    @property
    def noise_reduction(self) -> str:
        """The noise reduction the service has confirmed."""
        ...

    @property
    def busy(self) -> bool:
        """A turn is under way, asked for or queued."""
        ...

    def overdue(self, now: float) -> str | None:
        """Why the service is overdue at monotonic ``now`` (a ``respond`` it has not begun to answer in
        time), for the log; None when it is not. The call then ends as an upstream failure rather
        than leave the caller in silence."""
        ...

    @property
    def end(self) -> SessionEnd:
        """How the session ended (valid once iteration has stopped)."""
        ...

    @property
    def expires_at(self) -> float | None:
        """When the service will end the session (Unix seconds), where it says (GPT-Live's ``expires_at``);
        None where the limit is fixed (Realtime: 60 minutes, ``SESSION_ROLLOVER_S``)."""
        ...

    @property
    def billed_seconds(self) -> float | None:
        """Seconds the service bills for this session so far (GPT-Live ``usage.seconds``); None where
        billing is per token (Realtime)."""
        ...

    @property
    def usage(self) -> TokenUsage:
        """Tokens by kind this session used so far (Realtime: every ``response.done``'s ``usage``); empty where
        billing is per second (GPT-Live)."""
        ...

    async def close(self) -> None:
        """Close the session (safe to call twice)."""
        ...


@dataclass(frozen=True, slots=True)
class CallBrief:
    """What one call's sessions are told beyond the deployment's settings."""

    instructions: str = ""
    """Added after the deployment's instructions (an outbound call's purpose and whom it calls)."""
    tools: tuple[str, ...] = ()
    """Tool names offered to this call only, when the deployment offers them (``transfer_call`` for a caller
    with a transfer destination)."""


class SessionFactory(Protocol):
    """Makes an unopened session for one call: ``(noise_reduction, log)``, the noise reduction to configure
    (``near_field``, ``far_field``, ``off``) and the call's logger, and for a call with its own brief, that
    brief; everything else comes from the deployment's settings (``model.factory``)."""

    def __call__(self, noise_reduction: str, log: CallLog, /, *brief: CallBrief) -> ModelSession: ...

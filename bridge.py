"""The call bridge: one phone call between a phone leg and one OpenAI Realtime session.

The bridge knows the Realtime protocol (through ``protocol``) and the ``PhoneLeg`` interface,
and nothing of any phone network's wire format. A call's flow (``Call.run``):

1. Wait for the phone's start; look the caller up again (a restricted one is refused, 1008).
2. Open the Realtime websocket and send ``session.update`` before anything else; caller audio
   is held until ``session.updated``, then the assistant greets the caller by name.
3. Pump both ways: caller audio upstream unchanged; assistant audio to the phone, a mark after
   each delta (``protocol.Playback`` turns mark echoes into what the caller heard).
4. Barge-in (``_on_speech_started``): clear the phone's queue, truncate what was not heard.
5. One response at a time (``ResponseSlot``); function calls answered by ``ToolRunner`` with
   ``WaitingMusic`` filling a slow tool's silence; ``end_call`` hangs up once the ``Goodbye``
   has played.
6. The Realtime session is replaced without hanging up (``_replace_session``): before its
   60-minute limit at a quiet moment (``SESSION_ROLLOVER_S``), when the service ends it
   (``session_expired``, close 1001), or once when it drops. The new session gets the same
   ``session.update`` and the conversation so far as text (``transcript.Transcript``); caller
   audio is held meanwhile. When no session can be had, the caller hears the bundled apology.
7. Whichever side ends first, the call's tasks are cancelled and awaited, both sockets closed.

Observers (the console, metrics) get ``CallEvent``s through one hook; the bridge imports none.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
from aiohttp import WSCloseCode

import protocol
import tools
from config import AllowedCaller, Config, NoiseReduction, find_caller, mask_number
from model.websocket import RealtimeClient, RealtimeSocket, SessionClosed
from music import WaitingMusic
from ops.tokens import StreamTokens
from protocol import (
    AudioDelta,
    AudioDone,
    CallerTranscript,
    CallerTranscriptDelta,
    FunctionCall,
    InputCommitted,
    MalformedEvent,
    PhoneAudio,
    PhoneDtmf,
    PhoneLeg,
    PhoneMarkPlayed,
    PhoneStart,
    PhoneStop,
    Playback,
    RealtimeError,
    ResponseCreated,
    ResponseDone,
    ResponseSlot,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptDone,
    Truncation,
)
from tools import ToolContext, ToolError
from transcript import Transcript, Turn

logger = logging.getLogger("bridge")

START_TIMEOUT_S = 10.0
"""How long the phone has to send its start after the websocket opens."""
UPSTREAM_CONNECT_TIMEOUT_S = 10.0
"""How long opening the Realtime websocket may take."""
SESSION_TIMEOUT_S = 10.0
"""How long the Realtime service has to answer ``session.update`` with ``session.updated``."""
HELD_AUDIO_FRAMES = 500
"""Caller frames held while the session is being configured: 10 s of 20 ms frames."""
GOODBYE_RESPONSE_TIMEOUT_S = 15.0
"""After ``end_call``, how long the model has to finish its goodbye before the line closes anyway."""
GOODBYE_MARGIN_S = 2.0
"""Safety margin past the goodbye audio's own length for its last mark to come back."""
MIC_CONFIRM_TIMEOUT_S = 4.0
"""How long the service has to confirm a noise reduction switch with ``session.updated``."""
DTMF_SEQUENCE_GAP_S = 1.5
"""Key presses closer together than this are one sequence ("pressed 1, 2, 3 and #")."""
DTMF_MAX_DIGITS = 32
"""A sequence this long is sent at once, however fast the keys come."""
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_PAYLOAD_CHARS = 16_000
"""Largest base64 audio payload sent to the phone in one message (12,000 bytes, 1.5 s): Plivo asks for
at most 16 KB and both networks refuse messages over 64 KB, so a larger delta is split."""
PHONE_SILENCE_S = 30.0
"""A phone sends 50 frames a second; one that sends none for this long is gone (a half-open socket)."""
PHONE_WRITE_TIMEOUT_S = 5
"""Seconds the phone may leave its send buffer full (it has stopped reading) before the call is
dropped: sends wait on it meanwhile, so the relay's memory stays bounded by that buffer."""
RESPONSE_CREATED_TIMEOUT_S = 10.0
"""How long the service has to answer ``response.create`` with ``response.created``."""
RECONNECT_TIMEOUT_S = 5.0
"""How long opening and configuring a replacement session may take while the caller waits."""
RECONNECT_WINDOW_S = 30.0
"""A session that drops within this long of the last reconnect is not reconnected again: the call
ends with the apology (a service failing over and over must not keep a caller on hold)."""
ROLLOVER_QUIET_S = 1.0
"""A planned rollover waits for the call to be this long quiet: no response active or wanted, the
caller not speaking, no tool running, nothing left to play."""
ROLLOVER_RETRY_S = 30.0
"""After a planned rollover could not open a new session, how long until the next try (the old
session goes on meanwhile)."""
APOLOGY_FILE = Path(__file__).resolve().parent / "assets" / "apology.ulaw"
"""What a caller hears when the assistant cannot be reached: raw 8 kHz µ-law, made by
``assets/make_assets.sh``."""
APOLOGY_CHUNK_BYTES = 1600
"""The apology is sent in 200 ms media messages, each followed by a mark."""


# --- Call events (one hook for observers) -------------------------------------------------------


class CallEventKind(enum.StrEnum):
    """What a ``CallEvent`` reports."""

    STARTED = "call.started"
    """data: ``network``, ``caller`` (masked), ``group``, ``call_sid``."""
    ENDED = "call.ended"
    """data: ``reason``, ``failed``, ``duration_s``, ``counts``."""
    BARGE_IN = "barge_in"
    """data: ``truncations``: ``[{"item_id", "audio_end_ms"}]``."""
    TOOL_STARTED = "tool.started"
    """data: ``name``, ``call_id``, ``arguments`` (the model's JSON string)."""
    TOOL_FINISHED = "tool.finished"
    """data: ``name``, ``call_id``, ``ok``, ``duration_ms``, ``error`` (None when ok)."""
    MUSIC_STARTED = "music.started"
    MUSIC_STOPPED = "music.stopped"
    DTMF = "dtmf"
    """data: ``digit``."""
    REALTIME_ERROR = "realtime.error"
    """data: ``type``, ``code``, ``message``."""
    TRANSCRIPT = "transcript"
    """A turn's text is known: data ``role`` (``user``: the caller; ``assistant``), ``item_id``,
    ``text`` (for a cut assistant turn, the part heard), ``cut``, ``unheard`` (the words of a cut
    turn the caller did not hear; sent again when the whole text arrives)."""
    CALLER_TURN = "caller.turn"
    """The caller's turn ``item_id`` is committed: it takes its place in the conversation now, its
    transcript comes later."""
    TRANSCRIPT_DELTA = "transcript.delta"
    """More text of a turn in progress: data ``role``, ``item_id``, ``delta``."""
    SESSION_REPLACED = "session.replaced"
    """The call moved to a new Realtime session: data ``cause`` (``rollover``, ``expired``,
    ``dropped``), ``replayed`` (turns replayed), ``gap_ms`` (caller audio held meanwhile)."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something that happened in one call, for observers (console, metrics)."""

    kind: CallEventKind
    stream_sid: str
    at: float
    """Wall-clock time, seconds since the epoch."""
    data: dict[str, Any]


CallEventHook = Callable[[CallEvent], None]
"""Receives every event of a call. It must not block (put into a bounded queue and return);
an exception it raises is logged once per call and never reaches the call."""


@dataclass(slots=True)
class Stats:
    """Process-wide call counters (``/health``)."""

    started: float = field(default_factory=time.monotonic)
    active: int = 0
    total: int = 0
    errors: int = 0
    """Calls that ended on a failure: Realtime unreachable, unconfigured or lost mid-call, or a bug in
    the relay."""
    upstream_lost: int = 0
    """Calls that ended with the apology: no Realtime session could be had (at the start or after a
    drop)."""
    session_replacements: int = 0
    """Realtime sessions replaced mid-call (rollovers and reconnects)."""


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
    """Realtime sessions the call used (more than one after a rollover or a reconnect)."""


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended."""

    reason: str
    failed: bool
    """Counted in ``Stats.errors``."""
    duration_s: float


class HangUp(Exception):
    """Ends the call from inside one of its tasks; the message is the end reason."""


class UpstreamUnavailable(Exception):
    """No configured Realtime session could be had; the message says why, for the log."""


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The bridge's logger for one call: every line ends with ``stream_sid=...``, and records
    carry ``stream_sid`` and ``call_sid`` as attributes for structured log formats."""

    def __init__(self, logger: logging.Logger, stream_sid: str = "", call_sid: str = "") -> None:
        super().__init__(logger, {"stream_sid": stream_sid, "call_sid": call_sid})
        self._held: dict[str, list[float]] = {}
        """Per kind of line: [when the next one may be written, how many were held back]."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = self.extra
        return f"{msg} stream_sid={self.extra['stream_sid'] or '-'}", kwargs

    def once_a_second(self, level: int, kind: str, msg: str, *args: Any) -> None:
        """Log at most one line of ``kind`` per second for this call; the next line written says
        how many were held back. A peer can send events far faster than anyone can read them."""
        if not self.isEnabledFor(level):
            return
        now = time.monotonic()
        held = self._held.get(kind)
        if held is not None and now < held[0]:
            held[1] += 1
            return
        if held is not None and held[1]:
            msg, args = msg + " (%d more held back in the last second)", (*args, int(held[1]))
        self._held[kind] = [now + 1.0, 0]
        self.log(level, msg, *args)


# --- Key presses (DTMF) ---------------------------------------------------------------------


def keypad_text(digits: str) -> str:
    """What the model is told: ``The caller pressed 5.`` / ``The caller pressed 1, 2, 3 and #.``"""
    if len(digits) == 1:
        return f"The caller pressed {digits}."
    return f"The caller pressed {', '.join(digits[:-1])} and {digits[-1]}."


class KeyPresses:
    """Collects DTMF digits into one sequence, handed on ``DTMF_SEQUENCE_GAP_S`` after the last press
    (or at ``DTMF_MAX_DIGITS``). One owned task waits for the gap; ``close`` cancels and awaits it."""

    def __init__(self, on_sequence: Callable[[str], Awaitable[None]], log: CallLog) -> None:
        self._on_sequence = on_sequence
        self._log = log
        self._digits: list[str] = []
        self._pressed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def press(self, digit: str) -> None:
        """One key press; anything but ``0``-``9``, ``*``, ``#``, ``A``-``D`` is dropped."""
        if digit not in DTMF_DIGITS:
            self._log.once_a_second(logging.WARNING, "dtmf", "dtmf digit that is no key dropped")
            return
        self._digits.append(digit)
        self._pressed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._after_gap(), name="dtmf sequence")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _after_gap(self) -> None:
        try:
            while len(self._digits) < DTMF_MAX_DIGITS:
                self._pressed.clear()
                try:
                    async with asyncio.timeout(DTMF_SEQUENCE_GAP_S):
                        await self._pressed.wait()  # another press: the gap starts again
                except TimeoutError:
                    break
        finally:
            self._task = None
        digits, self._digits = "".join(self._digits[:DTMF_MAX_DIGITS]), self._digits[DTMF_MAX_DIGITS:]
        if self._digits:  # more came in the same instant: they start the next sequence
            self._task = asyncio.create_task(self._after_gap(), name="dtmf sequence")
        try:
            await self._on_sequence(digits)
        except Exception:
            self._log.exception("dtmf sequence failed")


# --- The goodbye ----------------------------------------------------------------------------


class GoodbyeState(enum.StrEnum):
    """Where a call is on its way to hanging up after ``end_call``."""

    NONE = "none"
    """The model has not called ``end_call``."""
    REQUESTED = "requested"
    """``end_call`` ran; the function calls of its response are being answered."""
    ASKED = "asked"
    """The relay asked the model for its goodbye (``response.create`` sent or queued)."""
    SPEAKING = "speaking"
    """The goodbye response is being generated."""
    SPOKEN = "spoken"
    """The goodbye is generated (or was spoken with ``end_call``): hang up once it has played."""


class Goodbye:
    """The goodbye after ``end_call``: an explicit state, one event set when a goodbye begins, and
    one that wakes ``wait_until``'s waiters on every state change and every movement of the phone's
    playback."""

    def __init__(self) -> None:
        self.state = GoodbyeState.NONE
        self.reason: str | None = None
        self.response_id: str | None = None
        self._changed = asyncio.Event()
        self._begun = asyncio.Event()

    def request(self, reason: str, by_model: bool = True) -> bool:
        """``end_call`` ran (``by_model``), or the relay ends the call with a closing line. False when
        a goodbye was already under way (nothing changes)."""
        if self.state is not GoodbyeState.NONE:
            return False
        self.reason = f"end_call: {reason}" if by_model else reason
        self._enter(GoodbyeState.REQUESTED)
        return True

    def after_tools(self, spoke: bool) -> bool:
        """A response's function calls are answered. True: ask the model for a response (its
        next answer, or the goodbye itself).

        Args:
            spoke: the response that made the calls already held assistant audio; after
                ``end_call`` that audio was the goodbye ("Goodbye!" then the call).
        """
        if self.state is GoodbyeState.NONE:
            return True
        if self.state is GoodbyeState.REQUESTED:
            self._enter(GoodbyeState.SPOKEN if spoke else GoodbyeState.ASKED)
            return not spoke
        return False  # the goodbye is already under way: no more answers

    def on_response_created(self, response_id: str, ours: bool) -> None:
        if self.state is GoodbyeState.ASKED and ours:
            self.response_id = response_id
            self._enter(GoodbyeState.SPEAKING)

    def on_response_done(self, response_id: str) -> None:
        if self.state is GoodbyeState.SPEAKING and response_id == self.response_id:
            self._enter(GoodbyeState.SPOKEN)

    def playback_moved(self) -> None:
        """A mark was echoed or the queue cleared: wake the waiter to look again."""
        self._changed.set()

    async def begun(self) -> None:
        """Return once a goodbye is requested. (Its own event: the mark echoes, 50 a second, wake
        only ``wait_until``'s waiters, and there are none until the call is ending.)"""
        await self._begun.wait()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` is true, looking again at each change. Safe to cancel."""
        while not done():
            self._changed.clear()
            await self._changed.wait()

    def _enter(self, state: GoodbyeState) -> None:
        self.state = state
        self._begun.set()
        self._changed.set()


# --- Tool calls -----------------------------------------------------------------------------


class ToolRunner:
    """Runs the model's function calls: each ``call_id`` once, a response's calls concurrently,
    every task owned (``close`` cancels and awaits them)."""

    def __init__(
        self,
        context: ToolContext,
        enabled: tuple[str, ...],
        log: CallLog,
        publish: Callable[..., None],
    ) -> None:
        self.context = context
        self.enabled = enabled
        self.answered_call_ids: set[str] = set()
        """Function ``call_id``s already run (each is answered exactly once)."""
        self.batches_running = 0
        """Responses whose function calls are being run."""
        self._log = log
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = False

    def new_calls(self, calls: Iterable[FunctionCall]) -> list[FunctionCall]:
        """The calls not run before; from now on they count as answered."""
        fresh = [call for call in calls if call.call_id is None or call.call_id not in self.answered_call_ids]
        self.answered_call_ids.update(call.call_id for call in fresh if call.call_id is not None)
        return fresh

    def spawn(self, batch: Coroutine[Any, Any, None]) -> None:
        """Run one response's answering coroutine as an owned task."""
        task = asyncio.create_task(batch, name="tool calls")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def run(self, calls: list[FunctionCall]) -> list[tuple[str, dict[str, Any]]]:
        """Run ``calls`` concurrently; never raises (each failure is an error output).

        Returns:
            ``(call_id, output)`` for each call that can be answered, in call order (a call
            without a ``call_id`` is logged once and skipped).
        """
        answerable = [call for call in calls if call.call_id is not None]
        if len(answerable) < len(calls) and not self._warned:
            self._warned = True
            self._log.warning("function_call without a call_id cannot be answered")
        self.batches_running += 1
        try:
            return list(await asyncio.gather(*(self._run_one(call) for call in answerable)))
        finally:
            self.batches_running -= 1

    async def close(self) -> None:
        """Cancel every tool task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_one(self, call: FunctionCall) -> tuple[str, dict[str, Any]]:
        assert call.call_id is not None
        self._publish(CallEventKind.TOOL_STARTED, name=call.name, call_id=call.call_id, arguments=call.arguments)
        started = time.monotonic()
        output = await tools.run_tool(call.name, call.arguments, self.context, self.enabled)
        duration_ms = (time.monotonic() - started) * 1000
        ok = bool(output.get("ok"))
        error = None if ok else output.get("error")
        self._log.info("tool %s ok=%s in %.0f ms%s", call.name, ok, duration_ms, f" error={error}" if error else "")
        self._publish(
            CallEventKind.TOOL_FINISHED, name=call.name, call_id=call.call_id, ok=ok, duration_ms=duration_ms,
            error=error,
        )
        return call.call_id, output

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("tool answers failed", exc_info=exc)


# --- The call -------------------------------------------------------------------------------


class Call:
    """One phone call bridged to one Realtime session.

    ``run`` owns every task of the call (the phone pump, the Realtime pump, the session
    watchdog, the goodbye, and through ``ToolRunner`` and ``WaitingMusic`` the tool and music
    tasks): when the first ends, the rest are cancelled and awaited and both sockets closed.
    It implements ``tools.CallControl`` for the tools.
    """

    def __init__(
        self,
        phone: PhoneLeg,
        config: Config,
        stats: Stats,
        stream_tokens: StreamTokens | None,
        *,
        wait_music: tuple[str, ...] = (),
        openai_client: openai.AsyncOpenAI | None = None,
        realtime_client: RealtimeClient | None = None,
        on_event: CallEventHook | None = None,
    ) -> None:
        """``realtime_client`` is the process's pool of Realtime sockets (``relay`` shares one); without
        one the call opens and closes its own."""
        self.phone = phone
        self.config = config
        self.stats = stats
        self.stream_tokens = stream_tokens
        """Checks the start's single-use token; None only for a leg the caller already trusts (tests)."""
        self.realtime: RealtimeSocket | None = None
        self._realtime_client = realtime_client or RealtimeClient()
        self._own_realtime_client = realtime_client is None
        self.stream_sid = ""
        self.call_sid = ""
        self.caller: AllowedCaller | None = None
        self.playback = Playback()
        self.counts = CallCounts()
        self.session_ready = False
        """The first session is configured and the caller greeted."""
        self.forwarding = False
        """Caller audio goes straight to the session; False while a session is being opened or
        replaced (the audio is held meanwhile)."""
        self.held: deque[str] = deque(maxlen=HELD_AUDIO_FRAMES)
        """Caller audio (base64 µ-law) received while not ``forwarding``."""
        self.transcript = Transcript()
        self.slot = ResponseSlot()
        self.goodbye = Goodbye()
        self.log = CallLog(logger)
        context = ToolContext(
            call=self,
            smtp=config.smtp,
            openai_client=openai_client,
            web_search_model=config.web_search_model,
            timeouts={"gpt_web_search": config.web_search_timeout_s},
        )
        self.tools = ToolRunner(context, config.tools, self.log, self._publish)
        self.keys = KeyPresses(self._on_key_presses, self.log)
        self.music = WaitingMusic(
            wait_music, config.wait_music_threshold_ms / 1000, phone, self.playback, self._on_music
        )
        self._noise_reduction = config.noise_reduction.value
        self._noise_reduction_waiters: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._on_event = on_event
        self._failed = False
        self._warned: set[str] = set()
        self._close_code: int | None = None
        self._closing = asyncio.Event()
        self._create_sent_at: float | None = None
        self._live = asyncio.Event()
        """Set while a configured session is open."""
        self._swap_lock = asyncio.Lock()
        """Held while the session is being replaced (a rollover and a drop must not both do it)."""
        self._session_opened_at = 0.0
        self._caller_speaking = False
        self._expired = False
        """The service said ``session_expired``: its close is the end of the session, not a drop."""
        self._last_reconnect_at: float | None = None
        self._logged_turns: dict[str, bool] = {}
        """Turns whose text has been logged, and whether as cut (a turn logged whole when generated gets
        one more line if the caller then cuts it)."""

    # -- lifecycle --

    async def run(self) -> CallEnd:
        """Serve the call until either side ends. Never raises (errors are logged)."""
        started = time.monotonic()
        reason = "unknown"
        self.stats.active += 1
        self.stats.total += 1
        try:
            reason = await self._run()
        except HangUp as end:
            reason = str(end)
        except Exception:
            self._failed = True
            reason = "internal error"
            self.log.exception("call failed")
        finally:
            self.stats.active -= 1
            self.stats.errors += self._failed
            await self._close_sockets()
        end = CallEnd(reason, self._failed, time.monotonic() - started)
        if self.stream_sid:
            c = self.counts
            self.log.info(
                "call ended call_sid=%s duration=%.1fs reason=%s frames_in=%d frames_out=%d marks_acked=%d "
                "responses=%d barge_ins=%d realtime_errors=%d sessions=%d",
                self.call_sid, end.duration_s, reason, c.frames_in, c.frames_out, c.marks_acked, c.responses,
                c.barge_ins, c.realtime_errors, c.sessions,
            )
            self._publish(CallEventKind.ENDED, reason=reason, failed=end.failed, duration_s=end.duration_s,
                          counts=asdict(c))
        return end

    async def say_goodbye(self, reason: str, instruction: str) -> None:
        """End the call from outside after one short spoken line (a restart's drain timeout): what
        is playing is cut as by a barge-in, the model is asked for the line (``instruction``), and
        the call ends once it has played, closing 1001 going away. A call whose session is not ready
        is closed now; one already saying its goodbye (``end_call``) finishes it."""
        self._close_code = WSCloseCode.GOING_AWAY
        if not self.session_ready:
            await self.close(WSCloseCode.GOING_AWAY, reason)
            return
        if not self.goodbye.request(reason, by_model=False):
            return
        self.log.info("ending the call with a closing line: %s", reason)
        await self.music.stop()
        now = time.monotonic()
        if self.playback.is_playing(now) or self.slot.active is not None:
            await self._cut_playback(now, cancel=True)
        await self._send_realtime(protocol.system_message(instruction))
        self.goodbye.after_tools(spoke=False)
        await self._request_response()

    async def close(self, code: int, reason: str) -> None:
        """End the call from outside (shutdown): close the phone socket with ``code``."""
        self._close_code = code
        self._closing.set()
        await self.phone.close(code, reason)

    async def _run(self) -> str:
        start = await self._await_start()
        if start is None:
            return f"no start from {self.phone.network}"
        self.stream_sid, self.call_sid = start.stream_sid, start.call_sid
        self.log.extra.update(stream_sid=start.stream_sid, call_sid=start.call_sid)  # type: ignore[union-attr]
        number = start.custom_parameters.get("caller_number")
        if self.stream_tokens is not None:
            verdict = self.stream_tokens.check(start.custom_parameters, start.call_sid)
            if verdict.caller_number is None:
                self.log.warning("media stream refused: %s", verdict.reason)
                await self.phone.close(WSCloseCode.POLICY_VIOLATION, "invalid stream token")
                return "invalid stream token"
            number = verdict.caller_number
        self.caller = find_caller(self.config, number)  # the allowlists again: they may have changed
        if self.caller is None:
            self.log.warning("media stream for a restricted caller refused")
            await self.phone.close(WSCloseCode.POLICY_VIOLATION, "restricted")
            return "restricted caller"
        self.tools.context.email_to = self.config.email_for(self.caller.group)
        self.log.info(
            "call started call_sid=%s network=%s caller=%s group=%s",
            self.call_sid, self.phone.network, mask_number(self.caller.number), self.caller.group,
        )
        self._publish(CallEventKind.STARTED, network=self.phone.network, caller=mask_number(self.caller.number),
                      group=str(self.caller.group), call_sid=self.call_sid)
        tasks = [
            asyncio.create_task(self._pump_phone(), name="phone->realtime"),
            asyncio.create_task(self._pump_realtime(), name="realtime->phone"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._hang_up_after_goodbye(), name="hang up"),
            asyncio.create_task(self._rollover_when_due(), name="session rollover"),
            asyncio.create_task(self._closing.wait(), name="close request"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, self.tools.close(), self.keys.close(), return_exceptions=True)
            await self.music.cancel()
        if self._closing.is_set():  # the close also ends the phone pump: report the cause
            return "server shutting down"
        finished = done.pop()
        exc = finished.exception()
        if exc is not None:
            raise exc
        return str(finished.result())

    async def _await_start(self) -> PhoneStart | None:
        """Read phone events until the start (anything before it is ignored); None on timeout or close."""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                async for event in self.phone:
                    if type(event) is PhoneStart:
                        return event
        except TimeoutError:
            logger.warning("no %s start within %.0fs; closing", self.phone.network, START_TIMEOUT_S)
        return None

    async def _watchdog(self) -> str:
        """Once a second: a ``response.create`` the service never answers (no ``response.created``)
        ends the call as an upstream failure rather than leaving the caller in silence; a phone that
        has sent no frame for ``PHONE_SILENCE_S`` is gone; one that has taken nothing for
        ``PHONE_WRITE_TIMEOUT_S`` is dropped. (Counters and buffers are compared here, so the per-frame
        path pays nothing for it.)"""
        frames, heard_at, stalled_s = -1, time.monotonic(), 0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            stalled_s = stalled_s + 1 if self.phone.write_stalled else 0
            if stalled_s >= PHONE_WRITE_TIMEOUT_S:
                self.log.warning(
                    "the phone has not read for %ds (%d bytes unsent); dropping the call",
                    stalled_s, self.phone.unsent_bytes,
                )
                raise HangUp(f"{self.phone.network} not reading")
            if self.counts.frames_in != frames:
                frames, heard_at = self.counts.frames_in, now
            elif now - heard_at > PHONE_SILENCE_S:
                self.log.warning("no frame from the phone for %.0fs; hanging up", PHONE_SILENCE_S)
                raise HangUp(f"{self.phone.network} silent")
            sent = self._create_sent_at
            if self.slot.create_in_flight and sent is not None and now - sent > RESPONSE_CREATED_TIMEOUT_S:
                self._failed = True
                self._close_code = WSCloseCode.INTERNAL_ERROR
                self.log.error("no response.created within %.0fs of response.create", RESPONSE_CREATED_TIMEOUT_S)
                raise HangUp("realtime did not answer response.create")

    async def _close_sockets(self) -> None:
        if self.realtime is not None:
            await self.realtime.close()
        if self._own_realtime_client:
            await self._realtime_client.close()
        if not self.phone.closed:
            await self.phone.close(self._close_code or WSCloseCode.OK)

    def _session(self) -> dict[str, Any]:
        config = self.config
        noise = None if self._noise_reduction == NoiseReduction.OFF.value else self._noise_reduction
        return protocol.realtime_session(
            instructions=config.instructions,
            voice=config.voice,
            turn_detection=config.turn_detection(),
            noise_reduction=noise,
            transcription_model=config.transcription_model,
            tools=tools.definitions(config.tools),
        )

    # -- Realtime sessions --

    async def _open_session(self, connect_timeout_s: float, session_timeout_s: float) -> RealtimeSocket:
        """Open a Realtime websocket and configure it: ``session.update``, then wait for
        ``session.updated`` (other events before it are ignored; errors are logged).

        Raises:
            UpstreamUnavailable: the service could not be reached or refused the handshake within
                ``connect_timeout_s``, closed, or did not confirm within ``session_timeout_s``.
        """
        try:
            realtime = await self._realtime_client.connect(
                self.config.realtime_connect_url(), self.config.openai_api_key, connect_timeout_s
            )
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamUnavailable(f"realtime connect failed: {_describe(exc)}") from None
        configured = False
        try:
            await realtime.send(orjson.dumps(protocol.session_update(self._session())))
            async with asyncio.timeout(session_timeout_s):
                while (raw := await realtime.receive()) is not None:
                    try:
                        event = protocol.parse_server_event(raw)
                    except MalformedEvent:
                        continue
                    if type(event) is SessionUpdated:
                        if event.noise_reduction is not None:
                            self._noise_reduction = event.noise_reduction
                        configured = True
                        return realtime
                    if type(event) is RealtimeError:
                        await self._on_error(event)
        except TimeoutError:
            raise UpstreamUnavailable(f"no session.updated within {session_timeout_s:.0f}s") from None
        except SessionClosed:
            pass
        finally:
            if not configured:
                await realtime.close()
        raise UpstreamUnavailable(f"realtime closed the session before session.updated code={realtime.close_code}")

    def _session_began(self) -> None:
        self._session_opened_at = time.monotonic()
        self.counts.sessions += 1
        self._live.set()

    async def _replace_session(self, cause: str) -> None:
        """Move the call to a new session: open and configure it like the first, replay the
        conversation as text, then send the caller audio held meanwhile. The old session is left
        for the caller of this method to close.

        Args:
            cause: ``rollover`` (planned, at a quiet moment), ``expired`` (the service ended it) or
                ``dropped``.

        Raises:
            UpstreamUnavailable: no new session within ``RECONNECT_TIMEOUT_S`` per step; on a
                rollover the old session, still open, stays in use.
        """
        started = time.monotonic()
        self.forwarding = False
        try:
            realtime = await self._open_session(RECONNECT_TIMEOUT_S, RECONNECT_TIMEOUT_S)
        except UpstreamUnavailable:
            if cause == "rollover":
                await self._flush_held()  # the old session goes on
            raise
        self.realtime = realtime
        self._session_began()
        self._caller_speaking = False
        self.playback.forget_items()  # what still plays at the phone cannot be truncated in the new session
        turns = self.transcript.replay()
        name = self.caller.first_name if self.caller else "the caller"
        await self._send_realtime(protocol.system_message(replay_intro(name)))
        for turn in turns:
            await self._send_realtime(protocol.text_message(turn.role, turn.text.strip()))
        await self._flush_held()
        gap_ms = (time.monotonic() - started) * 1000
        self.stats.session_replacements += 1
        self.log.info("realtime session replaced (%s) in %.0f ms; %d turns replayed", cause, gap_ms, len(turns))
        self._publish(CallEventKind.SESSION_REPLACED, cause=cause, replayed=len(turns), gap_ms=gap_ms)

    async def _rollover_when_due(self) -> str:
        """Before the service's 60-minute limit (``session_rollover_s`` into a session), move the
        call to a new session once it has been ``ROLLOVER_QUIET_S`` quiet. Runs for the whole
        call; a reconnect starts the count again."""
        after_s = self.config.session_rollover_s
        if not after_s:
            await asyncio.Event().wait()  # off: idle until cancelled
        await self._live.wait()
        while True:
            due = self._session_opened_at + after_s
            if time.monotonic() < due:
                await asyncio.sleep(due - time.monotonic())
                continue  # a reconnect may have renewed the session meanwhile: look again
            await self._until_quiet()
            async with self._swap_lock:
                old = self.realtime
                if not self._live.is_set() or time.monotonic() < self._session_opened_at + after_s:
                    continue
                try:
                    await self._replace_session("rollover")
                except UpstreamUnavailable as exc:
                    self.log.warning("session rollover failed (%s); trying again in %.0fs", exc, ROLLOVER_RETRY_S)
                    old = None
            if old is None:
                await asyncio.sleep(ROLLOVER_RETRY_S)
            else:
                await old.close()  # the Realtime pump sees it close and reads the new session

    async def _until_quiet(self) -> None:
        """Return once the call has been quiet for ``ROLLOVER_QUIET_S``: a session live, no response
        active, awaited or wanted, the caller not speaking, no tool running, nothing left to play,
        no goodbye under way. (Polled: it runs only once a rollover is due.)"""
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            slot = self.slot
            quiet = (
                self._live.is_set()
                and slot.active is None
                and not slot.create_in_flight
                and not slot.wanted
                and not self._caller_speaking
                and self.tools.batches_running == 0
                and self.goodbye.state is GoodbyeState.NONE
                and not self.playback.is_playing(now)
            )
            if not quiet:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= ROLLOVER_QUIET_S:
                return
            await asyncio.sleep(0.1)

    async def _flush_held(self) -> None:
        """Send the caller audio held meanwhile, in order, then forward again."""
        while self.held:
            await self._send_realtime_json(protocol.input_audio_append(self.held.popleft()))
        self.forwarding = True

    async def _upstream_lost(self, message: str, reason: str) -> str:
        """No session: log ``message``, play the apology, and return ``reason`` (the call ends 1011)."""
        self._failed = True
        self._close_code = WSCloseCode.INTERNAL_ERROR
        self.stats.upstream_lost += 1
        self.log.error("%s; the caller hears the apology", message)
        await self._apologise()
        return reason

    async def _apologise(self) -> None:
        """Play the bundled apology after whatever is still queued, and return once the phone has
        played it (its last mark) or its length plus ``GOODBYE_MARGIN_S`` has passed."""
        await self.music.stop()
        try:
            for payload in apology_payloads():
                await self._send_audio("apology", payload)
        except (ConnectionError, RuntimeError):  # the caller is gone already
            return
        await self._until_played("apology")

    async def _until_played(self, what: str) -> None:
        """Return once the phone has echoed every mark (all sent audio played, or cleared), or when
        what is still unplayed plus ``GOODBYE_MARGIN_S`` has passed (logged, naming ``what``)."""
        deadline_s = self.playback.unplayed_ms(time.monotonic()) / 1000 + GOODBYE_MARGIN_S
        try:
            async with asyncio.timeout(deadline_s):
                await self.goodbye.wait_until(lambda: not self.playback.marks_pending)
        except TimeoutError:
            self.log.warning("%s marks not echoed within %.1f s; hanging up", what, deadline_s)

    # -- phone -> Realtime --

    async def _pump_phone(self) -> str:
        """Forward caller audio and account mark echoes until the phone stops or closes."""
        append = protocol.input_audio_append
        async for event in self.phone:
            if type(event) is PhoneAudio:  # the hot path: 50 a second
                self.counts.frames_in += 1
                if self.forwarding:
                    await self._send_realtime_json(append(event.payload))
                else:
                    self.held.append(event.payload)
            elif type(event) is PhoneMarkPlayed:
                if self.playback.on_mark(event.name, time.monotonic()):
                    self.counts.marks_acked += 1
                    self.goodbye.playback_moved()
            elif type(event) is PhoneStop:
                return f"{self.phone.network} stop"
            elif type(event) is PhoneDtmf:
                self.log.debug("dtmf %s", event.digit)
                self.keys.press(event.digit)
                self._publish(CallEventKind.DTMF, digit=event.digit)
            else:
                self.log.debug("%s %s ignored after start", self.phone.network, type(event).__name__)
        return f"{self.phone.network} closed"

    # -- Realtime -> phone --

    async def _pump_realtime(self) -> str:
        """Open the session and greet the caller, then dispatch server events, session after
        session: one that ends mid-call is replaced (``_after_session_end``); when none can be had,
        the caller hears the apology and the call ends."""
        try:
            self.realtime = await self._open_session(UPSTREAM_CONNECT_TIMEOUT_S, SESSION_TIMEOUT_S)
        except UpstreamUnavailable as exc:
            return await self._upstream_lost(str(exc), "realtime unavailable")
        self._session_began()
        await self._flush_held()  # caller audio held during setup goes first, in order
        self.session_ready = True
        name = self.caller.first_name if self.caller else "there"
        await self._send_realtime(
            protocol.system_message(
                f"The caller, whose first name is {name}, has just been connected. Greet them "
                "by name in one short sentence and ask how you can help."
            )
        )
        await self._request_response()
        while True:
            realtime = self.realtime
            ended = await self._dispatch(realtime)
            if ended is not None:
                return ended
            async with self._swap_lock:
                if self.realtime is not realtime:
                    continue  # a rollover replaced it: read the new one
                ended = await self._after_session_end(realtime)
            if ended is not None:
                return ended

    async def _dispatch(self, realtime: RealtimeSocket) -> str | None:
        """Dispatch ``realtime``'s server events until it closes (None), or the end reason when
        the caller hung up mid-send."""
        handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            AudioDelta: self._on_audio_delta,
            AudioDone: self._on_audio_done,
            SessionUpdated: self._on_session_updated,
            SpeechStarted: self._on_speech_started,
            SpeechStopped: self._on_speech_stopped,
            InputCommitted: self._on_input_committed,
            CallerTranscript: self._on_caller_transcript,
            CallerTranscriptDelta: self._on_caller_delta,
            TranscriptDelta: self._on_transcript_delta,
            TranscriptDone: self._on_transcript_done,
            ResponseCreated: self._on_response_created,
            ResponseDone: self._on_response_done,
            RealtimeError: self._on_error,
        }
        receive = realtime.receive
        while (raw := await receive()) is not None:
            try:
                event = protocol.parse_server_event(raw)
            except MalformedEvent as exc:
                self._warn_once(f"realtime-{exc.kind}", f"malformed realtime event ignored ({exc})")
                continue
            handler = handlers.get(type(event))
            if handler is None:
                kind = getattr(event, "type", type(event).__name__)
                self.log.once_a_second(logging.DEBUG, kind, "realtime %s", kind)
                continue
            try:
                await handler(event)
            except ConnectionResetError:  # the caller hung up while audio was being sent: a normal end
                return f"{self.phone.network} hung up"
        return None

    async def _after_session_end(self, realtime: RealtimeSocket) -> str | None:
        """The service closed the session mid-call. Replace it (at its time limit, or once after a
        drop) and return None, or end the call: return the reason."""
        self._live.clear()
        self.forwarding = False
        code, why = realtime.close_code, realtime.close_reason or "-"
        expired, self._expired = self._expired or code == 1001, False
        if self.goodbye.state is not GoodbyeState.NONE:  # the call was ending anyway
            if code != 1000:
                self._failed = True
                self.log.error("realtime closed the session during the goodbye code=%s reason=%s", code, why)
            if code not in (1000, 1001):
                self._close_code = WSCloseCode.INTERNAL_ERROR
            return f"realtime closed ({code})"
        now = time.monotonic()
        if expired:
            cause = "expired"
            self.log.info("realtime session ended (code=%s reason=%s); moving the call to a new one", code, why)
        elif self._last_reconnect_at is not None and now - self._last_reconnect_at < RECONNECT_WINDOW_S:
            return await self._upstream_lost(
                f"realtime closed the session again within {RECONNECT_WINDOW_S:.0f}s of a reconnect "
                f"code={code} reason={why}",
                f"realtime closed ({code})",
            )
        else:
            cause = "dropped"
            self._last_reconnect_at = now
            self.log.warning("realtime closed the session code=%s reason=%s; reconnecting", code, why)
        answering = self.slot.reset()  # the lost session's responses are gone with it
        try:
            await self._replace_session(cause)
        except UpstreamUnavailable as exc:
            return await self._upstream_lost(f"no new realtime session after it {cause}: {exc}", "realtime lost")
        if answering:  # it was answering when it went: the new one carries on from the replay
            await self._request_response()
        return None

    async def _on_session_updated(self, event: SessionUpdated) -> None:
        if event.noise_reduction is not None:  # the confirmed state; a tool's switch waits for it
            self._noise_reduction = event.noise_reduction
            for event_id, (mode, confirmed) in list(self._noise_reduction_waiters.items()):
                if mode == self._noise_reduction and not confirmed.done():
                    confirmed.set_result(None)
                    del self._noise_reduction_waiters[event_id]

    async def _on_audio_delta(self, event: AudioDelta) -> None:
        """Assistant audio: forward to the phone unchanged, then a mark (the hot path)."""
        if event.response_id in self.slot.interrupted:
            return  # generated after the barge-in: the caller must not hear it
        if self.music.active:  # checked here: no coroutine per delta on the hot path
            await self.music.stop()  # the first assistant audio ends the waiting music
        payload = event.payload
        if len(payload) > MAX_PAYLOAD_CHARS:  # rare: split at a multiple of 4 base64 characters
            for start in range(0, len(payload), MAX_PAYLOAD_CHARS):
                await self._send_audio(event.item_id, payload[start : start + MAX_PAYLOAD_CHARS])
            return
        await self._send_audio(event.item_id, payload)

    async def _send_audio(self, item_id: str, payload: str) -> None:
        mark = self.playback.on_audio_sent(item_id, protocol.b64_decoded_len(payload), time.monotonic())
        await self.phone.send_audio(payload)
        await self.phone.send_mark(mark)
        self.counts.frames_out += 1

    async def _on_audio_done(self, event: AudioDone) -> None:
        self.playback.close_item(event.item_id)

    async def _on_speech_started(self, event: SpeechStarted) -> None:
        """Barge-in: the caller spoke while assistant audio is queued at the phone."""
        self._caller_speaking = True
        await self.music.stop()
        now = time.monotonic()
        if not self.playback.is_playing(now):
            return
        self.counts.barge_ins += 1
        cuts = await self._cut_playback(now, cancel=not self.config.vad_interrupt_response)
        self.log.debug("barge-in truncations=%s", cuts)
        self._publish(CallEventKind.BARGE_IN, truncations=[asdict(cut) for cut in cuts])

    async def _cut_playback(self, now: float, cancel: bool) -> list[Truncation]:
        """Stop the assistant where the caller is: clear the phone's queue, truncate each cut item
        at what was heard, and (``cancel``) cancel the active response."""
        await self.phone.clear()
        cuts = self.playback.barge_in(now)
        if self.slot.interrupt() is not None and cancel:
            await self._send_realtime(protocol.response_cancel())
        for cut in cuts:
            await self._send_realtime(protocol.item_truncate(cut.item_id, cut.audio_end_ms))
            self._said(self.transcript.cut(cut.item_id, cut.audio_end_ms, cut.sent_ms))
        self.goodbye.playback_moved()  # cleared: nothing is left to play (a goodbye included)
        return cuts

    async def _on_speech_stopped(self, event: SpeechStopped) -> None:
        self._caller_speaking = False

    async def _on_input_committed(self, event: InputCommitted) -> None:
        self.transcript.caller_committed(event.item_id)
        self._publish(CallEventKind.CALLER_TURN, item_id=event.item_id)

    async def _on_caller_delta(self, event: CallerTranscriptDelta) -> None:
        self._publish(CallEventKind.TRANSCRIPT_DELTA, role="user", item_id=event.item_id, delta=event.delta)

    async def _on_caller_transcript(self, event: CallerTranscript) -> None:
        self._said(self.transcript.caller_said(event.item_id, event.transcript))

    async def _on_transcript_delta(self, event: TranscriptDelta) -> None:
        self.transcript.assistant_delta(event.item_id, event.delta)
        self._publish(CallEventKind.TRANSCRIPT_DELTA, role="assistant", item_id=event.item_id, delta=event.delta)

    async def _on_transcript_done(self, event: TranscriptDone) -> None:
        self._said(self.transcript.assistant_done(event.item_id, event.transcript))

    def _said(self, turn: Turn) -> None:
        """A turn's text is known (or, for a cut one, more of what went unheard): tell observers, and
        the log (``LOG_TRANSCRIPTS``) once per turn."""
        self._publish(CallEventKind.TRANSCRIPT, role=turn.role, item_id=turn.item_id, text=turn.text, cut=turn.cut,
                      unheard=turn.unheard)
        if not self.config.log_transcripts:
            return
        logged = self._logged_turns.get(turn.item_id)
        if logged is None:
            who = "caller" if turn.role == "user" else "assistant"
            self.log.info("%s said: %s%s", who, turn.text or "-", " (cut off by the caller)" if turn.cut else "")
        elif turn.cut and not logged:  # logged whole when generated, then the caller cut it
            self.log.info("assistant cut off by the caller; heard: %s", turn.text or "-")
        self._logged_turns[turn.item_id] = turn.cut

    async def _on_response_created(self, event: ResponseCreated) -> None:
        ours = self.slot.on_created(event.response_id)
        self.goodbye.on_response_created(event.response_id, ours)
        self.counts.responses += 1

    async def _on_response_done(self, event: ResponseDone) -> None:
        send_queued = self.slot.on_done(event.response_id)
        self.goodbye.on_response_done(event.response_id)
        calls = self.tools.new_calls(event.function_calls)
        if calls:
            self.tools.spawn(self._answer_calls(calls, event.spoke))
        elif self.tools.batches_running == 0:
            await self.music.stop()  # the answer after the tools came without audio
        if send_queued:
            await self._send_create()

    async def _on_error(self, event: RealtimeError) -> None:
        self.counts.realtime_errors += 1
        waiter = self._noise_reduction_waiters.pop(str(event.event_id), None)
        if waiter is not None and not waiter[1].done():
            waiter[1].set_exception(ToolError(f"the service refused the switch: {event.message}"))
        if event.code == "response_cancel_not_active":
            self.log.debug("response.cancel with no active response (harmless)")
            return
        if event.code == "conversation_already_has_active_response":
            self.slot.on_refused()
        elif event.code == "session_expired":  # the close that follows ends the session, not a drop
            self._expired = True
        self.log.once_a_second(
            logging.WARNING, f"error {event.code}", "realtime error type=%s code=%s message=%s",
            event.type, event.code, event.message,
        )
        self._publish(CallEventKind.REALTIME_ERROR, type=event.type, code=event.code, message=event.message)

    async def _request_response(self) -> None:
        """``response.create`` now, or once the active response is done (``ResponseSlot``)."""
        if self.slot.request():
            await self._send_create()

    async def _on_key_presses(self, digits: str) -> None:
        """A DTMF sequence: one conversation item, and a response when none is under way (an
        answer in progress sees the item on its next turn)."""
        await self._send_realtime(protocol.system_message(keypad_text(digits)))
        if self.slot.active is None and not self.slot.create_in_flight:
            await self._request_response()

    # -- tool calls --

    async def _answer_calls(self, calls: list[FunctionCall], spoke: bool) -> None:
        """Answer every function call of one response, then ask for exactly one response.

        The calls run concurrently, with waiting music past the threshold; each gets a
        ``function_call_output`` (an error output when it fails), and only then is
        ``response.create`` sent (or queued while another response is active). After
        ``end_call`` that response is the goodbye, unless the response that called it had
        already spoken (that was the goodbye).
        """
        session = self.counts.sessions  # a replaced session's call_ids mean nothing to the next one
        self.music.start()
        outputs = await self.tools.run(calls)
        if self.tools.batches_running == 0 and not self.music.playing:
            await self.music.cancel()  # done within the threshold: no music at all
        await self._live.wait()  # a session being replaced: answer the new one
        names = {call.call_id: call.name for call in calls}
        for call_id, output in outputs:
            text = json.dumps(output, ensure_ascii=False)
            if session == self.counts.sessions:
                await self._send_realtime(protocol.function_call_output(call_id, text))
            else:  # the session that made the call is gone, and the new one knows no call_id
                await self._send_realtime(protocol.system_message(f"Your {names[call_id]} call returned: {text}"))
        if self.goodbye.after_tools(spoke):
            await self._request_response()

    # CallControl (what tools.py may ask of this call)

    @property
    def noise_reduction(self) -> str:
        """The noise reduction the Realtime service has confirmed (near_field, far_field, off)."""
        return self._noise_reduction

    def hang_up_after_goodbye(self, reason: str) -> None:
        """Hang up once the goodbye has played (``_hang_up_after_goodbye``)."""
        if self.goodbye.request(reason):
            self.log.info("end_call reason=%s", reason)

    async def switch_noise_reduction(self, mode: str) -> None:
        """Partial ``session.update`` of ``audio.input.noise_reduction``; returns when
        ``session.updated`` shows ``mode``. Raises ToolError on refusal or no confirmation."""
        event_id = f"event_nr_{len(self._noise_reduction_waiters)}_{time.monotonic_ns()}"
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._noise_reduction_waiters[event_id] = (mode, confirmed)
        try:
            await self._send_realtime(protocol.noise_reduction_update(mode, event_id))
            async with asyncio.timeout(MIC_CONFIRM_TIMEOUT_S):
                await confirmed
        except TimeoutError:
            raise ToolError(f"the service did not confirm the switch within {MIC_CONFIRM_TIMEOUT_S:g} s") from None
        finally:
            self._noise_reduction_waiters.pop(event_id, None)

    # -- hanging up --

    async def _hang_up_after_goodbye(self) -> str:
        """After ``end_call``: wait for the goodbye to be generated, then for the phone to
        report its last mark (every byte played, or cleared by a barge-in), then end the call.

        The safety deadline is measured from the goodbye audio (what is still unplayed, plus
        ``GOODBYE_MARGIN_S``), not from the tool call.
        """
        goodbye = self.goodbye
        await goodbye.begun()
        try:
            async with asyncio.timeout(GOODBYE_RESPONSE_TIMEOUT_S):
                await goodbye.wait_until(lambda: goodbye.state is GoodbyeState.SPOKEN)
        except TimeoutError:
            self.log.warning("no goodbye within %.0f s of end_call", GOODBYE_RESPONSE_TIMEOUT_S)
        await self._until_played("goodbye")
        return str(goodbye.reason)

    # -- sending and telling --

    async def _send_create(self) -> None:
        self._create_sent_at = time.monotonic()
        await self._send_realtime(protocol.response_create())

    async def _send_realtime(self, event: dict[str, Any]) -> None:
        await self._send_realtime_json(orjson.dumps(event))

    async def _send_realtime_json(self, data: bytes) -> None:
        """Send one encoded client event to the current session. On a session that has just closed
        the event is dropped and caller audio is held from then on: the Realtime pump replaces the
        session or ends the call."""
        realtime = self.realtime
        if realtime is None:
            return
        try:
            await realtime.send(data)
        except SessionClosed:
            self.forwarding = False

    def _on_music(self, playing: bool) -> None:
        self.log.debug("wait music %s", "started" if playing else "stopped")
        self._publish(CallEventKind.MUSIC_STARTED if playing else CallEventKind.MUSIC_STOPPED)

    def _publish(self, kind: CallEventKind, **data: Any) -> None:
        """Hand one event to the hook; nothing is built when no one listens."""
        if self._on_event is None:
            return
        try:
            self._on_event(CallEvent(kind, self.stream_sid, time.time(), data))
        except Exception:
            if "hook" not in self._warned:
                self._warned.add("hook")
                self.log.exception("call event hook failed on %s", kind)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning("%s", message)


def replay_intro(name: str) -> str:
    """The system message that opens a replayed conversation in a new session."""
    return (
        f"This phone call with {name} is already under way on a new connection; the conversation so far "
        "follows. Carry on from where it left off and do not greet the caller again. A turn of yours "
        "ending in … was cut off there because the caller interrupted."
    )


@functools.cache
def apology_payloads() -> tuple[str, ...]:
    """The apology clip as base64 µ-law media payloads of ``APOLOGY_CHUNK_BYTES`` (read once);
    empty, with one error logged, when the file cannot be read."""
    try:
        clip = APOLOGY_FILE.read_bytes()
    except OSError as exc:
        logger.error("apology clip unreadable (%s); callers hear silence instead", _describe(exc))
        return ()
    step = APOLOGY_CHUNK_BYTES
    return tuple(base64.b64encode(clip[i : i + step]).decode() for i in range(0, len(clip), step))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""The model side of one call over its whole life: the session's lifetime as one object.

``Upstream`` is the sole owner of the call's model session and of the caller audio held while a session
opens. It opens and configures the first session, holds caller audio until it is ready, moves the call
to a new session before the service's time limit at a quiet moment (rollover), when the service ends
it (expiry), or once when it drops (reconnect), replaying the conversation as text; and when no
session can be had, it plays the caller the apology. No other task swaps the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, NoReturn

from aiohttp import WSCloseCode

from bridge.events import CallCounts, CallEventKind, Ending, EndReason, Stats
from bridge.output import PhoneOutput
from bridge.prewarm import Prewarmed, PrewarmedSession
from bridge.prompts import replay_intro
from bridge.transcript import Transcript
from model.session import CallBrief, ModelEvent, ModelSession, ModelUnavailable, SessionClosed, SessionFactory
from redact import CallLog

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""How long opening the first model websocket may take."""
CONFIGURE_TIMEOUT_S = 10.0
"""How long the service has to confirm the first session's configuration."""
HELD_AUDIO_FRAMES = 500
"""Caller frames held while a session is being opened or replaced: 10 s of 20 ms frames."""
RECONNECT_TIMEOUT_S = 5.0
"""How long opening and configuring a replacement session may take (each step) while the caller waits."""
RECONNECT_WINDOW_S = 30.0
"""A session that drops within this long of the last reconnect is not reconnected again: the call ends
with the apology (a service failing over and over must not keep a caller on hold)."""
ROLLOVER_QUIET_S = 1.0
"""A planned rollover waits for the call to be this long quiet: no turn under way or wanted, the caller
not speaking, no tool running, nothing left to play."""
ROLLOVER_BEFORE_EXPIRY_S = 120.0
"""A session that announces when it will end (GPT-Live's ``expires_at``) is rolled over at a quiet moment from
this long before then, rather than cut by the service mid-sentence."""
ROLLOVER_RETRY_S = 30.0
"""After a planned rollover could not open a new session, how long until the next try (the old session
goes on meanwhile)."""


class Upstream:
    """The call's model session from the first to the last.

    Args:
        sessions: makes each session (``model.session.SessionFactory``).
        output: the phone output, for the apology.
        transcript: the conversation so far, replayed into a replacement session.
        rollover_s: seconds into a session after which the call moves to a new one at its next quiet
            moment; 0: never (the service's expiry still moves it).
        quiet: whether the rest of the call is quiet at monotonic ``now`` (caller silent, no tool,
            no goodbye, nothing playing).
        on_replaced: told when a replacement session is open, before the replay.
        noise_reduction: what the first session is configured with.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        output: PhoneOutput,
        transcript: Transcript,
        *,
        rollover_s: float,
        quiet: Callable[[float], bool],
        on_replaced: Callable[[], None],
        noise_reduction: str,
        stats: Stats,
        counts: CallCounts,
        log: CallLog,
        publish: Callable[..., None],
    ) -> None:
        self._sessions = sessions
        self._output = output
        self._transcript = transcript
        self._rollover_s = rollover_s
        self._quiet = quiet
        self._on_replaced = on_replaced
        self._noise_reduction = noise_reduction
        self._stats = stats
        self._counts = counts
        self._log = log
        self._publish = publish
        self.session: ModelSession | None = None
        self.api = "model"
        """The voice API the sessions speak (``realtime``), once one has been made: for logs and end reasons."""
        self.caller_name = "the caller"
        """Named in the replay's opening."""
        self.brief: CallBrief | None = None
        """What this call's sessions are told beyond the deployment's settings (an outbound call's purpose)."""
        self.forwarding = False
        """Caller audio goes straight to the session; False while one is being opened or replaced."""
        self.held: deque[str] = deque(maxlen=HELD_AUDIO_FRAMES)
        """Caller audio (base64 µ-law) received while not ``forwarding``."""
        self._live = asyncio.Event()
        """Set while a configured session is open."""
        self._swap_lock = asyncio.Lock()
        """Held while the session is being replaced (a rollover and a drop must not both do it)."""
        self._opened_at = 0.0
        self._last_reconnect_at: float | None = None
        self._retired: set[ModelSession] = set()
        self._replayed = 0
        """Turns replayed into the latest replacement session."""

    @property
    def generation(self) -> int:
        """How many sessions the call has had; a tool call made in an earlier one cannot be answered
        in this one."""
        return self._counts.sessions

    async def send_audio(self, payload: str) -> None:
        """Caller audio (base64 µ-law): to the session, or held while none is ready. The hot path."""
        if self.forwarding:
            try:
                await self.session.send_audio(payload)  # type: ignore[union-attr]  # forwarding: one is open
            except SessionClosed:
                self.forwarding = False  # the pump replaces the session or ends the call
                self.held.append(payload)
        else:
            self.held.append(payload)

    async def start(self, prewarmed: Prewarmed | None = None) -> None:
        """Open and configure the first session (or take over ``prewarmed``, opened at the webhook: its events
        from before the stream come first), then send the caller audio held meanwhile.

        Raises:
            ModelUnavailable: no session within ``CONNECT_TIMEOUT_S`` and ``CONFIGURE_TIMEOUT_S``.
        """
        if prewarmed is not None:
            self.session = PrewarmedSession(prewarmed)
            self.api = self.session.api
        else:
            self.session = await self._open(CONNECT_TIMEOUT_S, CONFIGURE_TIMEOUT_S)
        self._began()
        await self._flush_held()

    async def note(self, text: str) -> None:
        """Context for the model (``ModelSession.add_note``); nothing before the first session."""
        if self.session is not None:
            await self.session.add_note(text)

    async def respond(self, instruction: str | None = None) -> None:
        """Ask the model to speak (``ModelSession.respond``); nothing before the first session."""
        if self.session is not None:
            await self.session.respond(instruction)

    async def live(self) -> None:
        """Return once a configured session is open (at once, unless one is being replaced)."""
        await self._live.wait()

    def overdue(self, now: float) -> str | None:
        """``ModelSession.overdue`` of the current session."""
        return self.session.overdue(now) if self.session is not None else None

    async def serve(self, dispatch: Callable[[ModelEvent], Awaitable[Any]], ending: Callable[[], bool]) -> Ending:
        """Hand every model event to ``dispatch``, session after session: one that ends mid-call is
        replaced; when none can be had, the caller hears the apology. Returns how the call ends.

        Args:
            dispatch: the conversation's handler. A ConnectionResetError from it (the caller hung up
                mid-send) propagates.
            ending: whether the call is on its way out anyway (a goodbye under way): a session that
                ends then ends the call.
        """
        while True:
            session = self.session
            assert session is not None, "start() first"
            async for event in session:
                await dispatch(event)
            async with self._swap_lock:
                if self.session is not session:
                    continue  # a rollover replaced it: read the new one
                ended = await self._after_end(session, ending())
            if ended is not None:
                return ended

    async def lost(self, message: str, ending: Ending) -> Ending:
        """No session: log ``message``, play the apology, and return ``ending`` as a failure closing 1011."""
        self._stats.upstream_lost += 1
        self._log.error("%s; the caller hears the apology", message)
        await self._output.play_apology()
        return replace(ending, failed=True, close_code=WSCloseCode.INTERNAL_ERROR)

    async def rollover_when_due(self) -> NoReturn:
        """Before the service's time limit (``rollover_due``), move the call to a new session once it has been
        ``ROLLOVER_QUIET_S`` quiet. Runs for the whole call; a reconnect starts the count again."""
        if not self._rollover_s:
            await asyncio.Event().wait()  # off: idle until cancelled
        await self._live.wait()
        while True:
            due = rollover_due(self._opened_at, self._rollover_s, self.session)
            if time.monotonic() < due:
                await asyncio.sleep(min(due - time.monotonic(), ROLLOVER_RETRY_S))
                continue  # a reconnect may have renewed the session meanwhile: look again
            await self._until_quiet()
            async with self._swap_lock:
                old = self.session
                due = rollover_due(self._opened_at, self._rollover_s, self.session)
                if not self._live.is_set() or time.monotonic() < due:
                    continue
                try:
                    await self._replace("rollover")
                except ModelUnavailable as exc:
                    self._log.warning("session rollover failed (%s); trying again in %.0fs", exc, ROLLOVER_RETRY_S)
                    old = None
            if old is None:
                await asyncio.sleep(ROLLOVER_RETRY_S)
            else:
                await self._retire(old)  # serve() sees it end and reads the new session

    async def close(self) -> None:
        """Close the current session (the call's end) and count its billed seconds."""
        if self.session is not None:
            await self._retire(self.session)

    async def _retire(self, session: ModelSession) -> None:
        """Close ``session`` and add what it bills to the call's count (once per session)."""
        await session.close()
        if session not in self._retired:
            self._retired.add(session)
            self._counts.billed_s += session.billed_seconds or 0.0
            self._counts.usage.add(session.usage)

    # -- the session's lifetime --

    async def _open(self, connect_timeout_s: float, configure_timeout_s: float, replay: bool = False) -> ModelSession:
        """A new configured session; with ``replay``, seeded with the conversation so far."""
        brief = () if self.brief is None else (self.brief,)
        session = self._sessions(self._noise_reduction, self._log, *brief)
        self.api = session.api
        if replay:
            turns = self._transcript.replay()
            session.replay(replay_intro(self.caller_name), [(turn.role, turn.text.strip()) for turn in turns])
            self._replayed = len(turns)
        await session.open(connect_timeout_s, configure_timeout_s)
        return session

    def _began(self) -> None:
        self._opened_at = time.monotonic()
        self._counts.sessions += 1
        self._live.set()

    async def _flush_held(self) -> None:
        """Send the caller audio held meanwhile, in order, then forward again (unless the session closed
        meanwhile: the rest stays held for the next one)."""
        session = self.session
        assert session is not None
        while self.held:
            try:
                await session.send_audio(self.held[0])
            except SessionClosed:
                return
            self.held.popleft()
        self.forwarding = True

    async def _after_end(self, session: ModelSession, goodbye_under_way: bool) -> Ending | None:
        """The service ended the session mid-call. Replace it (at its time limit, or once after a drop)
        and return None, or return how the call ends."""
        self._live.clear()
        self.forwarding = False
        self._noise_reduction = session.noise_reduction
        await self._retire(session)
        end, api = session.end, session.api
        if goodbye_under_way:  # the call was ending anyway
            if end.code != 1000:
                self._log.error("%s closed the session during the goodbye code=%s reason=%s", api, end.code, end.reason)
            code = None if end.code in (1000, 1001) else WSCloseCode.INTERNAL_ERROR
            return Ending(EndReason.MODEL_CLOSED, f"{api} closed ({end.code})", end.code != 1000, code)
        now = time.monotonic()
        if end.expired:
            cause = "expired"
            self._log.info("%s session ended (code=%s reason=%s); moving the call to a new one", api, end.code,
                           end.reason)
        elif self._last_reconnect_at is not None and now - self._last_reconnect_at < RECONNECT_WINDOW_S:
            return await self.lost(
                f"{api} closed the session again within {RECONNECT_WINDOW_S:.0f}s of a reconnect "
                f"code={end.code} reason={end.reason}",
                Ending(EndReason.MODEL_CLOSED, f"{api} closed ({end.code})"),
            )
        else:
            cause = "dropped"
            self._last_reconnect_at = now
            self._log.warning("%s closed the session code=%s reason=%s; reconnecting", api, end.code, end.reason)
        answering = session.busy  # its turns are gone with it
        try:
            await self._replace(cause)
        except ModelUnavailable as exc:
            return await self.lost(f"no new {api} session after it {cause}: {exc}", Ending(EndReason.MODEL_LOST,
                                                                                            f"{api} lost"))
        if answering:  # it was answering when it went: the new one carries on from the replay
            await self.respond()
        return None

    async def _replace(self, cause: str) -> None:
        """Move the call to a new session: open and configure it like the first, replay the conversation
        as text, then send the caller audio held meanwhile. The old session is left for the caller of
        this method to close.

        Args:
            cause: ``rollover`` (planned, at a quiet moment), ``expired`` (the service ended it) or
                ``dropped``.

        Raises:
            ModelUnavailable: no new session within ``RECONNECT_TIMEOUT_S`` per step; on a rollover the
                old session, still open, stays in use.
        """
        started = time.monotonic()
        self.forwarding = False
        if self.session is not None:
            self._noise_reduction = self.session.noise_reduction
        try:
            session = await self._open(RECONNECT_TIMEOUT_S, RECONNECT_TIMEOUT_S, replay=True)
        except ModelUnavailable:
            if cause == "rollover":
                await self._flush_held()  # the old session goes on
            raise
        self.session = session
        self._began()
        self._on_replaced()
        await self._flush_held()
        gap_ms = (time.monotonic() - started) * 1000
        self._stats.session_replacements += 1
        self._log.info("%s session replaced (%s) in %.0f ms; %d turns replayed", session.api, cause, gap_ms,
                       self._replayed)
        self._publish(CallEventKind.SESSION_REPLACED, cause=cause, replayed=self._replayed, gap_ms=gap_ms)

    async def _until_quiet(self) -> None:
        """Return once the call has been quiet for ``ROLLOVER_QUIET_S``: a session live and idle, and the
        rest of the call quiet (``quiet``). Polled: it runs only once a rollover is due."""
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            session = self.session
            quiet = self._live.is_set() and session is not None and not session.busy and self._quiet(now)
            if not quiet:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= ROLLOVER_QUIET_S:
                return
            await asyncio.sleep(0.1)


async def until_voice_quiet(upstream: Upstream, timeout_s: float, log: CallLog) -> None:
    """Return once the call's session has no turn under way (GPT-Live's voice may still be finishing a goodbye
    it began with the tool call), or after ``timeout_s``. Polled: it runs once per call, at its end."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                session = upstream.session
                if session is None or not session.busy:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        log.warning("the model was still speaking %.0f s after its goodbye; hanging up", timeout_s)


def rollover_due(opened_at: float, rollover_s: float, session: ModelSession | None) -> float:
    """When a session opened at ``opened_at`` is due for a planned rollover (monotonic seconds): ``rollover_s``
    into it, or ``ROLLOVER_BEFORE_EXPIRY_S`` before the ``expires_at`` it announced, whichever comes first."""
    due = opened_at + rollover_s
    expires_at = session.expires_at if session is not None else None
    if expires_at is not None:
        due = min(due, time.monotonic() + expires_at - time.time() - ROLLOVER_BEFORE_EXPIRY_S)
    return due

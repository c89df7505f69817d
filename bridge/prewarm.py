"""Pre-warming: the model session opened at the voice webhook, while the caller hears the welcome.

Between the webhook's answer and the media stream's start the caller hears the network read the welcome
(about 3 s of ``<Say>``): time enough to open the model's websocket, configure the session and (with
``PREWARM=greeting``) have the model's first words ready, so the assistant speaks the moment the stream
opens instead of after three round trips to the service. ``Prewarms`` holds those sessions, keyed by the
stream token's nonce: the stream's start, its token checked, takes its session over (``take``); a session
whose stream never comes is closed when the token expires. Each counts against ``MAX_CALLS`` through the
webhook's reservation, so a flood of webhooks opens no more sessions than calls could be taken.

A session is read while it waits (its events kept, bounded), and never by two tasks: the read under way
when the stream takes it over goes with it (``Prewarmed.pending``), so no read is ever cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.prompts import greeting_instruction
from config import PrewarmMode
from model.prices import TokenUsage
from model.session import (
    CallBrief,
    ModelEvent,
    ModelSession,
    ModelUnavailable,
    SessionClosed,
    SessionEnd,
    SessionFactory,
)
from redact import CallLog

logger = logging.getLogger("bridge")

CONNECT_TIMEOUT_S = 10.0
CONFIGURE_TIMEOUT_S = 10.0
FAILURE_LOG_INTERVAL_S = 10.0
"""At most one warning this often for sessions that could not be pre-warmed (a service down, a flood)."""
MAX_KEPT_EVENTS = 2000
"""Model events kept while a session waits for its stream (a greeting is a few hundred at most); past it,
reading stops and the service's frames wait in the socket."""


@dataclass(slots=True)
class Prewarmed:
    """A session the stream takes over: open and configured, with what it said meanwhile."""

    session: ModelSession
    events: deque[ModelEvent]
    """Model events read while it waited, oldest first: to be handled before any other."""
    pending: asyncio.Future[ModelEvent] | None
    """The read under way when the stream took it over (its result is the next event)."""
    greeted: bool
    """The greeting has been asked for."""


class PrewarmedSession:
    """A pre-warmed session as the call sees it (``model.session.ModelSession``): what it said before the
    stream opened comes first, then the read that was under way, then the session itself. Everything else is
    the session's own (caller audio goes straight to it: no cost on the hot path)."""

    def __init__(self, prewarmed: Prewarmed) -> None:
        session = self._session = prewarmed.session
        self._events = prewarmed.events
        self._pending = prewarmed.pending
        self.api, self.truncates, self.paced_by_input = session.api, session.truncates, session.paced_by_input
        self.send_audio = session.send_audio
        self.add_note, self.respond, self.answer_tools = session.add_note, session.respond, session.answer_tools
        self.interrupted, self.set_noise_reduction = session.interrupted, session.set_noise_reduction
        self.replay, self.overdue = session.replay, session.overdue

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        """Nothing: it is open."""

    def __aiter__(self) -> PrewarmedSession:
        return self

    async def __anext__(self) -> ModelEvent:
        if self._events:
            return self._events.popleft()
        pending, self._pending = self._pending, None
        if pending is not None:
            return await pending  # StopAsyncIteration when it ended meanwhile
        return await anext(self._session)

    @property
    def noise_reduction(self) -> str:
        return self._session.noise_reduction

    @property
    def busy(self) -> bool:
        return self._session.busy

    @property
    def end(self) -> SessionEnd:
        return self._session.end

    @property
    def billed_seconds(self) -> float | None:
        return self._session.billed_seconds

    @property
    def usage(self) -> TokenUsage:
        return self._session.usage

    @property
    def expires_at(self) -> float | None:
        return self._session.expires_at

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()  # a read the call never reached
        await self._session.close()


@dataclass(slots=True)
class _Entry:
    nonce: str
    first_name: str | None
    brief: CallBrief | None = None
    task: asyncio.Task[None] | None = None
    session: ModelSession | None = None
    events: deque[ModelEvent] = field(default_factory=deque)
    pending: asyncio.Future[ModelEvent] | None = None
    greeted: bool = False
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str | None = None


class Prewarms:
    """This process's pre-warmed sessions, by stream nonce.

    Args:
        sessions: makes a session (the deployment's ``SessionFactory``).
        mode: ``PREWARM``.
        noise_reduction: what the sessions are configured with.
        on_outcome: told ``used``, ``expired``, ``missed`` (a stream found no session: another worker took its
            webhook) or ``failed`` (the session could not be had; the stream opens its own).
    """

    def __init__(self, sessions: SessionFactory, mode: PrewarmMode, noise_reduction: str,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self._sessions = sessions
        self.mode = mode
        self._noise_reduction = noise_reduction
        self._on_outcome = on_outcome
        self._entries: dict[str, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._failure_logged_at = -FAILURE_LOG_INTERVAL_S
        self.counts: dict[str, int] = {"used": 0, "expired": 0, "missed": 0, "failed": 0}

    def start(self, nonce: str, first_name: str | None, ttl_s: float, brief: CallBrief | None = None) -> None:
        """The webhook admitted a call whose stream will carry ``nonce``: open its session now (told ``brief``,
        as the call's own sessions will be), and close it if no stream takes it within ``ttl_s``."""
        if self.mode is PrewarmMode.OFF or nonce in self._entries:
            return
        entry = _Entry(nonce, first_name, brief)
        self._entries[nonce] = entry
        entry.task = asyncio.create_task(self._warm(entry), name="prewarm")
        asyncio.get_running_loop().call_later(ttl_s, self._expire, nonce)

    async def take(self, nonce: str) -> Prewarmed | None:
        """The stream whose token carried ``nonce`` has started: its session, once open (waiting for the open
        under way), or None (none was started here, or it failed: the call opens its own)."""
        if self.mode is PrewarmMode.OFF:
            return None
        entry = self._entries.pop(nonce, None)
        if entry is None:
            self._outcome("missed")
            return None
        entry.taken.set()
        if entry.task is not None:
            await asyncio.wait([entry.task])  # the open, or the read loop handing over: never cancelled
        if entry.session is None:
            self._outcome("failed")
            logger.info("no pre-warmed session (%s); opening one now", entry.failed or "closed")
            return None
        self._outcome("used")
        return Prewarmed(entry.session, entry.events, entry.pending, entry.greeted)

    async def discard(self, nonce: str) -> None:
        """The stream that carried ``nonce`` will not use its session (its caller was refused): close it now
        rather than at its token's expiry. Counted under no outcome."""
        entry = self._entries.pop(nonce, None)
        if entry is not None:
            await self._discard(entry)

    async def close(self) -> None:
        """Close every session still waiting (shutdown)."""
        for nonce in list(self._entries):
            await self._discard(self._entries.pop(nonce))
        await asyncio.gather(*self._closing, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._entries)

    async def _warm(self, entry: _Entry) -> None:
        brief = () if entry.brief is None else (entry.brief,)
        session = self._sessions(self._noise_reduction, CallLog(logger), *brief)
        try:
            await session.open(CONNECT_TIMEOUT_S, CONFIGURE_TIMEOUT_S)
        except ModelUnavailable as exc:
            entry.failed = str(exc)
            now = time.monotonic()
            if now - self._failure_logged_at >= FAILURE_LOG_INTERVAL_S:
                self._failure_logged_at = now
                logger.warning("pre-warming a session failed (%s); its stream will open its own", exc)
            return
        entry.session = session
        if self.mode is PrewarmMode.GREETING:
            await session.respond(greeting_instruction(entry.first_name or "there"))
            entry.greeted = True
        taken = asyncio.ensure_future(entry.taken.wait())
        feeder = asyncio.create_task(_silence(session), name="prewarm silence") if session.paced_by_input else None
        try:
            while len(entry.events) < MAX_KEPT_EVENTS:
                read = entry.pending = asyncio.ensure_future(anext(session))
                done, _ = await asyncio.wait([read, taken], return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    return  # the stream's call reads it (entry.pending)
                entry.pending = None
                try:
                    entry.events.append(read.result())
                except StopAsyncIteration:  # the service closed it: the stream opens its own
                    entry.session, entry.failed = None, f"closed while waiting: {session.end.reason}"
                    await session.close()
                    return
                if taken.done():
                    return
            await taken  # full: the rest waits in the socket
        finally:
            taken.cancel()
            if feeder is not None:
                feeder.cancel()
                await asyncio.wait([feeder])

    def _expire(self, nonce: str) -> None:
        entry = self._entries.pop(nonce, None)
        if entry is None:
            return
        self._outcome("expired")
        if entry.session is not None:
            logger.info("pre-warmed session closed: no stream came within its token's lifetime")
        task = asyncio.create_task(self._discard(entry), name="prewarm expiry")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _discard(self, entry: _Entry) -> None:
        """Stop ``entry``'s open or read and close its session."""
        if entry.task is not None:
            entry.task.cancel()
            await asyncio.wait([entry.task])
        if entry.pending is not None:
            entry.pending.cancel()
        if entry.session is not None:  # None: cancelled in the open, which closed its own socket
            with contextlib.suppress(Exception):
                await entry.session.close()

    def _outcome(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self._on_outcome is not None:
            self._on_outcome(outcome)


SILENT_FRAME = base64.b64encode(b"\xff" * 160).decode()
"""20 ms of µ-law silence, base64."""


async def _silence(session: ModelSession) -> None:
    """20 ms of silence every 20 ms (on the clock, not drifting) to a session paced by its input, while it waits
    for its stream: a phone line's worth of nothing, so what it was asked to say is taken up."""
    next_at = time.monotonic()
    with contextlib.suppress(SessionClosed):
        while True:
            await session.send_audio(SILENT_FRAME)
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

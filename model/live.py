"""GPT-Live as a model session: its websocket, its handshake, its context appends, its end.

``LiveSession`` implements ``model.session.ModelSession`` with the builders and parser of
``model.live_wire`` over a ``model.websocket.RealtimeSocket``; the turns it reports and the tool calls it
hands over are kept by the sans-I/O ``model.live_state``. GPT-Live's voice takes its own turns and handles
barge-in itself (``truncates`` is False: nothing is cancelled or truncated). Its output is a continuous
real-time stream, silence included: silence is not passed to the call (the phone plays silence when it
has nothing), so what is queued at the phone is the voice's speech only, one delta ahead at most.

Sources: ``openai.types.live``; OpenAI "Live conversations", "Live delegation" and "Voice over WebSockets"
guides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from model import live_wire as wire
from model.live_state import ASKED_WINDOW_S, PLACEHOLDER, LiveTurns, ToolLedger
from model.live_wire import Backend, Closed, LiveError, MalformedEvent, OtherEvent, OutputAudio, Started, Usage
from model.live_wire import Transcript as TranscriptDelta
from model.prices import TokenUsage
from model.session import (
    AssistantAudio,
    ModelError,
    ModelEvent,
    ModelRefused,
    ModelUnavailable,
    SessionEnd,
    ToolOutput,
    Truncation,
    VoiceApi,
)
from model.websocket import RealtimeClient, RealtimeSocket
from redact import CallLog

CLOSE_WAIT_S = 3.0
"""After ``session.close``, how long the service has to answer ``session.closed`` (it may finish work)."""
EXPIRY_MARGIN_S = 5.0
"""A session that ends this close to its ``expires_at`` without saying why reached its limit: replaced like
one closed ``expired``, not counted as a drop."""
SPEAK_NOW = "Speak to the caller now, following the conversation so far."


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """A deployment's GPT-Live settings, the same for every session (``model.factory`` builds them)."""

    url: str
    """``wss://api.openai.com/v1/live/sessions`` (no query: the model goes in ``session.start``)."""
    api_key: str
    model: str
    instructions: str
    voice: str
    backend_model: str
    """The Responses model that runs the tools."""
    tools: tuple[dict[str, Any], ...]


class LiveSession:
    """One GPT-Live session (``model.session.ModelSession``): iterate it for model events."""

    api = VoiceApi.LIVE
    truncates = False
    paced_by_input = True

    def __init__(self, client: RealtimeClient, options: LiveOptions, log: CallLog) -> None:
        self._client = client
        self._options = options
        self._log = log
        self._socket: RealtimeSocket | None = None
        self._history: list[dict[str, Any]] | None = None
        self._queue: deque[ModelEvent] = deque()
        self._turns = LiveTurns(self._queue)
        self._tools = ToolLedger(self._queue)
        self._closed: Closed | None = None
        self._closed_seen = asyncio.Event()
        self._billed: float | None = None
        self._reading = False
        self._eof = False
        self._warned: set[str] = set()
        self.expires_at: float | None = None
        """When the service will end the session (Unix seconds), from ``session.started``."""

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        """Open the websocket, send ``session.start`` and wait for ``session.started``.

        Raises:
            ModelUnavailable: the service could not be reached or refused the handshake within
                ``connect_timeout_s``, answered ``session.start`` with an ``error`` (a bad model or voice,
                no quota), closed, or did not confirm within ``configure_timeout_s``.
        """
        options = self._options
        session = wire.live_session(model=options.model, instructions=options.instructions, voice=options.voice,
                                    backend_model=options.backend_model, tools=options.tools, history=self._history)

        async def started(raw: bytes) -> bool:
            try:
                event = wire.parse_server_event(raw)
            except MalformedEvent:
                return False
            if type(event) is LiveError:
                raise ModelUnavailable(f"live refused session.start: {event.code}: {event.message}")
            if type(event) is Started:
                self.expires_at = event.expires_at
                return True
            return False

        self._socket = await self._client.open_configured(
            "live", options.url, options.api_key, orjson.dumps(wire.session_start(session)), started,
            (connect_timeout_s, configure_timeout_s))

    def __aiter__(self) -> LiveSession:
        return self

    async def __anext__(self) -> ModelEvent:
        """The next model event; StopAsyncIteration once the socket has closed. Safe to cancel."""
        queue = self._queue
        while not queue:
            if self._eof:
                raise StopAsyncIteration
            raw = await self._receive()
            now = time.monotonic()
            self._turns.close_quiet(now)
            if raw is None:
                continue
            try:
                event = wire.parse_server_event(raw)
            except MalformedEvent as exc:
                self._warn_once(f"malformed-{exc.kind}", "malformed live event ignored (%s)", exc)
                continue
            if type(event) is OutputAudio:  # the hot path
                if wire.is_silence(event.payload):
                    continue
                turn_id = self._turns.assistant_speech(now)
                self._tools.voice_spoke()
                if queue:  # the turn has just opened: its start goes first
                    queue.append(AssistantAudio(turn_id, event.payload))
                    break
                return AssistantAudio(turn_id, event.payload)
            await self._handle(event, now)
        return queue.popleft()

    async def send_audio(self, payload: str) -> None:
        """``session.input_audio.append`` with the phone's payload unchanged. Raises SessionClosed."""
        assert self._socket is not None
        await self._socket.send(wire.input_audio_append(payload))

    async def add_note(self, text: str) -> None:
        """Silent context (``session.thinking.append``)."""
        await self._send(wire.context_append("thinking", text))

    def replay(self, intro: str, turns: Sequence[tuple[str, str]]) -> None:
        """Put in ``session.start``'s ``input`` (the newest turns win within its limits)."""
        self._history = wire.history(intro, turns)

    async def respond(self, instruction: str | None = None) -> None:
        """``session.commentary.append`` of ``instruction`` (or ``SPEAK_NOW``); nothing when tool outputs
        have just made the backend continue (the voice speaks the result by itself). Either way the next
        turn answers it."""
        turns = self._turns
        now = turns.asked_at = time.monotonic()
        if instruction is None and turns.continued_at is not None and now - turns.continued_at < ASKED_WINDOW_S:
            return
        turns.end_assistant_turn()  # a closing line asked for mid-turn is the next turn, not more of this one
        await self._send(wire.context_append("commentary", instruction or SPEAK_NOW))

    async def answer_tools(self, outputs: Sequence[ToolOutput]) -> None:
        """One ``function_call_output`` each (cut to ``MAX_OUTPUT_CHARS``, a placeholder past the budget),
        then ``response.create`` once no handed call is left unanswered."""
        for output in outputs:
            await self._send(wire.function_call_output(output.call_id, self._tools.answer(output.call_id,
                                                                                           output.output)))
        if self._tools.all_answered:
            self._turns.continued_at = time.monotonic()
            await self._send(wire.response_create())

    async def interrupted(self, cuts: Sequence[Truncation], cancel: bool) -> None:
        """Nothing: GPT-Live handles barge-in itself and has no truncate or cancel."""

    async def set_noise_reduction(self, mode: str) -> None:
        raise ModelRefused("GPT-Live has no noise reduction setting")

    @property
    def noise_reduction(self) -> str:
        return "off"

    @property
    def busy(self) -> bool:
        """The voice is speaking, was asked to, or a delegated task is under way."""
        turns = self._turns
        return turns.speaking or turns.waiting(time.monotonic()) or self._tools.running

    def overdue(self, now: float) -> str | None:
        return None  # the model takes its own turns: there is no request to be late for

    @property
    def end(self) -> SessionEnd:
        socket = self._socket
        code = socket.close_code if socket is not None else None
        closed = self._closed
        reason = f"session.closed {closed.reason}" if closed else (socket.close_reason if socket else "") or "-"
        at_limit = self.expires_at is not None and time.time() >= self.expires_at - EXPIRY_MARGIN_S
        return SessionEnd(code, reason, (closed is not None and closed.reason == "expired") or at_limit)

    @property
    def billed_seconds(self) -> float | None:
        return self._billed

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage()  # billed per second; the backend's tokens are billed apart

    async def close(self) -> None:
        """``session.close``, then up to ``CLOSE_WAIT_S`` for ``session.closed`` (and its billed seconds),
        then close the socket. Safe to call twice, and while another task reads the session."""
        socket = self._socket
        if socket is None:
            return
        if not socket.closed and self._closed is None:
            await self._send(wire.session_close())
            try:
                async with asyncio.timeout(CLOSE_WAIT_S):
                    if self._reading:  # the reader sees session.closed
                        await self._closed_seen.wait()
                    else:
                        while self._closed is None and (raw := await socket.receive()) is not None:
                            await self._finalising(raw)
            except TimeoutError:
                self._log.info("no session.closed within %.0f s of session.close", CLOSE_WAIT_S)
        await socket.close()

    # -- what the call does not see --

    async def _receive(self) -> bytes | None:
        """The next frame; at the socket's end, None and ``_eof``. No deadline of its own: the service streams
        audio continuously (silence included), so a turn's quiet gap is seen at the next frame. (Cancelling
        aiohttp's ``receive`` would mark the socket 1006.)"""
        assert self._socket is not None, "open() first"
        self._reading = True
        try:
            raw = await self._socket.receive()
        finally:
            self._reading = False
        if raw is None:
            self._eof = True
            self._turns.close_quiet(float("inf"))  # whatever was open ends with the session
        return raw

    async def _handle(self, event: Any, now: float) -> None:
        kind = type(event)
        if kind is TranscriptDelta:
            self._turns.transcript(event.caller, event.delta, now)
            if not event.caller:
                self._tools.voice_spoke()
        elif kind is Backend:
            self._tools.on_backend(event.delegation_id, event.call, event.call_status, event.status)
        elif kind is LiveError:
            await self._on_error(event)
        elif kind is Usage:
            self._billed = event.seconds
        elif kind is Closed:  # the session is over, whether or not the service closes the socket
            self._on_closed(event)
            assert self._socket is not None
            await self._socket.close()
        elif kind is OtherEvent:
            self._log.once_a_second(logging.DEBUG, event.type, "live %s ignored", event.type)

    async def _on_error(self, event: LiveError) -> None:
        if event.code == "function_call_outputs_required":
            # Answer the cut-short calls the service still waits for, then ask again (calls the tools are
            # running are answered when they finish, and response.create goes then).
            strays = self._tools.strays()
            for call_id in strays:
                await self._send(wire.function_call_output(call_id, PLACEHOLDER))
            if strays and self._tools.all_answered:
                await self._send(wire.response_create())
        self._queue.append(ModelError(event.type, event.code, event.message))

    def _on_closed(self, event: Closed) -> None:
        self._closed = event
        if event.seconds is not None:
            self._billed = event.seconds
        self._closed_seen.set()

    async def _finalising(self, raw: bytes) -> None:
        """A frame read while closing with no reader: only the end and the usage matter."""
        try:
            event = wire.parse_server_event(raw)
        except MalformedEvent:
            return
        if type(event) is Closed:
            self._on_closed(event)
        elif type(event) is Usage:
            self._billed = event.seconds

    async def _send(self, event: dict[str, Any]) -> None:
        """Send one client event; on a session that has just closed it is dropped (iteration ends)."""
        if self._socket is not None:
            await self._socket.send_event(event)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)

"""GPT-Live as a model session: its websocket, its turns told from the stream, its delegated tools.

``LiveSession`` implements ``model.session.ModelSession`` with the builders and parser of
``model.live_wire`` over a ``model.websocket.RealtimeSocket``. GPT-Live's voice model takes its own turns
and handles barge-in itself, so what the call sees as turns is made here, from the stream:

- **Assistant turns**: output audio is a continuous real-time stream, silence included. Silence is not
  sent to the phone (the phone plays silence when it has nothing), so what is queued there is the voice's
  speech only; a turn opens with the first speech (audio or transcript) and closes after ``TURN_GAP_S``
  without either (``ResponseStarted`` ... ``ResponseDone``, with the transcript's deltas joined).
- **Caller turns**: ``session.input_transcript.delta`` fragments, grouped the same way; the first of a
  turn is ``CallerSpeechStarted`` (a barge-in if the assistant is audible: counted, nothing cut).
- **Tools**: the backend's completed ``function_call`` items of one delegated response are handed over as
  one ``ResponseDone`` when that response finishes; their outputs go back with one ``response.create``
  once no handed call is unanswered (the service refuses a partial batch), and the voice speaks the
  result by itself.

Sources: ``openai.types.live``; OpenAI "Live conversations" and "Live delegation" guides; the turn gap of
0.8 s is the one pipecat and LiveKit Agents use for GPT-Live transcripts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from model import live_wire as wire
from model.live_wire import Backend, Closed, LiveError, MalformedEvent, OtherEvent, OutputAudio, Started, Usage
from model.live_wire import Transcript as TranscriptDelta
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
    ModelError,
    ModelEvent,
    ModelRefused,
    ModelUnavailable,
    ResponseDone,
    ResponseStarted,
    SessionClosed,
    SessionEnd,
    ToolOutput,
    Truncation,
    VoiceApi,
)
from model.websocket import RealtimeClient, RealtimeSocket
from redact import CallLog, describe

TURN_GAP_S = 0.8
"""The assistant's turn ends after this long without its speech or transcript (pipecat's and LiveKit
Agents' gap for GPT-Live)."""
CALLER_TURN_GAP_S = 1.5
"""The caller's turn ends after this long without a transcript fragment: longer than the assistant's, as
fragments of the caller's words may lag their speech (a turn split in two reads badly in the log and the
replay; nothing waits on its end)."""
ASKED_WINDOW_S = 8.0
"""A turn that starts within this long of ``respond`` answers it (the goodbye is told apart this way)."""
CLOSE_WAIT_S = 3.0
"""After ``session.close``, how long the service has to answer ``session.closed`` (it may finish work)."""
SPEAK_NOW = "Speak to the caller now, following the conversation so far."
MAX_OUTPUT_CHARS = 2500
"""A tool output longer than this is cut: the backend takes 32 KiB of input per session."""
BACKEND_BUDGET = (120, 30_000)
"""Items and UTF-8 bytes of tool output a session sends at most (the backend's limits are 128 and 32,768;
past them it refuses the item and strands the call): beyond, a call gets a short placeholder."""
PLACEHOLDER = '{"ok": false, "error": "no result: the tool output budget of this session is spent"}'


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


@dataclass(slots=True)
class _Turn:
    """One side's turn as it is heard: its id, its transcript so far, and when it last spoke."""

    id: str
    last_at: float
    parts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Delegation:
    """One delegated backend response: its completed calls, and whether the voice spoke meanwhile."""

    calls: list[FunctionCall] = field(default_factory=list)
    voiced: bool = False


class LiveSession:
    """One GPT-Live session (``model.session.ModelSession``): iterate it for model events."""

    api = VoiceApi.LIVE
    truncates = False

    def __init__(self, client: RealtimeClient, options: LiveOptions, log: CallLog) -> None:
        self._client = client
        self._options = options
        self._log = log
        self._socket: RealtimeSocket | None = None
        self._history: list[dict[str, Any]] | None = None
        self._queue: deque[ModelEvent] = deque()
        self._assistant: _Turn | None = None
        self._caller: _Turn | None = None
        self._turns = 0
        self._asked_at: float | None = None
        self._continued_at: float | None = None
        """When tool outputs made the backend continue: the voice speaks the result itself (its next turn)."""
        self._delegations: dict[str | None, _Delegation] = {}
        self._handed: set[str] = set()
        self._answered: set[str] = set()
        self._stray: set[str] = set()
        """Calls the backend cut short (``status`` not ``completed``): not run, but answered with a
        placeholder if the service says it still waits for them."""
        self._budget = list(BACKEND_BUDGET)
        self._closed: Closed | None = None
        self._closed_seen = asyncio.Event()
        self._billed: float | None = None
        self._reading = False
        self._eof = False
        self._warned: set[str] = set()
        self.expires_at: int | None = None
        """When the service will end the session (Unix seconds), from ``session.started``."""

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        """Open the websocket, send ``session.start`` and wait for ``session.started``.

        Raises:
            ModelUnavailable: the service could not be reached or refused the handshake within
                ``connect_timeout_s``, answered ``session.start`` with an ``error`` (a bad model or voice,
                no quota), closed, or did not confirm within ``configure_timeout_s``.
        """
        options = self._options
        try:
            socket = await self._client.connect(options.url, options.api_key, connect_timeout_s)
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            raise ModelUnavailable(f"live connect failed: {describe(exc)}") from None
        self._socket = socket
        started = False
        try:
            session = wire.live_session(model=options.model, instructions=options.instructions, voice=options.voice,
                                        backend_model=options.backend_model, tools=options.tools,
                                        history=self._history)
            await socket.send(orjson.dumps(wire.session_start(session)))
            async with asyncio.timeout(configure_timeout_s):
                while (raw := await socket.receive()) is not None:
                    try:
                        event = wire.parse_server_event(raw)
                    except MalformedEvent:
                        continue
                    if type(event) is Started:
                        self.expires_at = event.expires_at
                        started = True
                        return
                    if type(event) is LiveError:
                        raise ModelUnavailable(f"live refused session.start: {event.code}: {event.message}")
        except TimeoutError:
            raise ModelUnavailable(f"no session.started within {configure_timeout_s:.0f}s") from None
        except SessionClosed:
            pass
        finally:
            if not started:  # refused, timed out, or the call ended meanwhile (cancelled): nothing leaks
                await socket.close()
        raise ModelUnavailable(f"live closed the session before session.started code={socket.close_code}")

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
            self._close_quiet(now)
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
                turn = self._assistant_turn(now)
                if queue:  # the turn has just opened: its start goes first
                    queue.append(AssistantAudio(turn.id, event.payload))
                    break
                return AssistantAudio(turn.id, event.payload)
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
        now = self._asked_at = time.monotonic()
        if instruction is None and self._continued_at is not None and now - self._continued_at < ASKED_WINDOW_S:
            return
        await self._send(wire.context_append("commentary", instruction or SPEAK_NOW))

    async def answer_tools(self, outputs: Sequence[ToolOutput]) -> None:
        """One ``function_call_output`` each (cut to ``MAX_OUTPUT_CHARS``, a placeholder past the budget),
        then ``response.create`` once no handed call is left unanswered."""
        for output in outputs:
            await self._send(wire.function_call_output(output.call_id, self._fit(output.output)))
            self._answered.add(output.call_id)
        if not self._handed - self._answered:
            self._continued_at = time.monotonic()
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
        now = time.monotonic()
        waiting = any(at is not None and now - at < ASKED_WINDOW_S for at in (self._asked_at, self._continued_at))
        return self._assistant is not None or waiting or bool(self._delegations)

    def overdue(self, now: float) -> str | None:
        return None  # the model takes its own turns: there is no request to be late for

    @property
    def end(self) -> SessionEnd:
        socket = self._socket
        code = socket.close_code if socket is not None else None
        closed = self._closed
        reason = f"session.closed {closed.reason}" if closed else (socket.close_reason if socket else "") or "-"
        return SessionEnd(code, reason, closed is not None and closed.reason == "expired")

    @property
    def billed_seconds(self) -> float | None:
        return self._billed

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
            self._close_quiet(float("inf"))  # whatever was open ends with the session
        return raw

    async def _handle(self, event: Any, now: float) -> None:
        kind = type(event)
        if kind is TranscriptDelta:
            if event.caller:
                turn = self._caller_turn(now)
                self._queue.append(CallerTranscriptDelta(turn.id, event.delta))
            else:
                turn = self._assistant_turn(now)
                self._queue.append(AssistantTranscriptDelta(turn.id, event.delta))
            turn.parts.append(event.delta)
        elif kind is Backend:
            self._on_backend(event)
        elif kind is LiveError:
            await self._on_error(event)
        elif kind is Usage:
            self._billed = event.seconds
        elif kind is Closed:
            self._on_closed(event)
        elif kind is OtherEvent:
            self._log.once_a_second(logging.DEBUG, event.type, "live %s ignored", event.type)

    def _assistant_turn(self, now: float) -> _Turn:
        turn = self._assistant
        if turn is None:
            self._turns += 1
            turn = self._assistant = _Turn(f"live_turn_{self._turns}", now)
            asked = self._asked_at is not None and now - self._asked_at < ASKED_WINDOW_S
            self._asked_at = self._continued_at = None
            self._queue.append(ResponseStarted(turn.id, asked))
        turn.last_at = now
        for delegation in self._delegations.values():
            delegation.voiced = True
        return turn

    def _caller_turn(self, now: float) -> _Turn:
        turn = self._caller
        if turn is None:
            self._turns += 1
            turn = self._caller = _Turn(f"live_caller_{self._turns}", now)
            self._queue.extend((CallerSpeechStarted(), CallerTurn(turn.id)))
        turn.last_at = now
        return turn

    def _close_quiet(self, now: float) -> None:
        """End each turn that has been quiet for ``TURN_GAP_S`` at ``now``."""
        caller, assistant = self._caller, self._assistant
        if caller is not None and now - caller.last_at >= CALLER_TURN_GAP_S:
            self._caller = None
            self._queue.extend((CallerTranscriptDone(caller.id, "".join(caller.parts).strip()), CallerSpeechStopped()))
        if assistant is not None and now - assistant.last_at >= TURN_GAP_S:
            self._assistant = None
            text = "".join(assistant.parts).strip()
            self._queue.extend((AssistantAudioDone(assistant.id), AssistantTranscriptDone(assistant.id, text),
                                ResponseDone(assistant.id, "completed", (), spoke=True)))

    def _on_backend(self, event: Backend) -> None:
        delegation = self._delegations.setdefault(event.delegation_id, _Delegation())
        call = event.call
        if call is not None and event.call_status == "completed":
            delegation.calls.append(call)
        elif call is not None and call.call_id:
            self._stray.add(call.call_id)
        if event.status is None:
            return
        del self._delegations[event.delegation_id]
        calls = tuple(delegation.calls) if event.status == "completed" else ()  # a failed one's are refused
        self._handed.update(call.call_id for call in calls if call.call_id)
        self._queue.append(ResponseDone(f"backend_{event.delegation_id}_{len(self._handed)}", event.status, calls,
                                        delegation.voiced))

    async def _on_error(self, event: LiveError) -> None:
        if event.code == "function_call_outputs_required" and self._stray - self._answered:
            # Answer what the service still waits for, then ask again (calls the tools are running are
            # answered when they finish).
            for call_id in sorted(self._stray - self._answered):
                await self._send(wire.function_call_output(call_id, PLACEHOLDER))
                self._answered.add(call_id)
            if not self._handed - self._answered:
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

    def _fit(self, output: str) -> str:
        """``output`` cut to ``MAX_OUTPUT_CHARS``, or ``PLACEHOLDER`` once the session's budget is spent."""
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + " [cut]"
        size = len(output.encode())
        if self._budget[0] < 1 or self._budget[1] < size:
            output, size = PLACEHOLDER, len(PLACEHOLDER)
        self._budget[0] -= 1
        self._budget[1] -= size
        return output

    async def _send(self, event: dict[str, Any]) -> None:
        """Send one client event; on a session that has just closed it is dropped (iteration ends)."""
        if self._socket is None:
            return
        try:
            await self._socket.send(orjson.dumps(event))
        except SessionClosed:
            pass

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)

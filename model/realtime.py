"""The Realtime API (GA) as a model session: its websocket, its one-response-at-a-time slot, its errors.

``RealtimeSession`` implements ``model.session.ModelSession`` with the builders and parser of
``model.realtime_wire`` over a ``model.websocket.RealtimeSocket``. What only the Realtime API needs is
kept here, out of the call: a response is asked for with ``response.create`` and only one is active at
a time (``ResponseSlot``); the audio a barge-in cut off is dropped by response; a barge-in cancels the
response and truncates each cut item; a noise reduction switch waits for ``session.updated``.

Source: OpenAI Realtime API reference (GA) and the ``openai`` package's ``openai.types.realtime``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from model import realtime_wire as wire
from model.prices import TokenUsage
from model.realtime_wire import (
    AudioDelta,
    MalformedEvent,
    OtherEvent,
    RealtimeError,
    ResponseCreated,
    ResponseSlot,
    SessionUpdated,
    parse_server_event,
)
from model.session import (
    ModelError,
    ModelEvent,
    ModelRefused,
    ResponseDone,
    ResponseStarted,
    SessionEnd,
    ToolOutput,
    Truncation,
    VoiceApi,
)
from model.websocket import RealtimeClient, RealtimeSocket
from redact import CallLog

RESPONSE_CREATED_TIMEOUT_S = 10.0
"""How long the service has to answer ``response.create`` with ``response.created``."""
MIC_CONFIRM_TIMEOUT_S = 4.0
"""How long the service has to confirm a noise reduction switch with ``session.updated``."""


@dataclass(frozen=True, slots=True)
class RealtimeOptions:
    """A deployment's Realtime settings, the same for every session (``model.factory`` builds them)."""

    url: str
    """The websocket URL with ``model`` in its query (``wss://api.openai.com/v1/realtime?model=...``)."""
    api_key: str
    instructions: str
    voice: str
    turn_detection: dict[str, Any] | None
    """``audio.input.turn_detection`` (``semantic_vad`` or ``server_vad``), None for no VAD."""
    transcription_model: str | None
    tools: tuple[dict[str, Any], ...]
    """Function tool definitions (``{"type": "function", "name", ...}``)."""
    reasoning_effort: str | None = None
    """``reasoning.effort``, sent only when the model takes it (``realtime_wire.takes_reasoning``)."""

    def session(self, noise_reduction: str) -> dict[str, Any]:
        """The ``session`` object of ``session.update`` with ``noise_reduction`` (``off``: none)."""
        return wire.realtime_session(
            instructions=self.instructions,
            voice=self.voice,
            turn_detection=self.turn_detection,
            noise_reduction=None if noise_reduction == "off" else noise_reduction,
            transcription_model=self.transcription_model,
            tools=list(self.tools),
            reasoning_effort=self.reasoning_effort,
        )


class RealtimeSession:
    """One Realtime session (``model.session.ModelSession``): iterate it for model events."""

    api = VoiceApi.REALTIME
    truncates = True
    paced_by_input = False

    def __init__(self, client: RealtimeClient, options: RealtimeOptions, noise_reduction: str, log: CallLog) -> None:
        self._client = client
        self._options = options
        self._noise_reduction = noise_reduction
        self._log = log
        self._socket: RealtimeSocket | None = None
        self.slot = ResponseSlot()
        self._create_sent_at: float | None = None
        self._waiters: dict[str, tuple[str, asyncio.Future[None]]] = {}
        """Noise reduction switches awaiting ``session.updated``, by their ``event_id``."""
        self._expired = False
        self._usage = TokenUsage()
        self._pending: list[ModelEvent] = []
        """Events seen while the session was being configured, handed out first."""
        self._warned: set[str] = set()
        self._replay: list[dict[str, Any]] = []
        """Conversation items to send once configured (a replacement session's replay)."""
        self._internal: dict[type, Callable[[Any], Awaitable[ModelEvent | None]]] = {
            SessionUpdated: self._on_session_updated,
            ResponseCreated: self._on_response_created,
            ResponseDone: self._on_response_done,
            RealtimeError: self._on_error,
        }

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        """Open the websocket and send ``session.update`` before anything else, then wait for
        ``session.updated`` (other events before it are kept; errors are logged).

        Raises:
            ModelUnavailable: the service could not be reached or refused the handshake within
                ``connect_timeout_s``, closed, or did not confirm within ``configure_timeout_s``.
        """
        options = self._options

        async def updated(raw: bytes) -> bool:
            try:
                event = parse_server_event(raw)
            except MalformedEvent:
                return False
            if type(event) is RealtimeError:
                self._pending.append(await self._on_error(event))
            if type(event) is not SessionUpdated:
                return False
            await self._on_session_updated(event)
            return True

        self._socket = await self._client.open_configured(
            "realtime", options.url, options.api_key,
            orjson.dumps(wire.session_update(options.session(self._noise_reduction))), updated,
            (connect_timeout_s, configure_timeout_s))
        for item in self._replay:
            await self._send(item)

    def __aiter__(self) -> RealtimeSession:
        return self

    async def __anext__(self) -> ModelEvent:
        """The next model event; StopAsyncIteration once the socket has closed. Safe to cancel."""
        if self._pending:
            return self._pending.pop(0)
        assert self._socket is not None, "open() first"
        receive = self._socket.receive
        while (raw := await receive()) is not None:
            try:
                event = parse_server_event(raw)
            except MalformedEvent as exc:
                if f"realtime-{exc.kind}" not in self._warned:
                    self._warned.add(f"realtime-{exc.kind}")
                    self._log.warning("malformed realtime event ignored (%s)", exc)
                continue
            kind = type(event)
            if kind is AudioDelta:  # the hot path
                if event.response_id in self.slot.interrupted:
                    continue  # generated after the barge-in: the caller must not hear it
                return event
            handler = self._internal.get(kind)
            if handler is not None:
                result = await handler(event)
                if result is not None:
                    return result
            elif kind is OtherEvent:
                self._log.once_a_second(logging.DEBUG, event.type, "realtime %s", event.type)
            else:
                return event  # type: ignore[return-value]  # the interface's own events
        raise StopAsyncIteration

    async def send_audio(self, payload: str) -> None:
        """``input_audio_buffer.append`` with the phone's payload unchanged. Raises SessionClosed."""
        assert self._socket is not None
        await self._socket.send(wire.input_audio_append(payload))

    async def add_note(self, text: str) -> None:
        await self._send(wire.system_message(text))

    def replay(self, intro: str, turns: Sequence[tuple[str, str]]) -> None:
        """Sent as a system message and one message item per turn, right after ``session.updated``."""
        self._replay = [wire.system_message(intro), *(wire.text_message(role, text) for role, text in turns)]

    async def respond(self, instruction: str | None = None) -> None:
        """``instruction`` as a system message, then ``response.create`` now, or once the active response
        is done (``ResponseSlot``)."""
        if instruction is not None:
            await self._send(wire.system_message(instruction))
        if self.slot.request():
            await self._send_create()

    async def answer_tools(self, outputs: Sequence[ToolOutput]) -> None:
        for output in outputs:
            await self._send(wire.function_call_output(output.call_id, output.output))

    async def interrupted(self, cuts: Sequence[Truncation], cancel: bool) -> None:
        """Cancel the active response (``cancel``; its remaining audio is dropped either way) and
        truncate each cut item at ``audio_end_ms``."""
        if self.slot.interrupt() is not None and cancel:
            await self._send(wire.response_cancel())
        for cut in cuts:
            await self._send(wire.item_truncate(cut.item_id, cut.audio_end_ms))

    async def set_noise_reduction(self, mode: str) -> None:
        """Partial ``session.update`` of ``audio.input.noise_reduction``; returns when ``session.updated``
        shows ``mode``. Raises ModelRefused on an ``error`` naming the update, or no confirmation."""
        event_id = f"event_nr_{len(self._waiters)}_{time.monotonic_ns()}"
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[event_id] = (mode, confirmed)
        try:
            await self._send(wire.noise_reduction_update(None if mode == "off" else mode, event_id))
            async with asyncio.timeout(MIC_CONFIRM_TIMEOUT_S):
                await confirmed
        except TimeoutError:
            raise ModelRefused(f"the service did not confirm the switch within {MIC_CONFIRM_TIMEOUT_S:g} s") from None
        finally:
            self._waiters.pop(event_id, None)

    @property
    def noise_reduction(self) -> str:
        return self._noise_reduction

    @property
    def busy(self) -> bool:
        slot = self.slot
        return slot.active is not None or slot.create_in_flight or slot.wanted

    def overdue(self, now: float) -> str | None:
        sent = self._create_sent_at
        if self.slot.create_in_flight and sent is not None and now - sent > RESPONSE_CREATED_TIMEOUT_S:
            return f"no response.created within {RESPONSE_CREATED_TIMEOUT_S:.0f}s of response.create"
        return None

    @property
    def end(self) -> SessionEnd:
        socket = self._socket
        code = socket.close_code if socket is not None else None
        reason = (socket.close_reason if socket is not None else "") or "-"
        return SessionEnd(code, reason, self._expired or code == 1001)

    @property
    def billed_seconds(self) -> float | None:
        return None  # billed per token

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    @property
    def expires_at(self) -> float | None:
        return None  # a fixed 60-minute limit (SESSION_ROLLOVER_S)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    # -- what the call does not see --

    async def _send(self, event: dict[str, Any]) -> None:
        """Send one client event; on a session that has just closed it is dropped (iteration ends)."""
        if self._socket is not None:
            await self._socket.send_event(event)

    async def _send_create(self) -> None:
        self._create_sent_at = time.monotonic()
        await self._send(wire.response_create())

    async def _on_session_updated(self, event: SessionUpdated) -> None:
        if event.noise_reduction is None:
            return None
        self._noise_reduction = event.noise_reduction  # the confirmed state; a switch waits for it
        for event_id, (mode, confirmed) in list(self._waiters.items()):
            if mode == event.noise_reduction and not confirmed.done():
                confirmed.set_result(None)
                del self._waiters[event_id]
        return None

    async def _on_response_created(self, event: ResponseCreated) -> ResponseStarted:
        return ResponseStarted(event.response_id, self.slot.on_created(event.response_id))

    async def _on_response_done(self, event: ResponseDone) -> ResponseDone:
        if event.usage is not None:
            self._usage.add(event.usage)
        if self.slot.on_done(event.response_id):
            await self._send_create()
        return event

    async def _on_error(self, event: RealtimeError) -> ModelError:
        waiter = self._waiters.pop(str(event.event_id), None)
        if waiter is not None and not waiter[1].done():
            waiter[1].set_exception(ModelRefused(f"the service refused the switch: {event.message}"))
        if event.code == "conversation_already_has_active_response":
            self.slot.on_refused()
        elif event.code == "session_expired":  # the close that follows ends the session, not a drop
            self._expired = True
        harmless = event.code == "response_cancel_not_active"
        return ModelError(event.type, event.code, event.message, harmless)

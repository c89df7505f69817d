"""A stand-in for GPT-Live (``/v1/live/sessions``), served beside the Realtime one by ``RealtimeStandIn``.

It behaves as the service is documented to (``openai.types.live`` and OpenAI's Live guides): the first
client event must be ``session.start`` (a model it does not serve is refused with an ``error`` and the
socket closed); output audio is a continuous stream paced in real time, silence included; the model takes
its own turns: it speaks the next scripted turn when asked to by a speakable context append, when the
caller has finished speaking (its own VAD), or when its backend has the tool results, and stops talking
``YIELD_MS`` after the caller starts speaking over it; transcripts come as timed deltas; a turn's
function calls are delegated to a Responses backend whose events come wrapped in ``response.event``, and
``response.create`` is refused with ``function_call_outputs_required`` until every call has its output.
``session.close`` (or ``expire``) ends with ``session.closed`` and the billed seconds.

Every client event is validated against ``openai.types.live.ClientEvent`` (an invalid one is answered with
an ``error``) and every server event it sends against ``ServerEvent``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from audio import BYTES_PER_MS, ULAW_SILENCE
from standins.vad import Vad
from standins.validation import live_client_event_problems, live_server_event_problems

if TYPE_CHECKING:
    from standins.openai_service import AssistantTurn, RealtimeStandIn

MODELS = ("gpt-live-1", "gpt-live-1.1")
YIELD_MS = 200
"""How long the model goes on talking once the caller starts speaking over it."""
ANSWER_DELAY_MS = 300
"""How long after the caller stops speaking (or is asked) the model starts its answer."""
TRANSCRIPT_LAG_MS = 400
"""How far into the caller's speech the first input transcript fragment comes."""
TRANSCRIPT_STEP_MS = 600
"""Then one word this often while the caller speaks (slower than speech: the words left come at its end)."""
USAGE_EVERY_S = 5.0
"""How often ``session.usage.updated`` reports the billed seconds."""


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(slots=True)
class Yield:
    """The model stopped talking because the caller spoke over it (a barge-in)."""

    at: float
    """When its last speech (the delta that held it) finished playing in real time, monotonic seconds."""
    item_id: str
    spoken_ms: float
    """How much of the item it had said."""


@dataclass(slots=True)
class _Speech:
    item_id: str
    turn: AssistantTurn
    pos: int = 0
    words_sent: int = 0


@dataclass(slots=True)
class LiveSession:
    """One connection to the GPT-Live stand-in."""

    standin: RealtimeStandIn
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None = None
    session: dict[str, Any] = field(default_factory=dict)
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """Every client event but ``session.input_audio.append``, with its arrival time."""
    invalid: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    generated: dict[str, int] = field(default_factory=dict)
    """µ-law bytes of speech generated per assistant item."""
    yields: list[Yield] = field(default_factory=list)
    speech: list[list[int | None]] = field(default_factory=list)
    """Each caller turn its VAD heard: ``[start_ms, end_ms]`` (None while it lasts)."""
    function_outputs: list[dict[str, Any]] = field(default_factory=list)
    closed_reason: str | None = None
    started_at: float | None = None
    _speaking: _Speech | None = None
    _caller_since: float | None = None
    _pending_calls: set[str] = field(default_factory=set)
    _vad: Vad = field(default_factory=lambda: Vad(0.5, 300, 700))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _transcribed: int = 0
    _words: list[str] = field(default_factory=list)
    """The words of the caller's turn being heard."""
    _delegation: str | None = None
    """The latest delegation: a ``response.create`` continues it."""

    @property
    def ms(self) -> int:
        """Now on the session timeline (ms since ``session.started``)."""
        return 0 if self.started_at is None else int((time.monotonic() - self.started_at) * 1000)

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] != "session.output_audio.delta":
            event.setdefault("event_id", _id("sev"))
            problems = live_server_event_problems(event)
            assert not problems, f"the stand-in would send an invalid {event['type']}: {problems}"
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(event))

    async def send_raw(self, text: str) -> None:
        """Send a frame as it is (an event the protocol does not have, or not JSON at all)."""
        await self.ws.send_str(text)

    def drop(self) -> None:
        """Lose the connection as a network failure does: no close frame (the relay sees 1006)."""
        self._note("connection dropped")
        if self.transport is not None:
            self.transport.abort()

    async def error(self, code: str, message: str, client_event_id: str | None = None) -> None:
        body = {"type": "invalid_request_error", "code": code, "message": message, "client_event_id": client_event_id}
        self.errors.append(body)
        self._note(f"error {code}: {message}")
        await self.send({"type": "error", "error": body})

    def _note(self, text: str) -> None:
        if self.standin.note is not None:
            self.standin.note("live", text)

    async def serve(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    await self.error("invalid_json", "The server could not parse the event as JSON.")
                    continue
                if not isinstance(event, dict):
                    await self.error("invalid_value", "An event must be a JSON object.")
                    continue
                if event.get("type") != "session.input_audio.append":
                    self.received.append((time.monotonic(), event))
                problems = live_client_event_problems(event)
                if problems:
                    self.invalid.append((event, problems))
                    await self.error("unknown_parameter" if problems[0].startswith("unknown") else "invalid_value",
                                     f"Invalid event: {'; '.join(problems[:3])}", event.get("event_id"))
                    continue
                await self.handle(event)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.started_at is None and kind != "session.start":
            await self.error("session_not_started", "Send session.start first.", event.get("event_id"))
        elif kind == "session.start":
            await self._start(event)
        elif kind == "session.input_audio.append":
            for what, ms in self._vad.feed(base64.b64decode(event["audio"])):
                await self._on_vad(what, ms)
        elif kind == "session.commentary.append":
            await self.send({"type": "session.commentary.appended", "client_event_id": event.get("event_id"),
                             "start_ms": self.ms, "end_ms": self.ms})
            self._note(f"commentary {event['content'][:60]!r}")
            self._later(self._answer(ANSWER_DELAY_MS))
        elif kind == "response.item.create":
            item = event["item"]
            if item.get("type") == "function_call_output":
                self.function_outputs.append(item)
                self._pending_calls.discard(item["call_id"])
                self._note(f"function_call_output {item['output'][:80]}")
        elif kind == "response.create":
            await self._continue(event)
        elif kind == "session.close":
            await self.close("close_requested", event.get("event_id"))

    async def _start(self, event: dict[str, Any]) -> None:
        config = event["session"]
        if self.started_at is not None:
            await self.error("session_already_started", "session.start may be sent once.", event.get("event_id"))
            return
        if config["model"] not in MODELS:
            await self.error("model_not_found", f"The model {config['model']} does not exist or you do not have "
                             "access to it.", event.get("event_id"))
            await self.ws.close()
            return
        expires_in = self.standin.live_expires_in_s
        self.session = {**config, "id": _id("live"), "status": "active", "expires_at": int(time.time() + expires_in)}
        self.started_at = time.monotonic()
        self._note(f"session.start -> session.started ({len(config.get('input') or [])} history items)")
        await self.send({"type": "session.started", "client_event_id": event.get("event_id"), "session": self.session})
        self._later(self._stream())
        self._later(self._expire_in(expires_in))

    def _later(self, coroutine: Any) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    # -- the voice: a continuous, real-time stream --

    async def _stream(self) -> None:
        """One output audio delta every ``live_delta_ms`` on an absolute schedule: speech while speaking,
        else µ-law silence; the usage every ``USAGE_EVERY_S``."""
        step_ms = self.standin.live_delta_ms
        size = step_ms * BYTES_PER_MS
        silence = base64.b64encode(ULAW_SILENCE * size).decode()
        start, n, usage_due = time.monotonic(), 0, USAGE_EVERY_S
        while not self.ws.closed:
            speech = self._speaking
            if speech is None:
                await self.send({"type": "session.output_audio.delta", "delta": silence})
            else:
                await self._speak(speech, size, step_ms)
            n += 1
            elapsed = n * step_ms / 1000
            if elapsed >= usage_due:
                usage_due += USAGE_EVERY_S
                await self.send({"type": "session.usage.updated", "usage": {"seconds": round(elapsed, 1)}})
            await asyncio.sleep(max(0.0, start + elapsed - time.monotonic()))

    async def _speak(self, speech: _Speech, size: int, step_ms: int) -> None:
        ulaw, words = speech.turn.ulaw, speech.turn.transcript.split()
        chunk = ulaw[speech.pos : speech.pos + size]
        payload = base64.b64encode(chunk + ULAW_SILENCE * (size - len(chunk))).decode()
        self.standin.attribute(payload, speech.item_id, speech.pos)
        await self.send({"type": "session.output_audio.delta", "delta": payload})
        start_ms = self.ms
        speech.pos += len(chunk)
        self.generated[speech.item_id] = speech.pos
        due = len(words) * speech.pos // max(1, len(ulaw))
        if due > speech.words_sent:
            text = (" " if speech.words_sent else "") + " ".join(words[speech.words_sent : due])
            await self.send({"type": "session.output_transcript.delta", "delta": text, "start_ms": start_ms,
                             "end_ms": start_ms + step_ms})
            speech.words_sent = due
        if self._caller_since is not None and time.monotonic() - self._caller_since >= YIELD_MS / 1000:
            self._speaking = None  # it yields to the caller
            spoken_ms = speech.pos / BYTES_PER_MS
            self.yields.append(Yield(time.monotonic() + len(chunk) / BYTES_PER_MS / 1000, speech.item_id, spoken_ms))
            self._note(f"yields to the caller after {spoken_ms:.0f} ms of {len(ulaw) / BYTES_PER_MS:.0f} ms")
        elif speech.pos >= len(ulaw):
            self._speaking = None
            self._note(f"said {speech.turn.transcript[:50]!r}")
            self._later(self._delegate(speech.turn))

    async def _answer(self, delay_ms: int) -> None:
        """Speak the next scripted turn after ``delay_ms`` (a turn without audio only delegates)."""
        await asyncio.sleep(delay_ms / 1000)
        if self._speaking is not None or self.ws.closed:
            return
        turn = self.standin.next_turn(self)
        if turn.ulaw:
            self._speaking = _Speech(_id("item"), turn)
            self.generated[self._speaking.item_id] = 0
        else:
            await self._delegate(turn)

    async def _on_vad(self, what: str, ms: int) -> None:
        if what == "started":
            self._caller_since = time.monotonic()
            self.speech.append([ms, None])
            self._note(f"hears the caller at {ms} ms")
            texts, n = self.standin.caller_transcripts, self._transcribed
            self._transcribed += 1
            if self.standin.standalone:
                texts = texts[n:]
            self._words = (texts.pop(0) if texts else f"(speech starting at {ms} ms)").split()
            self._later(self._transcribe(ms, first=True))  # transcripts stream while the caller speaks
            return
        self._caller_since = None
        if self.speech:
            self.speech[-1][1] = ms
        await self._transcribe(ms, first=False)
        self._later(self._answer(ANSWER_DELAY_MS))

    async def _transcribe(self, ms: int, first: bool) -> None:
        """``session.input_transcript.delta`` as the caller speaks: a word every ``TRANSCRIPT_STEP_MS`` from
        ``TRANSCRIPT_LAG_MS`` into their speech (``first``), the words left when it ends."""
        if not first:
            part, self._words = self._words, []
            if part:
                await self.send({"type": "session.input_transcript.delta", "delta": " " + " ".join(part),
                                 "start_ms": max(0, ms - 600), "end_ms": ms})
            return
        await asyncio.sleep(TRANSCRIPT_LAG_MS / 1000)
        at = ms + TRANSCRIPT_LAG_MS
        while self._caller_since is not None and len(self._words) > 1:
            word = self._words.pop(0)
            await self.send({"type": "session.input_transcript.delta", "delta": " " + word, "start_ms": at - 200,
                             "end_ms": at})
            await asyncio.sleep(TRANSCRIPT_STEP_MS / 1000)
            at += TRANSCRIPT_STEP_MS

    # -- the delegated backend --

    async def _delegate(self, turn: AssistantTurn) -> None:
        if not turn.function_calls:
            return
        delegation_id, response_id = _id("dlg"), _id("resp")
        await self.send({"type": "session.delegation.created", "offset_ms": self.ms,
                         "delegation": {"id": delegation_id, "type": "delegation", "target": "responses",
                                        "response_id": response_id}})
        await self._backend(delegation_id, {"type": "response.created",
                                            "response": {"id": response_id, "status": "in_progress"}})
        for index, (name, arguments) in enumerate(turn.function_calls):
            call_id = _id("call")
            args = arguments if isinstance(arguments, str) else json.dumps(arguments)
            status = "incomplete" if name in self.standin.live_cut_short else "completed"
            item = {"id": _id("fc"), "type": "function_call", "status": status, "call_id": call_id, "name": name,
                    "arguments": args}
            self._pending_calls.add(call_id)
            self._note(f"delegates {name}({args[:60]})")
            await self._backend(delegation_id, {"type": "response.output_item.done", "output_index": index,
                                                "item": item})
        await self._backend(delegation_id, {"type": "response.completed", "response": {
            "id": response_id, "status": "completed", "output": [],
            "usage": {"input_tokens": 800, "output_tokens": 30, "total_tokens": 830}}})
        self._delegation = delegation_id

    async def _backend(self, delegation_id: str, event: dict[str, Any]) -> None:
        await self.send({"type": "response.event", "delegation_id": delegation_id, "event": event})

    async def _continue(self, event: dict[str, Any]) -> None:
        """``response.create``: refused while a call has no output; else the backend finishes and the voice
        speaks the result (the next scripted turn)."""
        if self._pending_calls:
            await self.error("function_call_outputs_required", "Every pending function call needs a "
                             "function_call_output before response.create.", event.get("event_id"))
            return
        delegation_id, response_id = self._delegation or _id("dlg"), _id("resp")
        await self._backend(delegation_id, {"type": "response.created",
                                            "response": {"id": response_id, "status": "in_progress"}})
        await self._backend(delegation_id, {"type": "response.completed", "response": {
            "id": response_id, "status": "completed", "output": []}})
        self._later(self._answer(50))

    async def close(self, reason: str, client_event_id: str | None = None) -> None:
        """``session.closed`` with ``reason`` and the billed seconds, then close the socket."""
        if self.closed_reason is not None or self.ws.closed:
            return
        self.closed_reason = reason
        seconds = round(self.ms / 1000, 1)
        self._note(f"session.closed {reason} ({seconds} s billed)")
        await self.send({"type": "session.closed", "client_event_id": client_event_id, "reason": reason,
                         "session": self.session, "usage": {"seconds": seconds}})
        await self.ws.close()

    async def _expire_in(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.expire()

    async def expire(self) -> None:
        """End the session at its time limit, as the service does."""
        await self.close("expired")

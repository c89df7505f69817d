"""Stand-ins for the OpenAI services, on loopback: the Realtime API (GA protocol over a websocket)
and the Responses API (``POST /v1/responses``, for web searches).

They speak the protocols as the ``openai`` package's own types define them: every client event
received is validated against ``RealtimeClientEvent`` (an invalid one is answered with an
``error``, as the service does), and every event and response they send is valid too. What they
receive is recorded for the tests' assertions. ``note(source, text)`` (optional) hears what
happens, for a timeline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from openai.types.responses import Response

from audio import BYTES_PER_MS, ULAW_SILENCE
from standins.live_service import LiveSession
from standins.usage import response_usage
from standins.vad import Vad
from standins.validation import client_event_problems, responses_request_problems, warm_up_validators

Note = Callable[[str, str], None]
"""Hears ``(source, text)``: ``realtime`` or ``responses``, and what happened."""

# --- Scenario --------------------------------------------------------------------------------


@dataclass(slots=True)
class AssistantTurn:
    """One scripted response: spoken audio (µ-law) with its transcript, and/or function calls."""

    ulaw: bytes = b""
    transcript: str = ""
    function_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    """(name, arguments) after the audio, in order; a str is sent as the arguments verbatim."""
    delta_ms: tuple[int, int] = (40, 240)
    """Range of random audio delta sizes (ms of audio per ``response.output_audio.delta``)."""
    speed: float = 8.0
    """How much faster than real time deltas are sent (the service runs ahead of playback)."""


@dataclass(slots=True)
class WebSearchScript:
    """How the Responses stand-in (``POST /v1/responses``) answers a web search."""

    answer: str = "It is sunny in Paris today, around 18 degrees ([Météo-France](https://meteofrance.com/paris))."
    source_url: str | None = "https://meteofrance.com/paris"
    """Cited as a ``url_citation`` annotation; None: no citation."""
    delay_ms: int = 0
    """How long the search takes."""
    status: int = 200
    """HTTP status; anything else answers an API error body."""


# --- Realtime stand-in -------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a partial session.update: only the fields sent change; ``audio.input`` and
    ``audio.output`` merge field by field, and objects below them (format, turn_detection,
    noise_reduction) are replaced whole, as the service does."""
    merged = {**base, **{k: v for k, v in update.items() if k != "audio"}}
    audio_update = update.get("audio") or {}
    merged["audio"] = {
        side: {**base.get("audio", {}).get(side, {}), **(audio_update.get(side) or {})} for side in ("input", "output")
    }
    return merged


@dataclass(slots=True)
class Truncate:
    """A ``conversation.item.truncate`` the stand-in received, and its outcome."""

    at: float
    item_id: str
    audio_end_ms: int
    generated_ms: float
    error: str | None


class RealtimeSession:
    """One connection to the Realtime stand-in: GA session state, VAD, scripted responses."""

    def __init__(self, standin: RealtimeStandIn, ws: web.WebSocketResponse,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.standin = standin
        self.ws = ws
        self._transport = transport
        self.session: dict[str, Any] = {
            "type": "realtime",
            "model": "gpt-realtime-2.1",
            "output_modalities": ["audio"],
            "instructions": "",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        }
        self.received: list[tuple[float, dict[str, Any]]] = []
        """Every client event but ``input_audio_buffer.append``, with its arrival time."""
        self.append_times: list[float] = []
        """Arrival time of each ``input_audio_buffer.append`` (the audio is in ``input_audio``).
        Keeping the events themselves would fill the heap and make GC pauses skew timing."""
        self.sent: list[dict[str, Any]] = []
        """Every server event except audio deltas (too many to keep)."""
        self.done_at: dict[str, float] = {}
        """When each completed ``response.done`` was sent, by response id."""
        self.invalid: list[tuple[dict[str, Any], list[str]]] = []
        self.errors: list[dict[str, Any]] = []
        self.truncates: list[Truncate] = []
        self.generated: dict[str, int] = {}
        """µ-law bytes generated per assistant item."""
        self.function_outputs: list[dict[str, Any]] = []
        self.vad: Vad | None = None
        self.speech: list[list[int | None]] = []
        """Each turn the VAD detected: ``[audio_start_ms, audio_end_ms]`` (None while it lasts)."""
        self.transcribed = 0
        self.active: asyncio.Task[None] | None = None
        self.active_id: str | None = None
        self.last_item_id: str | None = None
        self.speaking: tuple[dict[str, Any], dict[str, Any], list[str]] | None = None
        """The assistant audio item being generated: its ids, the item, the transcript's words."""
        self.spoken_words = 0
        """Words of ``speaking``'s transcript sent so far."""
        self.input_bytes = 0
        self.read_bytes = 0
        """Caller audio an earlier response read (the next reads it again, cached)."""
        self.updated_at: float | None = None
        """When the first session.updated was sent."""
        self._later: list[asyncio.Task[None]] = []

    async def expire(self) -> None:
        """End the session as the service does at its 60-minute limit: an ``error`` with code
        ``session_expired``, then close 1001 (protocols.md §C6)."""
        message = "Your session hit the maximum duration of 60 minutes."
        self._note("session expired")
        await self.error("session_expired", message)
        await self.ws.close(code=1001, message=message.encode())

    def drop(self) -> None:
        """Lose the connection as a network failure does: no close frame (the relay sees 1006)."""
        self._note("connection dropped")
        if self._transport is not None:
            self._transport.abort()

    def replayed(self) -> list[tuple[str, str]]:
        """``(role, text)`` of every user or assistant message item the relay created, in order."""
        return [
            (event["item"]["role"], part.get("text", ""))
            for _, event in self.received
            if event["type"] == "conversation.item.create"
            and event.get("item", {}).get("role") in ("user", "assistant")
            for part in event["item"].get("content", [])
        ]

    def system_texts(self) -> list[str]:
        """The text of every system message item the relay created, in order."""
        return [
            part.get("text", "")
            for _, event in self.received
            if event["type"] == "conversation.item.create" and event.get("item", {}).get("role") == "system"
            for part in event["item"].get("content", [])
        ]

    def _note(self, text: str) -> None:
        if self.standin.note is not None:
            self.standin.note("realtime", text)

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _new_id("event"))
        if event["type"] != "response.output_audio.delta":
            self.sent.append(event)
        await self.ws.send_str(json.dumps(event))

    async def error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        """Send an ``error`` event shaped like the service's."""
        body = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        self.errors.append(body)
        self._note(f"error {code}: {message}")
        await self.send({"type": "error", "error": body})

    def _configure_vad(self) -> None:
        td = self.session["audio"]["input"].get("turn_detection")
        if not td:
            self.vad = None
        elif td["type"] == "server_vad":
            self.vad = Vad(
                td.get("threshold", 0.5), td.get("prefix_padding_ms", 300), td.get("silence_duration_ms", 500)
            )
        else:  # semantic_vad: how long a pause ends a turn depends on eagerness
            pause = {"low": 1000, "medium": 600, "auto": 600, "high": 300}[td.get("eagerness", "auto")]
            self.vad = Vad(0.5, 300, pause)

    async def serve(self) -> None:
        await self.send({"type": "session.created", "session": self.session})
        self._configure_vad()
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            now = time.monotonic()
            try:
                event = json.loads(msg.data)
            except ValueError:
                await self.error("invalid_json", "The server could not parse the event as JSON.")
                continue
            if isinstance(event, dict) and event.get("type") == "input_audio_buffer.append":
                self.append_times.append(now)
            else:
                self.received.append((now, event))
            problems = client_event_problems(event)
            if problems:
                self.invalid.append((event, problems))
                await self.error(
                    "unknown_parameter" if problems[0].startswith("unknown") else "invalid_value",
                    f"Invalid event: {'; '.join(problems[:3])}",
                    event_id=event.get("event_id"),
                )
                continue
            await self.handle(event)
            if self.standin.stall and self.updated_at is not None:
                self._note("stalls: reads nothing more and answers no ping")
                await asyncio.Event().wait()  # until the server shuts down
            if self.standin.deaf and self.active is not None:
                self._note("goes deaf: streams its answer but reads nothing more and answers no ping")
                await asyncio.Event().wait()  # the response task goes on sending
        owned = [task for task in [self.active, *self._later] if task is not None]
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            chunk = base64.b64decode(event["audio"])
            self.input_bytes += len(chunk)
            self.standin.on_input_audio(self, chunk)
            if self.vad is not None:
                for what, ms in self.vad.feed(chunk):
                    await self._on_vad(what, ms)
        elif kind == "session.update":
            if "reasoning" in event["session"] and not str(self.session["model"]).startswith("gpt-realtime-2"):
                await self.error("unknown_parameter", f"The model {self.session['model']} does not support "
                                 "'session.reasoning'.", event_id=event.get("event_id"))
                return
            self.session = _merge_session(self.session, event["session"])
            self._configure_vad()
            if self.standin.session_updated_delay_s:  # answer later, reading on meanwhile
                self._later.append(asyncio.create_task(self._session_updated(self.standin.session_updated_delay_s)))
            else:
                await self._session_updated(0.0)
        elif kind == "response.create":
            if self.standin.ignore_response_create:
                return
            if self.active_id is not None:
                await self.error(
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {self.active_id}. "
                    "Wait until the response is finished before creating a new one.",
                    event_id=event.get("event_id"),
                )
                return
            self._start_response()
        elif kind == "response.cancel":
            if self.active is None:
                await self.error("response_cancel_not_active", "Cancellation failed: no active response found")
                return
            await self._cancel("client_cancelled")
        elif kind == "conversation.item.truncate":
            await self._truncate(event)
        elif kind == "conversation.item.create":
            item = dict(event["item"])
            item.setdefault("id", _new_id("item"))
            if item.get("type") == "function_call_output":
                self.function_outputs.append(item)
                self._note(f"function_call_output {item['output']}")
            await self.send({"type": "conversation.item.added", "item": item, "previous_item_id": self.last_item_id})
            await self.send({"type": "conversation.item.done", "item": item, "previous_item_id": self.last_item_id})
            self.last_item_id = item["id"]

    async def _session_updated(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._note("session.update -> session.updated")
        if self.updated_at is None:
            self.updated_at = time.monotonic()
        await self.send({"type": "session.updated", "session": self.session})

    async def _on_vad(self, what: str, ms: int) -> None:
        td = self.session["audio"]["input"]["turn_detection"]
        item_id = self.standin.user_item_ids.setdefault(id(self), _new_id("item"))
        if what == "started":
            self._note(f"speech_started audio_start_ms={ms}")
            self.speech.append([ms, None])
            await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": item_id})
            if td.get("interrupt_response", True) and self.active is not None:
                await self._cancel("turn_detected")
        else:
            del self.standin.user_item_ids[id(self)]
            self._note(f"speech_stopped audio_end_ms={ms}")
            if self.speech:
                self.speech[-1][1] = ms
            await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
            await self.send(
                {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.last_item_id}
            )
            self.last_item_id = item_id
            if self.session["audio"]["input"].get("transcription"):
                self._later.append(asyncio.create_task(self._transcribe(item_id, ms)))
            if td.get("create_response", True) and self.active is None:
                self._start_response()

    async def _transcribe(self, item_id: str, end_ms: int) -> None:
        """The caller's transcript, a little after the commit (asynchronous, as the service's is):
        the next of ``caller_transcripts``, or a placeholder naming the turn's end."""
        await asyncio.sleep(0.05)
        texts, n = self.standin.caller_transcripts, self.transcribed
        self.transcribed += 1
        if self.standin.standalone:  # every session is a new call: its own caller's words, from the first
            texts = texts[n:]
        transcript = texts.pop(0) if texts else f"(caller speech ending at {end_ms} ms)"
        self._note(f"caller transcript {transcript!r}")
        await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                         "content_index": 0, "delta": transcript})
        await self.send({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "content_index": 0,
            "transcript": transcript,
            "usage": {"type": "duration", "seconds": round(end_ms / 1000, 2)},
        })

    def _start_response(self) -> None:
        turn = self.standin.next_turn(self)
        response_id = _new_id("resp")
        self.active_id = response_id
        self.active = asyncio.create_task(self._respond(response_id, turn))

    async def _cancel(self, reason: str) -> None:
        task, response_id = self.active, self.active_id
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        output = []
        if self.speaking is not None:  # the item being generated ends where generation stopped
            ids, item, words = self.speaking
            self.speaking = None
            output.append(await self._item_done(ids, item, " ".join(words[: self.spoken_words]), "incomplete"))
        self._note(f"response.done cancelled ({reason})")
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "cancelled",
                    "status_details": {"type": "cancelled", "reason": reason},
                    "output": output,
                },
            }
        )

    async def _truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        if item_id not in self.generated:
            await self.error("invalid_value", "Only model output audio messages can be truncated", "item_id")
            self.truncates.append(Truncate(time.monotonic(), item_id, end_ms, 0, "not an audio item"))
            return
        generated_ms = self.generated[item_id] / BYTES_PER_MS
        if end_ms > generated_ms:
            message = f"Audio content of {generated_ms:g}ms is already shorter than {end_ms}ms"
            self.truncates.append(Truncate(time.monotonic(), item_id, end_ms, generated_ms, message))
            await self.error("invalid_value", message, "audio_end_ms", event.get("event_id"))
            return
        self.truncates.append(Truncate(time.monotonic(), item_id, end_ms, generated_ms, None))
        self._note(f"truncate {item_id[-6:]} at audio_end_ms={end_ms} (generated {generated_ms:.0f} ms)")
        await self.send(
            {"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0, "audio_end_ms": end_ms}
        )

    async def _respond(self, response_id: str, turn: AssistantTurn) -> None:
        """Stream one scripted response. Cancelling it stops generation where it is."""
        output: list[dict[str, Any]] = []
        try:
            await self.send({"type": "response.created", "response": {
                "id": response_id, "object": "realtime.response", "status": "in_progress", "output": []}})
            self._note(
                f"response.created {response_id[-6:]}" + (f' "{turn.transcript}"' if turn.transcript else "")
            )
            index = 0
            if turn.ulaw:
                output.append(await self._speak(response_id, index, turn))
                index += 1
            for name, arguments in turn.function_calls:
                output.append(await self._function_call(response_id, index, name, arguments))
                index += 1
            self.active, self.active_id = None, None
            await self.send(
                {
                    "type": "response.done",
                    "response": {
                        "id": response_id,
                        "object": "realtime.response",
                        "status": "completed",
                        "output": output,
                        "usage": response_usage(self.input_bytes, self.read_bytes, len(turn.ulaw),
                                                str(self.session["instructions"]), turn.transcript, not self.done_at),
                    },
                }
            )
            self.read_bytes = self.input_bytes
            self.done_at[response_id] = time.monotonic()
            self._note(f"response.done {response_id[-6:]} completed")
        except asyncio.CancelledError:
            self.active, self.active_id = None, None
            raise

    async def _speak(self, response_id: str, index: int, turn: AssistantTurn) -> dict[str, Any]:
        item_id = _new_id("item")
        self.generated[item_id] = 0
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        ids = {"response_id": response_id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self.send(
            {"type": "response.output_item.added", "response_id": response_id, "output_index": index, "item": item}
        )
        await self.send({"type": "response.content_part.added", **ids, "part": {"type": "audio", "transcript": ""}})
        words = turn.transcript.split()
        sent_words = 0
        pos, total = 0, len(turn.ulaw)
        self.speaking = (ids, item, words)
        self.spoken_words = 0
        rng = self.standin.rng
        while pos < total:
            size = rng.randint(*turn.delta_ms) * BYTES_PER_MS
            chunk = turn.ulaw[pos : pos + size]
            payload = base64.b64encode(chunk).decode()
            self.standin.attribute(payload, item_id, pos)
            await self.send({"type": "response.output_audio.delta", **ids, "delta": payload})
            pos += len(chunk)
            self.generated[item_id] = pos
            due_words = len(words) * pos // total
            if due_words > sent_words:
                await self.send(
                    {
                        "type": "response.output_audio_transcript.delta",
                        **ids,
                        "delta": " ".join(words[sent_words:due_words]) + " ",
                    }
                )
                sent_words = self.spoken_words = due_words
            await asyncio.sleep(len(chunk) / BYTES_PER_MS / 1000 / turn.speed)
        self.speaking = None
        return await self._item_done(ids, item, turn.transcript, "completed")

    async def _item_done(self, ids: dict[str, Any], item: dict[str, Any], transcript: str, status: str,
                         ) -> dict[str, Any]:
        """The events that close an assistant audio item: sent when it is complete, and for the part
        generated when its response is cancelled (OpenAI Realtime reference: output_audio.done "is
        also emitted when a Response is interrupted, incomplete, or cancelled")."""
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send({"type": "response.output_audio_transcript.done", **ids, "transcript": transcript})
        part = {"type": "audio", "transcript": transcript}
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        done_item = {**item, "status": status, "content": [{"type": "output_audio", "transcript": transcript}]}
        await self.send({"type": "response.output_item.done", "response_id": ids["response_id"],
                         "output_index": ids["output_index"], "item": done_item})
        self.last_item_id = item["id"]
        return done_item

    async def _function_call(
        self, response_id: str, index: int, name: str, arguments: dict[str, Any] | str
    ) -> dict[str, Any]:
        item_id, call_id = _new_id("item"), _new_id("call")
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        await self.send(
            {"type": "response.output_item.added", "response_id": response_id, "output_index": index, "item": item}
        )
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": index,
                "call_id": call_id,
                "name": name,
                "arguments": args,
            }
        )
        done_item = {**item, "status": "completed", "arguments": args}
        await self.send(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": index, "item": done_item}
        )
        self._note(f"function_call {name}({args})")
        self.last_item_id = item_id
        return done_item


@dataclass(slots=True)
class ResponsesRequest:
    """One ``POST /v1/responses`` the stand-in received."""

    at: float
    """Arrival, monotonic seconds."""
    body: dict[str, Any]
    problems: list[str]
    """Why the body is not a valid ``responses.create`` request ([] when it is)."""


class RealtimeStandIn:
    """A loopback server speaking the OpenAI Realtime GA protocol (``/v1/realtime``) and the
    Responses API for web searches (``POST /v1/responses``).

    Responses come from ``script`` in order (one ``AssistantTurn`` per response; a short
    beep-free silence when the script runs out). Every received event is recorded on its
    ``RealtimeSession`` in ``sessions``; every web search in ``responses_requests``.
    """

    def __init__(
        self,
        script: list[AssistantTurn] | Callable[[RealtimeSession], AssistantTurn] | None = None,
        note: Note | None = None,
        seed: int | None = None,
        web_search: WebSearchScript | None = None,
    ) -> None:
        self.script = script if script is not None else []
        self.web_search = web_search or WebSearchScript()
        self.responses_requests: list[ResponsesRequest] = []
        self.note = note
        self.rng = random.Random(seed)
        self.sessions: list[RealtimeSession] = []
        self.user_item_ids: dict[int, str] = {}
        self.handshake_headers: list[dict[str, str]] = []
        self.session_updated_delay_s = 0.0
        """Delay before answering session.update (tests of the relay's hold buffer)."""
        self.stall = False
        """After session.updated, stop reading the socket (a hung service: pings go unanswered)."""
        self.deaf = False
        """Once a response is streaming, stop reading the socket but keep streaming it (a service that
        sends but no longer listens: pings go unanswered, the relay's frames go unread)."""
        self.ignore_response_create = False
        """Answer response.create with nothing at all."""
        self.refuse = False
        """Refuse every new websocket handshake with 503 (the service is down)."""
        self.caller_transcripts: list[str] = []
        """What the caller said, turn by turn: sent as input transcriptions (when the session asks for
        transcription) in order of the committed turns."""
        self.on_session: Callable[[], None] | None = None
        """Told when a session (a call) opens, before its first event (the standalone stand-ins' timeline
        starts its clock there)."""
        self.standalone = False
        """Serving a relay in another process for as long as it runs (``simulate.py standins``): every
        session starts the script and the caller's transcripts over, no payload is kept for
        ``resolve``, and a session is forgotten when it ends."""
        self.live_sessions: list[LiveSession] = []
        """GPT-Live sessions (``/v1/live/sessions``), in order."""
        self.live_delta_ms = 100
        """Milliseconds of audio per GPT-Live ``session.output_audio.delta`` (its stream's pace)."""
        self.live_expires_in_s = 3600.0
        """How long a GPT-Live session lasts: ``session.closed`` ``expired`` at its ``expires_at``."""
        self.live_cut_short: set[str] = set()
        """Function names GPT-Live's backend calls with ``status: incomplete`` (cut short; still awaited)."""
        self._turns: dict[int, int] = {}
        self._attribution: dict[str, deque[tuple[str, int]]] = {}
        self.input_audio: dict[int, bytearray] = {}
        warm_up_validators()

    async def _live(self, request: web.Request) -> web.WebSocketResponse:
        """``/v1/live/sessions``: a GPT-Live session (``standins.live_service``), the script shared."""
        ws = await self._accept(request)
        session = LiveSession(self, ws, request.transport)
        self.live_sessions.append(session)
        if self.on_session is not None:
            self.on_session()
        try:
            await session.serve()
        finally:
            if self.standalone:
                self.live_sessions.remove(session)
                self._turns.pop(id(session), None)
        return ws

    def turns_used(self, session: RealtimeSession | LiveSession) -> int:
        """How many scripted turns ``session`` has played."""
        return self._turns.get(id(session), 0)

    def next_turn(self, session: RealtimeSession | LiveSession) -> AssistantTurn:
        if callable(self.script):
            return self.script(session)
        n = self._turns.get(id(session), 0)
        self._turns[id(session)] = n + 1
        if n < len(self.script):
            return self.script[n]
        return AssistantTurn(ulaw=ULAW_SILENCE * 800, transcript="")

    def attribute(self, payload: str, item_id: str, offset: int) -> None:
        """Remember which item and byte offset an audio delta payload carries."""
        if self.standalone:
            return
        self._attribution.setdefault(payload, deque()).append((item_id, offset))

    def resolve(self, payload: str) -> tuple[str, int] | None:
        """Which item and offset a payload the caller received came from (FIFO per payload)."""
        queue = self._attribution.get(payload)
        if not queue:
            return None
        found = queue.popleft()
        if not queue:
            del self._attribution[payload]
        return found

    def on_input_audio(self, session: RealtimeSession, chunk: bytes) -> None:
        self.input_audio.setdefault(id(session), bytearray()).extend(chunk)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/v1/live/sessions", self._live)
        app.router.add_post("/v1/responses", self._responses)
        return app

    async def _responses(self, request: web.Request) -> web.Response:
        """``POST /v1/responses``: a web search answered from ``self.web_search``."""
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _api_error(401, "invalid_request_error", "You didn't provide an API key.")
        try:
            body = await request.json()
        except ValueError:
            return _api_error(400, "invalid_request_error", "We could not parse the JSON body of your request.")
        problems = responses_request_problems(body)
        self.responses_requests.append(ResponsesRequest(time.monotonic(), body, problems))
        query = body.get("input") if isinstance(body, dict) else None
        if self.note is not None:
            self.note("responses", f"web search {str(query)!r}")
        if problems:
            return _api_error(400, "invalid_request_error", "Invalid request: " + "; ".join(problems))
        script = self.web_search
        await asyncio.sleep(script.delay_ms / 1000)
        if script.status != 200:
            return _api_error(script.status, "server_error", "The server had an error processing your request.")
        annotations = []
        if script.source_url:
            annotations.append(
                {"type": "url_citation", "url": script.source_url, "title": "source", "start_index": 0,
                 "end_index": len(script.answer)}
            )
        response = {
            "id": _new_id("resp"),
            "object": "response",
            "created_at": time.time(),
            "status": "completed",
            "model": body.get("model"),
            "instructions": body.get("instructions"),
            "output": [
                {"type": "web_search_call", "id": _new_id("ws"), "status": "completed",
                 "action": {"type": "search", "query": str(query)}},
                {"type": "message", "id": _new_id("msg"), "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": script.answer, "annotations": annotations}]},
            ],
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice"),
            "tools": body.get("tools"),
            "error": None,
            "incomplete_details": None,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
        }
        Response.model_validate(response)  # the stand-in must speak the protocol it stands in for
        if self.note is not None:
            self.note("responses", f"answer after {script.delay_ms} ms")
        return web.json_response(response)

    async def _accept(self, request: web.Request) -> web.WebSocketResponse:
        """The websocket handshake both voice APIs share: a bearer key, refused (503) while ``refuse`` is set."""
        self.handshake_headers.append(dict(request.headers))
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            raise web.HTTPUnauthorized(text="missing bearer token")
        if self.refuse:
            raise web.HTTPServiceUnavailable(text="the service is down")
        ws = web.WebSocketResponse(max_msg_size=16 * 2**20)
        await ws.prepare(request)
        return ws

    async def _realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._accept(request)
        session = RealtimeSession(self, ws, request.transport)
        session.session["model"] = request.query.get("model", "gpt-realtime-2.1")
        self.sessions.append(session)
        if self.on_session is not None:
            self.on_session()
        if "OpenAI-Beta" in request.headers:
            await session.error("beta_api_shape_disabled", "The Realtime Beta API is no longer supported.")
            await ws.close()
            return ws
        try:
            await session.serve()
        finally:
            if self.standalone:
                self.sessions.remove(session)
                self.input_audio.pop(id(session), None)
                self._turns.pop(id(session), None)
        return ws


@contextlib.asynccontextmanager
async def serve_on_loopback(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Serve a stand-in's ``app`` on loopback, on ``port`` (0: a free one); yields ``host:port``.

    Raises:
        OSError: the port cannot be bound.
    """
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def realtime_standin(
    script: list[AssistantTurn] | Callable[[RealtimeSession], AssistantTurn] | None = None,
    note: Note | None = None,
    seed: int | None = None,
    web_search: WebSearchScript | None = None,
) -> AsyncIterator[tuple[RealtimeStandIn, str]]:
    """Serve a Realtime stand-in on loopback; yields it and its ``ws://…/v1/realtime`` URL
    (``rest_base_url`` of it is the Responses API base)."""
    standin = RealtimeStandIn(script, note, seed, web_search)
    async with serve_on_loopback(standin.app()) as address:
        yield standin, f"ws://{address}/v1/realtime"


def _api_error(status: int, kind: str, message: str) -> web.Response:
    """An OpenAI REST error body."""
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


def rest_base_url(realtime_url: str) -> str:
    """The stand-in's REST base (``http://host:port/v1``) from its ``ws://…/v1/realtime`` URL."""
    return "http" + realtime_url.removeprefix("ws").removesuffix("/realtime")


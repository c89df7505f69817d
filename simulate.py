"""Offline call simulator: Realtime and Twilio stand-ins on loopback, and a scripted phone call.

``python simulate.py`` starts a Realtime stand-in (GA protocol), the real relay pointed at it,
and a Twilio stand-in that dials the relay, speaks recorded utterances in real time, plays
what the relay sends as Twilio does (8000 bytes/s, marks, ``clear``), and writes what the
caller heard to a stereo WAV (left: caller, right: assistant as heard) and a timeline.

The stand-ins are also the bed of the end-to-end tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import random
import secrets
import socket
import sys
import time
import typing
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import aiohttp
from aiohttp import WSMsgType, web
from openai.types.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from twilio.request_validator import RequestValidator

import audio
from audio import BYTES_PER_MS, FRAME_BYTES, SAMPLE_RATE_HZ, ULAW_SILENCE

logger = logging.getLogger("simulate")

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"

# --- Validation of Realtime events against the openai package's own types -------------------


def _discriminated(alias: Any) -> TypeAdapter[Any]:
    # The SDK's unions carry PropertyInfo(discriminator=...) metadata that pydantic ignores;
    # re-annotate so a bad event yields one precise error (protocols.md §C8).
    return TypeAdapter(Annotated[typing.get_args(alias)[0], Field(discriminator="type")])


_CLIENT_EVENT: TypeAdapter[Any] | None = None
_SERVER_EVENT: TypeAdapter[Any] | None = None


def _unknown_fields(model: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    if isinstance(model, BaseModel):
        out += [f"{path}.{key}" for key in (model.model_extra or {})]
        for name in type(model).model_fields:
            out += _unknown_fields(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, value in enumerate(model):
            out += _unknown_fields(value, f"{path}[{i}]")
    return out


def _problems(exc: ValidationError) -> list[str]:
    """One ``"<path>: <error type>"`` line per pydantic error."""
    return [f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()]


def warm_up_validators() -> None:
    """Build the pydantic validators now (a few hundred ms) rather than mid-call, then move the
    import-time heap out of the collector's reach: with the openai types loaded a full collection
    takes ~50 ms, long enough to skew the simulated clocks (``gc.freeze``). Once per process."""
    if _CLIENT_EVENT is not None and _SERVER_EVENT is not None:
        return
    client_event_problems({"type": "response.cancel"})
    server_event_problems({"type": "session.created"})
    gc.freeze()


def client_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GA Realtime client event ([] when it is).

    Validates against ``openai.types.realtime.RealtimeClientEvent`` discriminated on
    ``type``, and reports keys the model does not define (the SDK models allow extras, so
    beta-era names such as ``session.input_audio_format`` would otherwise pass).
    """
    global _CLIENT_EVENT
    if _CLIENT_EVENT is None:
        from openai.types.realtime import RealtimeClientEvent

        _CLIENT_EVENT = _discriminated(RealtimeClientEvent)
    try:
        model = _CLIENT_EVENT.validate_python(event)
    except ValidationError as exc:
        return _problems(exc)
    return [f"unknown field {name}" for name in _unknown_fields(model)]


def server_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GA Realtime server event ([] when it is)."""
    global _SERVER_EVENT
    if _SERVER_EVENT is None:
        from openai.types.realtime import RealtimeServerEvent

        _SERVER_EVENT = _discriminated(RealtimeServerEvent)
    try:
        model = _SERVER_EVENT.validate_python(event)
    except ValidationError as exc:
        return _problems(exc)
    return [f"unknown field {name}" for name in _unknown_fields(model)]


# --- Timeline ------------------------------------------------------------------------------


@dataclass(slots=True)
class Timeline:
    """Events of one simulated call on one monotonic clock, for printing and assertions."""

    t0: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, source: str, text: str, at: float | None = None) -> None:
        """Record ``text`` from ``source`` (caller, twilio, realtime) at ``at`` or now."""
        self.events.append((time.monotonic() if at is None else at, source, text))

    def ms(self, at: float) -> int:
        return round((at - self.t0) * 1000)

    def render(self) -> str:
        return "\n".join(
            f"{self.ms(at):>7} ms  {source:<8} {text}" for at, source, text in sorted(self.events, key=lambda e: e[0])
        )


# --- Voice activity detection (stand-in for the service's server_vad) ----------------------


class Vad:
    """Energy VAD over 10 ms sub-frames of µ-law audio, shaped like Realtime ``server_vad``.

    A sub-frame is voiced when its RMS exceeds ``-60 + 40 * threshold`` dBFS (0.5: -40 dBFS).
    Speech starts after ``START_FRAMES`` voiced sub-frames in a row; it is reported with
    ``audio_start_ms`` = onset - ``prefix_padding_ms`` (the service includes the padding).
    It stops after ``silence_duration_ms`` of unvoiced audio; ``audio_end_ms`` includes it.
    """

    SUB_FRAME_BYTES = 80
    START_FRAMES = 2

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        self.level_dbfs = -60 + 40 * threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.pos_ms = 0
        self.in_speech = False
        self.onset_ms: int | None = None
        self._voiced_run = 0
        self._silence_ms = 0
        self._pending = b""

    def feed(self, ulaw: bytes) -> list[tuple[str, int]]:
        """Feed caller audio; returns ``("started", audio_start_ms)`` / ``("stopped", audio_end_ms)``."""
        data = self._pending + ulaw
        out: list[tuple[str, int]] = []
        step = self.SUB_FRAME_BYTES
        usable = len(data) - len(data) % step
        for i in range(0, usable, step):
            voiced = audio.rms_dbfs(audio.ulaw_to_pcm16(data[i : i + step])) > self.level_dbfs
            frame_start = self.pos_ms
            self.pos_ms += step // BYTES_PER_MS
            if not self.in_speech:
                if voiced:
                    if self._voiced_run == 0:
                        self.onset_ms = frame_start
                    self._voiced_run += 1
                    if self._voiced_run >= self.START_FRAMES:
                        self.in_speech, self._silence_ms = True, 0
                        out.append(("started", max(0, (self.onset_ms or 0) - self.prefix_padding_ms)))
                else:
                    self._voiced_run = 0
            elif voiced:
                self._silence_ms = 0
            else:
                self._silence_ms += step // BYTES_PER_MS
                if self._silence_ms >= self.silence_duration_ms:
                    self.in_speech, self._voiced_run = False, 0
                    out.append(("stopped", self.pos_ms))
        self._pending = data[usable:]
        return out


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
class CallerTurn:
    """One caller utterance and when to say it.

    ``when`` is one of: ``{"after": "assistant_done", "delay_ms": N}`` (N ms after the next
    assistant turn finished playing), ``{"after": "assistant_audio", "ms": N}`` (N ms into the
    next assistant audio the caller hears: a barge-in), ``{"at_ms": N}`` (N ms into the call).
    """

    ulaw: bytes
    text: str
    when: dict[str, Any]


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


@dataclass(slots=True)
class Scenario:
    """A whole scripted call."""

    caller_number: str = "+14155550100"
    caller_name: str = "Jordan"
    assistant: list[AssistantTurn] = field(default_factory=list)
    caller: list[CallerTurn] = field(default_factory=list)
    hangup: dict[str, Any] = field(default_factory=lambda: {"after": "assistant_done", "delay_ms": 800})
    expect_barge_ins: int | None = None
    expect_wait_music: bool = False
    """The caller must hear waiting music at some point."""
    web_search: WebSearchScript = field(default_factory=WebSearchScript)
    max_duration_s: float = 120.0


def _load_ulaw(path: str | Path, base: Path) -> bytes:
    full = Path(path) if Path(path).is_absolute() else base / path
    return audio.to_ulaw_8k(audio.load_wav(full))


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file (WAV paths relative to the file).

    Raises:
        ValueError: the file is not a valid scenario (message says what is wrong).
    """
    path = Path(path)
    data = json.loads(path.read_text())
    return scenario_from_dict(data, path.parent)


def scenario_from_dict(data: dict[str, Any], base: Path) -> Scenario:
    """Build a Scenario from its JSON form (see ``scenarios/default.json``)."""
    try:
        assistant = [
            AssistantTurn(
                ulaw=_load_ulaw(turn["audio"], base) if turn.get("audio") else b"",
                transcript=turn.get("transcript", ""),
                function_calls=[(c["name"], c.get("arguments", {})) for c in turn.get("function_calls", [])],
            )
            for turn in data.get("assistant", [])
        ]
        caller = [
            CallerTurn(ulaw=_load_ulaw(turn["audio"], base), text=turn.get("text", ""), when=turn["when"])
            for turn in data.get("caller", [])
        ]
        web_search = WebSearchScript(**data.get("web_search", {}))
    except (KeyError, TypeError, OSError, audio.WavError) as exc:
        raise ValueError(f"bad scenario: {exc}") from exc
    return Scenario(
        caller_number=data.get("caller_number", "+14155550100"),
        caller_name=data.get("caller_name", "Jordan"),
        assistant=assistant,
        caller=caller,
        hangup=data.get("hangup", {"after": "assistant_done", "delay_ms": 800}),
        expect_barge_ins=data.get("expect_barge_ins"),
        expect_wait_music=bool(data.get("expect_wait_music", False)),
        web_search=web_search,
        max_duration_s=float(data.get("max_duration_s", 120.0)),
    )


def default_scenario() -> Scenario:
    """The built-in call: greeting, a question, a long answer interrupted, a short answer,
    goodbye."""
    return load_scenario(HERE / "scenarios" / "default.json")


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

    def __init__(self, standin: RealtimeStandIn, ws: web.WebSocketResponse, timeline: Timeline | None) -> None:
        self.standin = standin
        self.ws = ws
        self.timeline = timeline
        self.session: dict[str, Any] = {
            "type": "realtime",
            "model": "gpt-realtime",
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
        self.active: asyncio.Task[None] | None = None
        self.active_id: str | None = None
        self.last_item_id: str | None = None
        self.input_bytes = 0
        self.updated_at: float | None = None
        """When the first session.updated was sent."""
        self._later: list[asyncio.Task[None]] = []

    def _note(self, text: str) -> None:
        if self.timeline is not None:
            self.timeline.add("realtime", text)

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
        for task in [self.active, *self._later]:
            if task is not None:
                task.cancel()

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
            self.session = _merge_session(self.session, event["session"])
            self._configure_vad()
            if self.standin.session_updated_delay_s:  # answer later, reading on meanwhile
                self._later.append(asyncio.create_task(self._session_updated(self.standin.session_updated_delay_s)))
            else:
                await self._session_updated(0.0)
        elif kind == "response.create":
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
                self._note(f"function_call_output {item['output'][:80]}")
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
            await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": item_id})
            if td.get("interrupt_response", True) and self.active is not None:
                await self._cancel("turn_detected")
        else:
            del self.standin.user_item_ids[id(self)]
            self._note(f"speech_stopped audio_end_ms={ms}")
            await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
            await self.send(
                {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.last_item_id}
            )
            self.last_item_id = item_id
            if td.get("create_response", True) and self.active is None:
                self._start_response()

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
        self._note(f"response.done cancelled ({reason})")
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "cancelled",
                    "status_details": {"type": "cancelled", "reason": reason},
                    "output": [],
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
            await self.send(
                {
                    "type": "response.created",
                    "response": {
                        "id": response_id,
                        "object": "realtime.response",
                        "status": "in_progress",
                        "output": [],
                    },
                }
            )
            self._note(
                f"response.created {response_id[-6:]}" + (f' "{turn.transcript[:50]}"' if turn.transcript else "")
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
                        "usage": {"total_tokens": 120, "input_tokens": 80, "output_tokens": 40},
                    },
                }
            )
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
                sent_words = due_words
            await asyncio.sleep(len(chunk) / BYTES_PER_MS / 1000 / turn.speed)
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send({"type": "response.output_audio_transcript.done", **ids, "transcript": turn.transcript})
        part = {"type": "audio", "transcript": turn.transcript}
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        done_item = {
            **item,
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": turn.transcript}],
        }
        await self.send(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": index, "item": done_item}
        )
        self.last_item_id = item_id
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


@functools.cache
def _responses_request_adapter() -> TypeAdapter[Any]:
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    return TypeAdapter(ResponseCreateParamsNonStreaming)


def responses_request_problems(body: Any) -> list[str]:
    """Why ``body`` is not a valid non-streaming ``responses.create`` body with a forced web
    search ([] when it is), checked against the ``openai`` package's own request type."""
    try:
        _responses_request_adapter().validate_python(body)
    except ValidationError as exc:
        return _problems(exc)[:5]
    problems = []
    if not any(tool.get("type") == "web_search" for tool in body.get("tools") or ()):
        problems.append("tools has no web_search tool")
    if body.get("tool_choice") != "required":
        problems.append("tool_choice is not 'required'")
    return problems


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
        timeline: Timeline | None = None,
        seed: int | None = None,
        web_search: WebSearchScript | None = None,
    ) -> None:
        self.script = script if script is not None else []
        self.web_search = web_search or WebSearchScript()
        self.responses_requests: list[ResponsesRequest] = []
        self.timeline = timeline
        self.rng = random.Random(seed)
        self.sessions: list[RealtimeSession] = []
        self.user_item_ids: dict[int, str] = {}
        self.handshake_headers: list[dict[str, str]] = []
        self.session_updated_delay_s = 0.0
        """Delay before answering session.update (tests of the relay's hold buffer)."""
        self._turns: dict[int, int] = {}
        self._attribution: dict[str, deque[tuple[str, int]]] = {}
        self.input_audio: dict[int, bytearray] = {}
        warm_up_validators()

    def next_turn(self, session: RealtimeSession) -> AssistantTurn:
        if callable(self.script):
            return self.script(session)
        n = self._turns.get(id(session), 0)
        self._turns[id(session)] = n + 1
        if n < len(self.script):
            return self.script[n]
        return AssistantTurn(ulaw=ULAW_SILENCE * 800, transcript="")

    def attribute(self, payload: str, item_id: str, offset: int) -> None:
        """Remember which item and byte offset an audio delta payload carries."""
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
        if self.timeline is not None:
            self.timeline.add("responses", f"web search {str(query)[:60]!r}")
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
        if self.timeline is not None:
            self.timeline.add("responses", f"answer after {script.delay_ms} ms")
        return web.json_response(response)

    async def _realtime(self, request: web.Request) -> web.WebSocketResponse:
        self.handshake_headers.append(dict(request.headers))
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            raise web.HTTPUnauthorized(text="missing bearer token")
        ws = web.WebSocketResponse(max_msg_size=16 * 2**20)
        await ws.prepare(request)
        session = RealtimeSession(self, ws, self.timeline)
        session.session["model"] = request.query.get("model", "gpt-realtime")
        self.sessions.append(session)
        if "OpenAI-Beta" in request.headers:
            await session.error("beta_api_shape_disabled", "The Realtime Beta API is no longer supported.")
            await ws.close()
            return ws
        await session.serve()
        return ws


# --- Twilio stand-in: the phone's playback buffer -------------------------------------------


@dataclass(slots=True)
class PlayedChunk:
    """One media message in the phone's buffer."""

    start: float
    """When it starts (started) playing, monotonic seconds."""
    data: bytes
    tag: tuple[str, int] | None
    """(item_id, byte offset) of the assistant audio it carries, when known."""
    cut_at: float | None = None
    """When a ``clear`` dropped the rest of it."""

    def played_bytes(self, until: float) -> int:
        """Bytes played by ``until`` (after a clear: by the clear)."""
        end = until if self.cut_at is None else min(until, self.cut_at)
        return max(0, min(len(self.data), int((end - self.start) * SAMPLE_RATE_HZ)))


class PhonePlayback:
    """Twilio's outbound buffer as Twilio docs describe it (sans-I/O; times are monotonic s).

    Media is "buffered and played in the order received" at 8000 bytes/s; a mark is echoed
    when the audio before it has played, at once when nothing is buffered, and immediately
    on ``clear``, which also drops the buffered audio.
    """

    def __init__(self) -> None:
        self.chunks: list[PlayedChunk] = []
        self.end = 0.0
        """When the last buffered byte will have played."""
        self._marks: deque[tuple[float, str]] = deque()
        self.clears: list[float] = []

    def enqueue_media(self, now: float, data: bytes, tag: tuple[str, int] | None = None) -> None:
        start = max(now, self.end)
        self.chunks.append(PlayedChunk(start, data, tag))
        self.end = start + len(data) / SAMPLE_RATE_HZ

    def enqueue_mark(self, now: float, name: str) -> list[str]:
        """Queue a mark; returns it at once when nothing is buffered."""
        if self.end <= now and not self._marks:
            return [name]
        self._marks.append((max(now, self.end), name))
        return []

    def due_marks(self, now: float) -> list[str]:
        out = []
        while self._marks and self._marks[0][0] <= now:
            out.append(self._marks.popleft()[1])
        return out

    def next_mark_at(self) -> float | None:
        return self._marks[0][0] if self._marks else None

    def clear(self, now: float) -> list[str]:
        """Drop buffered audio; returns every pending mark (echoed now: discarded, not played)."""
        for chunk in self.chunks:
            if chunk.cut_at is None and chunk.start + len(chunk.data) / SAMPLE_RATE_HZ > now:
                chunk.cut_at = now
        self.end = min(self.end, now)
        self.clears.append(now)
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def playing(self, now: float) -> bool:
        return self.end > now

    def heard_bytes_by_item(self, until: float) -> dict[str, int]:
        heard: dict[str, int] = {}
        for chunk in self.chunks:
            if chunk.tag is not None:
                heard[chunk.tag[0]] = heard.get(chunk.tag[0], 0) + chunk.played_bytes(until)
        return heard


# --- Twilio stand-in: the caller -------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """``X-Twilio-Signature`` for ``url`` and form ``params`` (twilio's RequestValidator)."""
    return RequestValidator(auth_token).compute_signature(url, params)


class CallFailed(Exception):
    """The simulated call did not go as scripted; the message says why."""


@dataclass(slots=True)
class BargeIn:
    """One clear the caller's phone received, with what the caller had heard by then."""

    at: float
    item_id: str | None
    heard_ms: float
    """Milliseconds of that item the caller heard before the clear."""


class Caller:
    """The Twilio side of a call: webhook, media stream, real-time playback, a scripted mouth."""

    def __init__(
        self,
        scenario: Scenario,
        timeline: Timeline,
        auth_token: str | None = None,
        resolve: Callable[[str], tuple[str, int] | None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.timeline = timeline
        self.auth_token = auth_token
        self.resolve = resolve
        self.playback = PhonePlayback()
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.sent_audio: list[tuple[float, bytes]] = []
        self.mouth: deque[bytes] = deque()
        self.marks_echoed = 0
        self.barge_ins: list[BargeIn] = []
        self.music_clears = 0
        """Clears that dropped waiting music only."""
        self.late_frames: list[tuple[float, str]] = []
        """Audio of an interrupted item that reached the phone after its clear (must stay empty)."""
        self.cut_items: set[str] = set()
        self.close_code: int | None = None
        self.hung_up_by: str | None = None
        self.twiml_say: list[str] = []
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()
        self._seq = itertools.count(1)
        self._media_chunk = itertools.count(1)
        self._mouth_empty = asyncio.Event()

    # -- dialling --

    async def dial(self, http: aiohttp.ClientSession, relay_url: str) -> tuple[str, dict[str, str]]:
        """POST the voice webhook; returns the ``<Stream url>`` and its ``<Parameter>``s.

        Raises:
            CallFailed: the webhook failed or the TwiML has no ``<Connect><Stream>``.
        """
        url = relay_url.rstrip("/") + "/incoming-call"
        form = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.scenario.caller_number,
            "To": "+14155550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, url, form)
        self.timeline.add("twilio", f"POST /incoming-call From={self.scenario.caller_number}")
        async with http.post(url, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise CallFailed(f"voice webhook answered HTTP {resp.status}: {body[:200]}")
        root = ET.fromstring(body)
        self.twiml_say = [el.text or "" for el in root.iter("Say")]
        for text in self.twiml_say:
            self.timeline.add("twilio", f"<Say> {text}")
        stream = root.find("./Connect/Stream")
        if stream is None:
            raise CallFailed("TwiML has no <Connect><Stream>: " + body[:200])
        params = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        return stream.get("url", ""), params

    async def run(self, http: aiohttp.ClientSession, relay_url: str) -> None:
        """Place the whole call. Raises CallFailed when it cannot be completed as scripted."""
        stream_url, params = await self.dial(http, relay_url)
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, stream_url, {})
        async with http.ws_connect(stream_url, headers=headers, autoping=True) as ws:
            self._ws = ws
            self.connected_at = time.monotonic()
            self.timeline.add("twilio", f"stream connected {stream_url}")
            await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await self._send(
                {
                    "event": "start",
                    "sequenceNumber": str(next(self._seq)),
                    "streamSid": self.stream_sid,
                    "start": {
                        "accountSid": self.account_sid,
                        "streamSid": self.stream_sid,
                        "callSid": self.call_sid,
                        "tracks": ["inbound"],
                        "customParameters": params,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }
            )
            tasks = [
                asyncio.create_task(self._receive(ws)),
                asyncio.create_task(self._speak_frames()),
                asyncio.create_task(self._echo_marks()),
            ]
            script = asyncio.create_task(self._script())
            try:
                async with asyncio.timeout(self.scenario.max_duration_s):
                    done, _ = await asyncio.wait([script, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise CallFailed(f"call did not finish within {self.scenario.max_duration_s:.0f}s") from None
            finally:
                for task in [*tasks, script]:
                    task.cancel()
                await asyncio.gather(*tasks, script, return_exceptions=True)
                self.ended_at = time.monotonic()
            if script in done and script.exception() is not None:
                raise typing.cast(BaseException, script.exception())
            if script not in done and not self.hung_up_by:
                self.hung_up_by = "relay"
            if self.hung_up_by == "caller":
                await self._send(
                    {
                        "event": "stop",
                        "sequenceNumber": str(next(self._seq)),
                        "streamSid": self.stream_sid,
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                    }
                )
                await ws.close()
            self.close_code = ws.close_code

    async def _send(self, event: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(event))

    # -- the line --

    async def _speak_frames(self) -> None:
        """One 20 ms media frame on a monotonic clock, speech when the mouth has some."""
        pacer = audio.FramePacer(max_lag_s=5.0)  # a phone line never skips: late frames go out in a burst
        silence = ULAW_SILENCE * FRAME_BYTES
        timestamp = 0
        while True:
            frame = self.mouth.popleft() if self.mouth else silence
            if frame is not silence:
                self.sent_audio.append((time.monotonic(), frame))
                if not self.mouth:
                    self._mouth_empty.set()
            await self._send(
                {
                    "event": "media",
                    "sequenceNumber": str(next(self._seq)),
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(next(self._media_chunk)),
                        "timestamp": str(timestamp),
                        "payload": base64.b64encode(frame).decode(),
                    },
                }
            )
            timestamp += 20
            await pacer.wait()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            now = time.monotonic()
            kind = event.get("event")
            if event.get("streamSid") != self.stream_sid:
                raise CallFailed(f"relay sent {kind} with streamSid {event.get('streamSid')!r}")
            if kind == "media":
                payload = event["media"]["payload"]
                tag = self.resolve(payload) if self.resolve else None
                if tag is not None and tag[0] in self.cut_items:
                    self.late_frames.append((now, tag[0]))
                was_playing = self.playback.playing(now)
                previous = self.playback.chunks[-1].tag if self.playback.chunks else None
                self.playback.enqueue_media(now, base64.b64decode(payload), tag)
                if not was_playing or (previous is None) != (tag is None):
                    if tag is None and self.resolve is not None:  # not the assistant's: waiting music
                        heard = "hears waiting music"
                    else:
                        heard = "hears assistant audio" + (f" (item {tag[0][-6:]})" if tag else "")
                    self.timeline.add("caller", heard, at=max(now, self.playback.chunks[-1].start))
            elif kind == "mark":
                for name in self.playback.enqueue_mark(now, event["mark"]["name"]):
                    await self._echo(name)
                self._wake.set()
            elif kind == "clear":
                current = next(
                    (c for c in reversed(self.playback.chunks) if c.start <= now and c.played_bytes(now) > 0), None
                )
                item = current.tag[0] if current and current.tag else None
                heard = self.playback.heard_bytes_by_item(now).get(item, 0) if item else 0
                for name in self.playback.clear(now):
                    await self._echo(name)
                if current is not None and current.tag is None and self.resolve is not None:
                    self.music_clears += 1  # the end of waiting music, not a barge-in
                    self.timeline.add("twilio", "clear (waiting music)")
                    continue
                if item:
                    self.cut_items.add(item)
                self.barge_ins.append(BargeIn(now, item, heard / BYTES_PER_MS))
                self.timeline.add(
                    "twilio",
                    "clear" + (f": caller heard {heard / BYTES_PER_MS:.0f} ms of item {item[-6:]}" if item else ""),
                )
            else:
                raise CallFailed(f"relay sent an unknown event {kind!r}")
        self.timeline.add("twilio", f"relay closed the stream (code {ws.close_code})")

    async def _echo(self, name: str) -> None:
        self.marks_echoed += 1
        await self._send(
            {
                "event": "mark",
                "sequenceNumber": str(next(self._seq)),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    async def _echo_marks(self) -> None:
        """Echo each mark when the audio before it has played."""
        while True:
            self._wake.clear()
            due = self.playback.next_mark_at()
            if due is None:
                await self._wake.wait()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            for name in self.playback.due_marks(time.monotonic()):
                await self._echo(name)

    # -- the script --

    async def _wait_for(self, when: dict[str, Any], since: float) -> None:
        """Wait for a scripted moment (see ``CallerTurn``), polling the playback every 5 ms."""
        if "at_ms" in when:
            assert self.connected_at is not None
            await asyncio.sleep(max(0.0, self.connected_at + when["at_ms"] / 1000 - time.monotonic()))
            return
        after = when.get("after")
        first: PlayedChunk | None = None
        while True:
            now = time.monotonic()
            if first is None:
                first = next(
                    (
                        c
                        for c in self.playback.chunks
                        if c.start >= since and c.start <= now and c.played_bytes(now) > 0
                    ),
                    None,
                )
            elif after == "assistant_audio":
                played = sum(c.played_bytes(now) for c in self.playback.chunks if c.start >= first.start)
                if played >= when.get("ms", 0) * BYTES_PER_MS:
                    return
            elif after == "assistant_done":
                idle_for = now - self.playback.end
                if idle_for >= when.get("delay_ms", 0) / 1000:
                    return
            else:
                raise CallFailed(f"unknown scripted moment {when!r}")
            await asyncio.sleep(0.005)

    async def _script(self) -> None:
        since = time.monotonic()
        for turn in self.scenario.caller:
            await self._wait_for(turn.when, since)
            self.timeline.add("caller", f'says "{turn.text}"' if turn.text else "speaks")
            self._mouth_empty.clear()
            self.mouth.extend(audio.frames(turn.ulaw))
            await self._mouth_empty.wait()
            since = time.monotonic()
        if self.scenario.hangup.get("by") == "assistant":
            self.timeline.add("caller", "waits for the assistant to hang up")
            await asyncio.Event().wait()  # the call ends when the relay closes the stream
        await self._wait_for(self.scenario.hangup, since)
        self.hung_up_by = "caller"
        self.timeline.add("caller", "hangs up")

    # -- the record --

    def render_wav(self) -> bytes:
        """Stereo 8 kHz WAV of the call: left what the caller said, right what they heard."""
        t0 = self.timeline.t0
        end = self.ended_at or time.monotonic()
        total = int((end - t0) * SAMPLE_RATE_HZ) + 1
        left = bytearray(ULAW_SILENCE * total)
        right = bytearray(ULAW_SILENCE * total)
        for at, frame in self.sent_audio:
            i = int((at - t0) * SAMPLE_RATE_HZ)
            left[i : i + len(frame)] = frame[: max(0, total - i)]
        for chunk in self.playback.chunks:
            played = chunk.data[: chunk.played_bytes(end)]
            i = int((chunk.start - t0) * SAMPLE_RATE_HZ)
            right[i : i + len(played)] = played[: max(0, total - i)]
        pcm_left = audio.ulaw_to_pcm16(bytes(left[:total]))
        pcm_right = audio.ulaw_to_pcm16(bytes(right[:total]))
        import audioop

        stereo = audioop.add(audioop.tostereo(pcm_left, 2, 1, 0), audioop.tostereo(pcm_right, 2, 0, 1), 2)
        return audio.write_wav(stereo, SAMPLE_RATE_HZ, 2)


# --- Running a simulated call -------------------------------------------------------------------


@dataclass(slots=True)
class CallResult:
    """What one simulated call produced."""

    timeline: Timeline
    caller: Caller
    standin: RealtimeStandIn | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@contextlib.asynccontextmanager
async def realtime_standin(
    script: list[AssistantTurn] | Callable[[RealtimeSession], AssistantTurn] | None = None,
    timeline: Timeline | None = None,
    seed: int | None = None,
    web_search: WebSearchScript | None = None,
) -> AsyncIterator[tuple[RealtimeStandIn, str]]:
    """Serve a Realtime stand-in on loopback; yields it and its ``ws://…/v1/realtime`` URL
    (``rest_base_url`` of it is the Responses API base)."""
    standin = RealtimeStandIn(script, timeline, seed, web_search)
    runner = web.AppRunner(standin.app(), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield standin, f"ws://{host}:{port}/v1/realtime"
    finally:
        await runner.cleanup()


def _api_error(status: int, kind: str, message: str) -> web.Response:
    """An OpenAI REST error body."""
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


def rest_base_url(realtime_url: str) -> str:
    """The stand-in's REST base (``http://host:port/v1``) from its ``ws://…/v1/realtime`` URL."""
    return "http" + realtime_url.removeprefix("ws").removesuffix("/realtime")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_config(realtime_url: str, port: int, scenario: Scenario, auth_token: str, **overrides: Any) -> Any:
    """A relay Config for a simulated call against ``realtime_url``."""
    import relay

    values: dict[str, Any] = {
        "openai_api_key": "sk-simulator-offline",
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "realtime_url": realtime_url,
        "openai_base_url": rest_base_url(realtime_url),
        "twilio_auth_token": auth_token,
        "primary_numbers": (scenario.caller_number,),
        "primary_first_name": scenario.caller_name,
        "vad_type": relay.VadType.SERVER,
        "vad_silence_duration_ms": 700,
    }
    values.update(overrides)
    return relay.Config(**values)


def check_call(caller: Caller, standin: RealtimeStandIn | None, scenario: Scenario) -> list[str]:
    """Everything that makes a simulated call not go as scripted."""
    problems = []
    if caller.hung_up_by is None:
        problems.append("the call did not end")
    if caller.late_frames:
        problems.append(
            f"{len(caller.late_frames)} media message(s) of an interrupted item reached the caller after its clear"
        )
    if scenario.expect_barge_ins is not None and len(caller.barge_ins) != scenario.expect_barge_ins:
        problems.append(
            f"expected {scenario.expect_barge_ins} barge-in(s), the caller's phone got {len(caller.barge_ins)} clear(s)"
        )
    ended = caller.ended_at or time.monotonic()
    if not any(c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no assistant audio")
    if scenario.expect_wait_music and not any(c.tag is None and c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no waiting music")
    if scenario.hangup.get("by") == "assistant":
        if caller.hung_up_by != "relay":
            problems.append("the assistant did not hang up")
        elif caller.close_code != 1000:
            problems.append(f"the relay hung up with close code {caller.close_code}, not 1000")
        last = next((c.tag[0] for c in reversed(caller.playback.chunks) if c.tag is not None), None)
        if standin is not None and last is not None and last not in caller.cut_items:
            heard = caller.playback.heard_bytes_by_item(ended).get(last, 0)
            generated = max((s.generated.get(last, 0) for s in standin.sessions), default=0)
            if heard < generated:
                problems.append(
                    f"the line closed after {heard / BYTES_PER_MS:.0f} of {generated / BYTES_PER_MS:.0f} ms "
                    "of the goodbye"
                )
    if standin is not None:
        for session in standin.sessions:
            for event, why in session.invalid:
                problems.append(f"relay sent an invalid {event.get('type')}: {'; '.join(why)}")
            for error in session.errors:
                problems.append(f"realtime stand-in answered an error: {error['code']}: {error['message']}")
            turns = standin._turns.get(id(session), 0)
            if isinstance(standin.script, list) and turns < len(standin.script):
                problems.append(f"only {turns} of {len(standin.script)} scripted assistant turns were used")
    return problems


async def simulate_call(
    scenario: Scenario,
    relay_url: str | None = None,
    auth_token: str | None = None,
    seed: int | None = None,
    **relay_overrides: Any,
) -> CallResult:
    """Run one scripted call on loopback (or against ``relay_url``) and check it."""
    timeline = Timeline()
    async with contextlib.AsyncExitStack() as stack:
        standin: RealtimeStandIn | None = None
        if relay_url is None:
            import relay

            standin, realtime_url = await stack.enter_async_context(
                realtime_standin(scenario.assistant, timeline, seed, scenario.web_search)
            )
            auth_token = auth_token or secrets.token_hex(16)
            port = free_port()
            config = relay_config(realtime_url, port, scenario, auth_token, **relay_overrides)
            relay_url = await stack.enter_async_context(relay.serving(config, port=port))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        caller = Caller(scenario, timeline, auth_token, standin.resolve if standin else None)
        problems: list[str] = []
        try:
            await caller.run(http, relay_url)
        except (CallFailed, aiohttp.ClientError, ET.ParseError) as exc:
            problems.append(str(exc) or type(exc).__name__)
        if not problems:
            problems = check_call(caller, standin, scenario)
    return CallResult(timeline, caller, standin, problems)


def main(argv: list[str] | None = None) -> int:
    """``python simulate.py``: run the built-in (or a given) scenario; 0 when it went as scripted."""
    parser = argparse.ArgumentParser(description="Hold a simulated phone call through the relay, offline.")
    parser.add_argument("--scenario", type=Path, help="scenario JSON (default: scenarios/default.json)")
    parser.add_argument("--relay-url", help="dial a relay that is already running instead of starting one")
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="sign requests like Twilio (default: $TWILIO_AUTH_TOKEN; only with --relay-url)",
    )
    parser.add_argument("--out", type=Path, default=Path("call.wav"), help="where to write the call WAV")
    parser.add_argument("--seed", type=int, default=7, help="seed for the stand-in's delta sizes")
    parser.add_argument("--verbose", action="store_true", help="show the relay's log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        scenario = load_scenario(args.scenario) if args.scenario else default_scenario()
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(
        simulate_call(scenario, args.relay_url, args.auth_token if args.relay_url else None, seed=args.seed)
    )
    print(result.timeline.render())
    args.out.write_bytes(result.caller.render_wav())
    duration = (result.caller.ended_at or result.timeline.t0) - result.timeline.t0
    print(f"\nwrote {args.out} ({duration:.1f} s, stereo: left caller, right assistant as heard)")
    print(f"barge-ins: {len(result.caller.barge_ins)}, marks echoed: {result.caller.marks_echoed}")
    if result.ok:
        print("call completed as scripted")
        return 0
    for problem in result.problems:
        print(f"FAILED: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

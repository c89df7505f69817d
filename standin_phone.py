"""Stand-ins for the phone network, on loopback: a Twilio caller that dials the relay like Twilio.

``TwilioCaller`` POSTs the signed voice webhook, reads ``<Stream>`` and its ``<Parameter>``s from
the TwiML, opens the signed Media Streams websocket, sends a 20 ms ``media`` frame on a monotonic
clock (speech from its script, µ-law silence between), plays what the relay sends at 8000 bytes
per second with Twilio's ``mark`` and ``clear`` semantics (``PhonePlayback``), and records what
the caller heard. Its messages are built here from Twilio's documentation, independently of the
relay's own dialect module, so a misreading of the protocol shows up as a failing call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import secrets
import time
import typing
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from twilio.request_validator import RequestValidator

import audio
from audio import BYTES_PER_MS, FRAME_BYTES, SAMPLE_RATE_HZ, ULAW_SILENCE

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


class TwilioMessages:
    """What Twilio sends on a Media Streams websocket, as its docs show them (JSON strings).

    ``sequenceNumber``, ``chunk`` and ``timestamp`` are strings; every message after
    ``connected`` carries the top-level ``streamSid``.
    """

    def __init__(self) -> None:
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)

    def _message(self, event: str, **body: Any) -> str:
        return json.dumps({"event": event, "sequenceNumber": str(next(self._seq)), "streamSid": self.stream_sid,
                           **body})

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, custom_parameters: dict[str, str]) -> str:
        return self._message("start", start={
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        })

    def media(self, ulaw: bytes, timestamp_ms: int = 0) -> str:
        """One inbound frame of µ-law audio (20 ms = 160 bytes)."""
        return self._message("media", media={
            "track": "inbound",
            "chunk": str(next(self._chunk)),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(ulaw).decode(),
        })

    def mark(self, name: str) -> str:
        """The echo of a mark the relay sent."""
        return self._message("mark", mark={"name": name})

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    def stop(self) -> str:
        return self._message("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})


class CallFailed(Exception):
    """The simulated call did not go as scripted; the message says why."""


@dataclass(slots=True)
class BargeIn:
    """One clear the caller's phone received, with what the caller had heard by then."""

    at: float
    item_id: str | None
    heard_ms: float
    """Milliseconds of that item the caller heard before the clear."""


class TwilioCaller:
    """The Twilio side of a call: webhook, media stream, real-time playback, a scripted mouth.

    Args:
        number: the caller's number (the webhook's ``From``).
        turns: what the caller says and when.
        hangup: when the caller hangs up (a ``CallerTurn.when`` moment), or ``{"by": "assistant"}``
            to wait for the relay to close the stream.
        max_duration_s: the call fails (``CallFailed``) if it has not ended by then.
        timeline: where events are recorded.
        auth_token: sign requests like Twilio with this token (None: unsigned).
        resolve: tells which assistant item and offset a received payload carries (the
            Realtime stand-in's ``resolve``); None: every payload counts as assistant audio.
    """

    def __init__(
        self,
        number: str,
        turns: list[CallerTurn],
        hangup: dict[str, Any],
        max_duration_s: float,
        timeline: Timeline,
        auth_token: str | None = None,
        resolve: Callable[[str], tuple[str, int] | None] | None = None,
    ) -> None:
        self.number = number
        self.turns = turns
        self.hangup = hangup
        self.max_duration_s = max_duration_s
        self.timeline = timeline
        self.auth_token = auth_token
        self.resolve = resolve
        self.playback = PhonePlayback()
        self.messages = TwilioMessages()
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
        self._mouth_empty = asyncio.Event()

    # -- dialling --

    async def dial(self, http: aiohttp.ClientSession, relay_url: str) -> tuple[str, dict[str, str]]:
        """POST the voice webhook; returns the ``<Stream url>`` and its ``<Parameter>``s.

        Raises:
            CallFailed: the webhook failed or the TwiML has no ``<Connect><Stream>``.
        """
        url = relay_url.rstrip("/") + "/incoming-call"
        form = {
            "CallSid": self.messages.call_sid,
            "AccountSid": self.messages.account_sid,
            "From": self.number,
            "To": "+14155550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, url, form)
        self.timeline.add("twilio", f"POST /incoming-call From={self.number}")
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
            await self._send(self.messages.connected())
            await self._send(self.messages.start(params))
            tasks = [
                asyncio.create_task(self._receive(ws)),
                asyncio.create_task(self._speak_frames()),
                asyncio.create_task(self._echo_marks()),
            ]
            script = asyncio.create_task(self._script())
            try:
                async with asyncio.timeout(self.max_duration_s):
                    done, _ = await asyncio.wait([script, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise CallFailed(f"call did not finish within {self.max_duration_s:.0f}s") from None
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
                await self._send(self.messages.stop())
                await ws.close()
            self.close_code = ws.close_code

    async def _send(self, message: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(message)

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
            await self._send(self.messages.media(frame, timestamp))
            timestamp += 20
            await pacer.wait()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            now = time.monotonic()
            kind = event.get("event")
            if event.get("streamSid") != self.messages.stream_sid:
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
        await self._send(self.messages.mark(name))

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
        for turn in self.turns:
            await self._wait_for(turn.when, since)
            self.timeline.add("caller", f'says "{turn.text}"' if turn.text else "speaks")
            self._mouth_empty.clear()
            self.mouth.extend(audio.frames(turn.ulaw))
            await self._mouth_empty.wait()
            since = time.monotonic()
        if self.hangup.get("by") == "assistant":
            self.timeline.add("caller", "waits for the assistant to hang up")
            await asyncio.Event().wait()  # the call ends when the relay closes the stream
        await self._wait_for(self.hangup, since)
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
        return audio.write_wav(audio.interleave(pcm_left, pcm_right), SAMPLE_RATE_HZ, 2)


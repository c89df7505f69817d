"""Stand-ins for the phone networks, on loopback: a caller that dials the relay like Twilio or Plivo.

``PhoneCaller`` POSTs the signed voice webhook (Twilio) or answer URL (Plivo), reads the
``<Stream>`` from the TwiML or Plivo XML, opens the signed media websocket, sends a 20 ms frame on a
monotonic clock (speech from its script, µ-law silence between; key presses when scripted), plays
what the relay sends at 8000 bytes per second with the network's mark / checkpoint and clear
semantics (``PhonePlayback``), and records what the caller heard. The networks' messages are built
here from their documentation (``Twilio``, ``Plivo``), independently of the relay's dialect
modules, so a misreading of a protocol shows up as a failing call.
"""

from __future__ import annotations

import array
import asyncio
import audioop  # the stdlib module to 3.12; the audioop-lts package from 3.13
import base64
import contextlib
import json
import random
import sys
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType

import audio
from audio import BYTES_PER_MS, FRAME_BYTES, SAMPLE_RATE_HZ, ULAW_SILENCE
from standins.phone_dialects import (
    Answer,
    CallFailed,
    PhoneNetwork,
)
from standins.phone_playback import PhonePlayback, PlayedChunk

# --- Timeline ------------------------------------------------------------------------------


@dataclass(slots=True)
class Timeline:
    """Events of one simulated call on one monotonic clock, for printing and assertions."""

    t0: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    listener: Callable[[float, str, str], None] | None = None
    """Called with each event as it is added (``simulate.py`` prints the call as it happens)."""

    def add(self, source: str, text: str, at: float | None = None) -> None:
        """Record ``text`` from ``source`` (caller, twilio, realtime) at ``at`` or now."""
        event = (time.monotonic() if at is None else at, source, text)
        self.events.append(event)
        if self.listener is not None:
            self.listener(*event)

    def ms(self, at: float) -> int:
        return round((at - self.t0) * 1000)

@dataclass(slots=True)
class CallerTurn:
    """One caller utterance (or key presses) and when.

    ``when`` is one of: ``{"after": "assistant_done", "delay_ms": N}`` (N ms after the next
    assistant turn finished playing), ``{"after": "assistant_audio", "ms": N}`` (N ms into the
    next assistant audio the caller hears: a barge-in), ``{"at_ms": N}`` (N ms into the call).
    """

    ulaw: bytes
    text: str
    when: dict[str, Any]
    dtmf: str = ""
    """Keys to press instead of speaking (``"123#"``), ``KEY_PRESS_S`` apart."""


KEY_PRESS_S = 0.15
"""Time between two scripted key presses."""


# --- The networks and the caller -------------------------------------------------------------




@dataclass(frozen=True, slots=True)
class Line:
    """The line between the caller's phone and the relay: a one-way network delay with jitter, each
    direction, and the noise of the caller's side."""

    delay_ms: float = 0.0
    """One-way delay of every message, each direction."""
    jitter_ms: float = 0.0
    """Extra delay per message, uniform in [0, ``jitter_ms``]; messages stay in order, as on TCP."""
    noise_dbfs: float | None = None
    """White noise at this RMS level (dBFS) on the caller's channel, between and under speech;
    None: digital silence between utterances."""
    seed: int = 0


DEFAULT_LINE_NOISE_DBFS = -65.0
"""A phone line's idle noise: comfort noise and the handset's hiss sit around -70 to -60 dBFS."""


class LineNoise:
    """Two seconds of white noise at ``dbfs`` (RMS), looped 20 ms at a time: alone between
    utterances, mixed under the caller's speech."""

    SECONDS = 2

    def __init__(self, dbfs: float, seed: int = 0) -> None:
        rng = random.Random(seed)
        sigma = 32768 * 10 ** (dbfs / 20)
        samples = array.array("h", (max(-32768, min(32767, round(rng.gauss(0.0, sigma))))
                                    for _ in range(SAMPLE_RATE_HZ * self.SECONDS)))
        if sys.byteorder == "big":
            samples.byteswap()
        pcm = samples.tobytes()
        self._pcm = [pcm[i : i + 2 * FRAME_BYTES] for i in range(0, len(pcm), 2 * FRAME_BYTES)]
        self._ulaw = [audio.pcm16_to_ulaw(frame) for frame in self._pcm]
        self._next = 0

    def frame(self, speech: bytes | None = None) -> bytes:
        """The next 20 ms of the line (µ-law): noise alone, or ``speech`` (µ-law) over it."""
        i = self._next
        self._next = (i + 1) % len(self._pcm)
        if speech is None:
            return self._ulaw[i]
        noise = self._pcm[i][: 2 * len(speech)]
        return audio.pcm16_to_ulaw(audioop.add(audio.ulaw_to_pcm16(speech), noise, 2))


@dataclass(slots=True)
class SpokenTurn:
    """When a scripted utterance went down the line."""

    index: int
    """Its place in the script, from 1."""
    text: str
    start_ms: int
    """Position of its first frame in the caller's stream (ms since the stream's first frame)."""
    end_ms: int


@dataclass(slots=True)
class BargeIn:
    """One clear the caller's phone received, with what the caller had heard by then."""

    at: float
    item_id: str | None
    heard_ms: float
    """Milliseconds of that item the caller heard before the clear."""


class PhoneCaller:
    """The phone network's side of a call: webhook, media stream, real-time playback, a scripted
    mouth and keypad.

    Args:
        network: ``Twilio()`` or ``Plivo()``, the network's wire format and playback rules.
        number: the caller's number in E.164 (the webhook's ``From``).
        turns: what the caller says and when.
        hangup: when the caller hangs up (a ``CallerTurn.when`` moment), or ``{"by": "assistant"}``
            to wait for the relay to close the stream.
        max_duration_s: the call fails (``CallFailed``) if it has not ended by then.
        timeline: where events are recorded.
        auth_token: sign requests like Twilio with this token (None: unsigned).
        resolve: tells which assistant item and offset a received payload carries (the
            Realtime stand-in's ``resolve``, or ``simulate.ScriptedAudio``); None: not known.
        music: the base64 payloads of the relay's waiting music (``music.load_wait_music``): a
            payload among them is music, anything else the assistant's voice.
        line: network delay, jitter and noise between the phone and the relay.
    """

    def __init__(
        self,
        network: PhoneNetwork,
        number: str,
        turns: list[CallerTurn],
        hangup: dict[str, Any],
        max_duration_s: float,
        timeline: Timeline,
        auth_token: str | None = None,
        resolve: Callable[[str], tuple[str, int] | None] | None = None,
        music: frozenset[str] = frozenset(),
        line: Line | None = None,
    ) -> None:
        self.number = number
        self.turns = turns
        self.hangup = hangup
        self.max_duration_s = max_duration_s
        self.timeline = timeline
        self.auth_token = auth_token
        self.resolve = resolve
        self.music = music
        self.line = line or Line()
        self.playback = PhonePlayback()
        self.network = network
        self.sent_audio: list[tuple[float, bytes]] = []
        self.spoken: list[SpokenTurn] = []
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
        self.script = CallerScript(self)
        """What the caller says and when (``turns``, ``hangup``)."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()
        self.mouth_empty = asyncio.Event()
        """Set when the mouth's last frame has gone down the line."""
        self.stream_ms = 0
        self._rng = random.Random(self.line.seed)
        self._outbox: asyncio.Queue[tuple[float, str | None]] = asyncio.Queue()
        self._out_due = 0.0
        self._in_due = 0.0

    # -- dialling --

    async def dial(self, http: aiohttp.ClientSession, relay_url: str) -> Answer:
        """POST the voice webhook (Twilio) or answer URL (Plivo), signed; returns what it answered.

        Raises:
            CallFailed: the webhook failed, or its answer has no bidirectional ``<Stream>``.
        """
        network = self.network
        url = relay_url.rstrip("/") + network.answer_path
        form = network.webhook(self.number)
        headers = network.sign(self.auth_token, "POST", url, form) if self.auth_token else {}
        self.timeline.add(network.name, f"POST {network.answer_path} From={self.number}")
        async with http.post(url, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise CallFailed(f"voice webhook answered HTTP {resp.status}: {body[:200]}")
        answer = network.read_answer(body)
        self.twiml_say = answer.says
        for text in answer.says:
            self.timeline.add(network.name, f"says {text!r}")
        return answer

    async def run(self, http: aiohttp.ClientSession, relay_url: str, answer: Answer | None = None) -> None:
        """Place the whole call (or, given the ``answer`` a placed call carried, answer it: the callee's side).
        Raises CallFailed when it cannot be completed as scripted."""
        network = self.network
        answer = answer or await self.dial(http, relay_url)
        stream_url = answer.stream_url
        headers = {}
        if self.auth_token:
            headers = network.sign(self.auth_token, "GET", network.handshake_url(stream_url), {})
        async with http.ws_connect(stream_url, headers=headers, autoping=True) as ws:
            self._ws = ws
            self.connected_at = time.monotonic()
            self.timeline.add(network.name, f"stream connected {stream_url}")
            tasks = [asyncio.create_task(self._receive(ws)),
                     asyncio.create_task(self._carry(self._outbox, ws.send_str))]
            for message in network.opening(answer):
                await self.send(message)
            tasks += [asyncio.create_task(self._speak_frames()), asyncio.create_task(self._echo_marks())]
            script = asyncio.create_task(self.script.run())
            try:
                async with asyncio.timeout(self.max_duration_s):
                    done, _ = await asyncio.wait([script, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise CallFailed(f"the call did not finish within {self.max_duration_s:.0f} s: "
                                 f"{self.script.waiting_for}") from None
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
                goodbye = network.goodbye()
                if goodbye is not None:
                    await ws.send_str(goodbye)  # the last word: no delay queue left to carry it
                await ws.close()
            self.close_code = ws.close_code

    async def end_stream(self, why: str) -> None:
        """The network ends the stream because the call moved on (a transfer's ``<Dial>``): its last message,
        then the socket closes."""
        self.timeline.add(self.network.name, why)
        self.hung_up_by = "network"
        ws = self._ws
        if ws is not None and not ws.closed:
            goodbye = self.network.goodbye()
            with contextlib.suppress(ConnectionResetError):
                if goodbye is not None:
                    await ws.send_str(goodbye)
                await ws.close()

    def _due(self, last: float) -> float:
        """When a message handed to the line now arrives: delay plus jitter, never before the one
        ahead of it."""
        line = self.line
        delay = line.delay_ms + (self._rng.uniform(0.0, line.jitter_ms) if line.jitter_ms else 0.0)
        return max(last, time.monotonic() + delay / 1000)

    async def send(self, message: str) -> None:
        """Hand a message to the line towards the relay (carried to it by ``_carry``)."""
        self._out_due = self._due(self._out_due)
        self._outbox.put_nowait((self._out_due, message))

    @staticmethod
    async def _carry(queue: asyncio.Queue[tuple[float, str | None]],
                     deliver: Callable[[str], typing.Awaitable[None]]) -> None:
        """Deliver each message of ``queue`` when it is due (the line's delay); returns at ``None``."""
        while True:
            due, message = await queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if message is None:
                return
            await deliver(message)

    # -- the line --

    async def _speak_frames(self) -> None:
        """One 20 ms media frame on a monotonic clock, speech when the mouth has some, the line's
        noise (or digital silence) between."""
        pacer = audio.FramePacer(max_lag_s=5.0)  # a phone line never skips: late frames go out in a burst
        noise = LineNoise(self.line.noise_dbfs, self.line.seed) if self.line.noise_dbfs is not None else None
        silence = ULAW_SILENCE * FRAME_BYTES
        while True:
            speech = self.mouth.popleft() if self.mouth else None
            if noise is not None:
                frame = noise.frame(speech)
            else:
                frame = silence if speech is None else speech
            if frame is not silence:
                self.sent_audio.append((time.monotonic(), frame))
            if speech is not None and not self.mouth:
                self.mouth_empty.set()
            out = self.network.media(frame, self.stream_ms)
            for message in [out] if isinstance(out, str) else out:  # Telnyx: now and then two, swapped
                await self.send(message)
            self.stream_ms += 20
            await pacer.wait()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read the relay's messages; each reaches the phone after the line's delay."""
        if not self.line.delay_ms and not self.line.jitter_ms:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_message(msg.data, time.monotonic())
        else:
            inbox: asyncio.Queue[tuple[float, str | None]] = asyncio.Queue()
            arrive = asyncio.create_task(self._carry(inbox, self._arrived))
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        self._in_due = self._due(self._in_due)
                        inbox.put_nowait((self._in_due, msg.data))
                inbox.put_nowait((self._due(self._in_due), None))
                await arrive
            finally:
                arrive.cancel()
        if self.hung_up_by != "network":  # the network ended it itself (end_stream) and said so
            self.timeline.add(self.network.name, f"relay closed the stream (code {ws.close_code})")

    async def _arrived(self, data: str) -> None:
        await self._on_message(data, time.monotonic())

    async def _on_message(self, data: str, now: float) -> None:
        """One relay message at the phone: play media, queue a mark, or clear."""
        kind, value = self.network.read(json.loads(data))
        if kind == "media":
            payload = value
            tag = self.resolve(payload) if self.resolve else None
            music = tag is None and payload in self.music
            if tag is not None and tag[0] in self.cut_items:
                self.late_frames.append((now, tag[0]))
            was_playing = self.playback.playing(now)
            previous = self.playback.chunks[-1].music if self.playback.chunks else None
            self.playback.enqueue_media(now, base64.b64decode(payload), tag, music)
            if not was_playing or previous != music:
                if music:
                    heard = "hears waiting music"
                else:
                    heard = "hears assistant audio" + (f" (item {tag[0][-6:]})" if tag else "")
                self.timeline.add("caller", heard, at=max(now, self.playback.chunks[-1].start))
        elif kind == "mark":
            for name in self.playback.enqueue_mark(now, value):
                await self._echo(name)
            self._wake.set()
        else:  # clear
            current = next(
                (c for c in reversed(self.playback.chunks) if c.start <= now and c.played_bytes(now) > 0), None
            )
            item = current.tag[0] if current and current.tag else None
            heard = self.playback.heard_bytes_by_item(now).get(item, 0) if item else 0
            pending = self.playback.clear(now)
            if self.network.echoes_cleared_marks:
                for name in pending:
                    await self._echo(name)
            cleared = self.network.cleared()
            if cleared is not None:
                await self.send(cleared)
            if current is not None and current.music:
                self.music_clears += 1  # the end of waiting music, not a barge-in
                self.timeline.add(self.network.name, "clear (waiting music)")
                return
            if item:
                self.cut_items.add(item)
            self.barge_ins.append(BargeIn(now, item, heard / BYTES_PER_MS))
            self.timeline.add(
                self.network.name,
                "clear" + (f": caller heard {heard / BYTES_PER_MS:.0f} ms of item {item[-6:]}" if item else ""),
            )

    async def _echo(self, name: str) -> None:
        self.marks_echoed += 1
        await self.send(self.network.played(name))

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



def render_wav(caller: PhoneCaller) -> bytes:
    """Stereo 8 kHz WAV of the call: left what the caller said, right what they heard."""
    t0 = caller.timeline.t0
    end = caller.ended_at or time.monotonic()
    total = int((end - t0) * SAMPLE_RATE_HZ) + 1
    left = bytearray(ULAW_SILENCE * total)
    right = bytearray(ULAW_SILENCE * total)
    for at, frame in caller.sent_audio:
        i = int((at - t0) * SAMPLE_RATE_HZ)
        left[i : i + len(frame)] = frame[: max(0, total - i)]
    for chunk in caller.playback.chunks:
        played = chunk.data[: chunk.played_bytes(end)]
        i = int((chunk.start - t0) * SAMPLE_RATE_HZ)
        right[i : i + len(played)] = played[: max(0, total - i)]
    pcm_left = audio.ulaw_to_pcm16(bytes(left[:total]))
    pcm_right = audio.ulaw_to_pcm16(bytes(right[:total]))
    return audio.write_wav(audio.interleave(pcm_left, pcm_right), SAMPLE_RATE_HZ, 2)


class CallerScript:
    """What the caller says and when: each scripted utterance or key press at its moment, then the hang-up; and
    what it is waiting for now (named when a call times out).

    Args:
        caller: the phone it speaks into (its mouth, playback and line).
    """

    def __init__(self, caller: PhoneCaller) -> None:
        self._caller = caller
        self._waiting: tuple[str, float | None] = ("for the call to connect", None)

    async def first_utterance_sent(self) -> None:
        """Return once the script's first utterance has gone down the line (its last frame sent)."""
        caller = self._caller
        while not caller.spoken:
            caller.mouth_empty.clear()
            await caller.mouth_empty.wait()
        while caller.mouth:
            caller.mouth_empty.clear()
            await caller.mouth_empty.wait()

    async def _wait_for(self, when: dict[str, Any], since: float) -> None:
        """Wait for a scripted moment (see ``CallerTurn``), polling the playback every 5 ms."""
        caller = self._caller
        if "at_ms" in when:
            assert caller.connected_at is not None
            await asyncio.sleep(max(0.0, caller.connected_at + when["at_ms"] / 1000 - time.monotonic()))
            return
        after = when.get("after")
        first: PlayedChunk | None = None
        while True:
            now = time.monotonic()
            if first is None:
                first = next(
                    (
                        c
                        for c in caller.playback.chunks
                        if c.start >= since and c.start <= now and c.played_bytes(now) > 0
                    ),
                    None,
                )
            elif after == "assistant_audio":
                played = sum(c.played_bytes(now) for c in caller.playback.chunks if c.start >= first.start)
                if played >= when.get("ms", 0) * BYTES_PER_MS:
                    return
            elif after == "assistant_done":
                idle_for = now - caller.playback.end
                if idle_for >= when.get("delay_ms", 0) / 1000:
                    return
            else:
                raise CallFailed(f"unknown scripted moment {when!r}")
            await asyncio.sleep(0.005)

    @property
    def waiting_for(self) -> str:
        """What the script waits for now, and what the caller heard since its last turn (named when
        the call times out)."""
        caller = self._caller
        what, since = self._waiting
        last = caller.spoken[-1] if caller.spoken else None
        said = f", after the caller said {last.text or 'something'!r} (turn {last.index})" if last else ""
        if since is None or any(c.start >= since and not c.music for c in caller.playback.chunks):
            return f"waiting {what}{said}"
        if last is None:
            return f"waiting {what}; no assistant audio came"
        return f"waiting {what}{said}; no assistant audio came after it (was that speech ever detected?)"

    async def run(self) -> None:
        """Say each scripted turn at its moment, then hang up at the scripted moment (or wait for the relay to)."""
        caller = self._caller
        since = time.monotonic()
        for n, turn in enumerate(caller.turns, 1):
            label = f"turn {n} of {len(caller.turns)}" + (f" ({turn.text!r})" if turn.text else "")
            self._waiting = (f"to begin {label}", since)
            await self._wait_for(turn.when, since)
            if turn.dtmf:
                caller.timeline.add("caller", f"presses {turn.dtmf}")
                for digit in turn.dtmf:
                    await caller.send(caller.network.dtmf(digit))
                    await asyncio.sleep(KEY_PRESS_S)
            else:
                caller.timeline.add("caller", f'says "{turn.text}"' if turn.text else "speaks")
                caller.mouth_empty.clear()
                frames = audio.frames(turn.ulaw)
                start_ms = caller.stream_ms + 20 * len(caller.mouth)
                caller.spoken.append(SpokenTurn(n, turn.text, start_ms, start_ms + 20 * len(frames)))
                caller.mouth.extend(frames)
                self._waiting = (f"for the caller to finish {label}", None)
                await caller.mouth_empty.wait()
            since = time.monotonic()
        if caller.hangup.get("by") == "assistant":
            caller.timeline.add("caller", "waits for the assistant to hang up")
            self._waiting = ("for the assistant to hang up", since)
            await asyncio.Event().wait()  # the call ends when the relay closes the stream
        self._waiting = ("for the moment to hang up", since)
        await self._wait_for(caller.hangup, since)
        caller.hung_up_by = "caller"
        caller.timeline.add("caller", "hangs up")


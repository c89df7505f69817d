"""A phone leg over an aiohttp websocket, for any telephony dialect (``phone_twilio``, ``phone_plivo``)."""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from phones.leg import (
    MalformedFrame,
    PhoneAudio,
    PhoneDtmf,
    PhoneEvent,
    PhoneMarkPlayed,
    PhoneStart,
    PhoneStop,
    SequencedAudio,
    decode_json_object,
    inner_text,
)

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""How long a closing handshake with the phone may take before the connection is dropped (a phone
that has stopped reading never takes the close frame)."""

_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def parse_frame(
    text: str | bytes,
    network: str,
    start: Callable[[dict[str, Any]], PhoneStart],
    mark_events: frozenset[str],
    mark_name: Callable[[dict[str, Any]], str | None],
    quiet: frozenset[str] = frozenset(),
    sequenced: Callable[[str, dict[str, Any]], PhoneAudio] | None = None,
) -> PhoneEvent | None:
    """One media-stream text frame as a phone event: what Twilio's and Plivo's frames share
    (``{"event": ...}``, ``media.payload``, ``dtmf.digit``, ``stop``), with each dialect's own
    start, mark event names and mark name.

    Args:
        text: the frame (UTF-8 bytes as received, or a str).
        network: for messages (``twilio``).
        start: the dialect's start frame to a ``PhoneStart`` (raises MalformedFrame).
        mark_events: the event names that report a mark played (``mark``; ``playedStream``).
        mark_name: the mark's name from such an event, or None.
        quiet: events that are expected and ignored without a DEBUG line.
        sequenced: for a network whose frames may arrive out of order, ``(payload, event)`` to a
            ``SequencedAudio`` carrying the frame's sequence number (raises MalformedFrame).

    Raises:
        MalformedFrame: not JSON, not an object, or a known event missing what the relay reads.
    """
    try:
        event = decode_json_object(text)
    except ValueError as exc:
        raise MalformedFrame("json", f"{exc} from {network} ignored") from None
    kind = event.get("event")
    if kind == "media":  # the hot path: 50 a second per call
        payload = inner_text(event, "media", "payload")
        if not payload:
            raise MalformedFrame("media", f"{network} media without a payload dropped")
        try:  # 0.7 µs for 20 ms of audio: garbage never reaches the Realtime service
            binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedFrame("base64", f"{network} media that is not base64 dropped") from None
        return PhoneAudio(payload) if sequenced is None else sequenced(payload, event)
    if type(kind) is not str:  # a list or an object cannot be looked up among the names below
        raise MalformedFrame("event", f"{network} event that is not a string dropped")
    if kind in mark_events:
        name = mark_name(event)
        if name is None:
            raise MalformedFrame("mark", f"{network} {kind} without a name dropped")
        return PhoneMarkPlayed(name)
    if kind == "start":
        return start(event)
    if kind == "dtmf":
        digit = inner_text(event, "dtmf", "digit")
        if digit is None:
            raise MalformedFrame("dtmf", f"{network} dtmf without a digit dropped")
        return PhoneDtmf(digit)
    if kind == "stop":
        return PhoneStop()
    if kind not in quiet:
        logger.debug("%s %s ignored", network, kind)
    return None


@dataclass(frozen=True, slots=True)
class Dialect:
    """One phone network's media-stream wire format, as plain functions (pipecat's one serializer
    per network, without the class hierarchy)."""

    network: str
    """The network's name in logs and end reasons (``twilio``)."""
    parse: Callable[[str | bytes], PhoneEvent | None]
    """One text frame (UTF-8) to a phone event (None: nothing the bridge uses). Raises MalformedFrame."""
    media: Callable[[str, str], bytes]
    """``(stream_sid, payload)`` to the message (UTF-8 JSON) that plays base64 µ-law audio."""
    mark: Callable[[str, str], bytes]
    """``(stream_sid, name)`` to the message the phone answers once the audio before it has played."""
    clear: Callable[[str], bytes]
    """``stream_sid`` to the message that drops the phone's queued audio."""
    max_message_bytes: int
    """Largest frame accepted from the network."""
    reorders: bool = False
    """Its media frames may arrive out of order: ``parse`` yields ``SequencedAudio``, which the leg puts back in
    order (``Resequencer``)."""


class Resequencer:
    """Media frames back in their sequence order, within a small window.

    A frame that comes before its turn waits for the ones before it, at most ``WINDOW`` frames; then the gap is
    given up (those frames are lost). A frame older than one already handed on (late, or a duplicate) is
    dropped, and so is one more than ``MAX_AHEAD`` ahead of the next expected (a number from the future would
    otherwise make every later frame "late"). In-order frames pass at once: the window costs nothing then.
    """

    WINDOW = 4
    """Frames held waiting for a missing one: 80 ms of 20 ms frames."""
    MAX_AHEAD = 50
    """A frame this far ahead of the next expected one is not believed (one second of frames)."""

    def __init__(self) -> None:
        self._next: int | None = None
        self._held: dict[int, PhoneAudio] = {}
        self.dropped = 0
        """Frames dropped as late, duplicate or from the future."""

    def push(self, sequence: int, audio: PhoneAudio) -> list[PhoneAudio]:
        """One frame in; the frames to hand on now, in order."""
        expected = self._next
        if expected is None or sequence == expected:  # the common case
            self._next = sequence + 1
            return [audio, *self._release()] if self._held else [audio]
        if sequence < expected or sequence in self._held or sequence > expected + self.MAX_AHEAD:
            self.dropped += 1
            return []
        self._held[sequence] = audio
        if len(self._held) <= self.WINDOW:
            return []
        self._next = min(self._held)  # the missing frames are not coming: skip the gap
        return self._release()

    def _release(self) -> list[PhoneAudio]:
        out = []
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        return out


class WebSocketLeg:
    """A media-stream websocket as the bridge's phone leg (``protocol.PhoneLeg``).

    Iterate it for phone events (``async for event in leg``) until the socket closes; unusable
    frames are dropped with one warning per kind and call. Nothing may be sent before the start
    (outbound messages carry its stream id). ``transport`` (the request's) tells whether the phone is
    still taking what is sent (``write_stalled``) and lets a stalled one be dropped (``abort``).
    """

    def __init__(self, ws: web.WebSocketResponse, dialect: Dialect, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self._transport = transport
        self._high_water = transport.get_write_buffer_limits()[1] if transport is not None else 0
        self.dialect = dialect
        self.network = dialect.network
        self.stream_sid = ""
        self._media = dialect.media
        self._warned: set[str] = set()
        self._resequencer = Resequencer() if dialect.reorders else None
        self._ready: deque[PhoneEvent] = deque()
        """Frames the resequencer released together, handed on one by one."""

    def __aiter__(self) -> WebSocketLeg:
        return self

    async def __anext__(self) -> PhoneEvent:
        """The next usable phone event; StopAsyncIteration once the socket is closed. Safe to cancel."""
        if self._ready:
            return self._ready.popleft()
        while True:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    event = self.dialect.parse(msg.data)
                except MalformedFrame as exc:
                    self._warn_once(exc.kind, exc.message)
                    continue
                if event is None:
                    continue
                if type(event) is SequencedAudio and self._resequencer is not None:
                    released = self._resequencer.push(event.sequence, PhoneAudio(event.payload))
                    if not released:
                        continue
                    self._ready.extend(released[1:])
                    return released[0]
                if type(event) is PhoneStart:
                    self.stream_sid = event.stream_sid
                return event
            if msg.type is WSMsgType.BINARY:
                self._warn_once("binary", f"binary frame from {self.network} ignored")
            elif msg.type in _ENDED:
                raise StopAsyncIteration

    async def send_audio(self, payload: str) -> None:
        """Queue base64 µ-law audio at the phone. Raises ConnectionResetError once the socket is gone."""
        await self.ws.send_frame(self._media(self.stream_sid, payload), WSMsgType.TEXT)

    async def send_mark(self, name: str) -> None:
        """Send a mark (Twilio ``mark``, Plivo ``checkpoint``)."""
        await self.ws.send_frame(self.dialect.mark(self.stream_sid, name), WSMsgType.TEXT)

    async def clear(self) -> None:
        """Drop the audio queued at the phone."""
        await self.ws.send_frame(self.dialect.clear(self.stream_sid), WSMsgType.TEXT)

    async def close(self, code: int, reason: str = "") -> None:
        """Close the websocket with ``code``; this hangs up the call. A phone that does not complete
        the closing handshake within ``CLOSE_TIMEOUT_S`` (or has stopped reading) is dropped."""
        if self.write_stalled:
            self.abort()
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still unsent (a phone that stopped reading)."""
        if self._transport is not None:
            self._transport.abort()

    @property
    def unsent_bytes(self) -> int:
        """Bytes sent to the phone that its TCP connection has not yet taken (the user-space buffer)."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0

    @property
    def write_stalled(self) -> bool:
        """True while the send buffer is over its high-water mark: sends wait for the phone to read."""
        return self.unsent_bytes > self._high_water

    @property
    def closed(self) -> bool:
        """True once the websocket is closed (by either side)."""
        return self.ws.closed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s stream_sid=%s", message, self.stream_sid or "-")

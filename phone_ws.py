"""A phone leg over an aiohttp websocket, for any telephony dialect (``phone_twilio``, ``phone_plivo``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from protocol import MalformedFrame, PhoneEvent, PhoneStart

logger = logging.getLogger("phone")

_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(frozen=True, slots=True)
class Dialect:
    """One phone network's media-stream wire format, as plain functions (pipecat's one serializer
    per network, without the class hierarchy)."""

    network: str
    """The network's name in logs and end reasons (``twilio``)."""
    parse: Callable[[str], PhoneEvent | None]
    """One text frame to a phone event (None: nothing the bridge uses). Raises MalformedFrame."""
    media: Callable[[str, str], str]
    """``(stream_sid, payload)`` to the message that plays base64 µ-law audio."""
    mark: Callable[[str, str], str]
    """``(stream_sid, name)`` to the message the phone answers once the audio before it has played."""
    clear: Callable[[str], str]
    """``stream_sid`` to the message that drops the phone's queued audio."""
    max_message_bytes: int
    """Largest frame accepted from the network."""


class WebSocketLeg:
    """A media-stream websocket as the bridge's phone leg (``protocol.PhoneLeg``).

    Iterate it for phone events (``async for event in leg``) until the socket closes; unusable
    frames are dropped with one warning per kind and call. Nothing may be sent before the start
    (outbound messages carry its stream id).
    """

    def __init__(self, ws: web.WebSocketResponse, dialect: Dialect) -> None:
        self.ws = ws
        self.dialect = dialect
        self.network = dialect.network
        self.stream_sid = ""
        self._media = dialect.media
        self._warned: set[str] = set()

    def __aiter__(self) -> WebSocketLeg:
        return self

    async def __anext__(self) -> PhoneEvent:
        """The next usable phone event; StopAsyncIteration once the socket is closed. Safe to cancel."""
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
                if type(event) is PhoneStart:
                    self.stream_sid = event.stream_sid
                return event
            if msg.type is WSMsgType.BINARY:
                self._warn_once("binary", f"binary frame from {self.network} ignored")
            elif msg.type in _ENDED:
                raise StopAsyncIteration

    async def send_audio(self, payload: str) -> None:
        """Queue base64 µ-law audio at the phone. Raises ConnectionResetError once the socket is gone."""
        await self.ws.send_str(self._media(self.stream_sid, payload))

    async def send_mark(self, name: str) -> None:
        """Send a mark (Twilio ``mark``, Plivo ``checkpoint``)."""
        await self.ws.send_str(self.dialect.mark(self.stream_sid, name))

    async def clear(self) -> None:
        """Drop the audio queued at the phone."""
        await self.ws.send_str(self.dialect.clear(self.stream_sid))

    async def close(self, code: int, reason: str = "") -> None:
        """Close the websocket with ``code``; this hangs up the call."""
        await self.ws.close(code=code, message=reason.encode())

    @property
    def closed(self) -> bool:
        """True once the websocket is closed (by either side)."""
        return self.ws.closed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s stream_sid=%s", message, self.stream_sid or "-")

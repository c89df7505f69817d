"""The Twilio dialect: Media Streams messages, TwiML answers, signature checks, and the Twilio phone leg.

Twilio's wire names are written here once. The bridge sees only the transport-neutral phone
events of ``protocol`` and the leg's ``send_audio`` / ``send_mark`` / ``clear`` / ``close``.

Sources: Twilio Media Streams "WebSocket Messages" docs; TwiML ``<Connect><Stream>`` docs;
Twilio "Webhooks security" docs (``X-Twilio-Signature``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from protocol import (
    MalformedFrame,
    PhoneAudio,
    PhoneDtmf,
    PhoneEvent,
    PhoneMarkPlayed,
    PhoneStart,
    PhoneStop,
    decode_json_object,
)

logger = logging.getLogger("phone_twilio")

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest frame accepted from Twilio (a 20 ms media frame is about 300 bytes)."""

_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


# --- Media Streams messages ------------------------------------------------------------------


def media_message(stream_sid: str, payload: str) -> str:
    """Outbound ``media``.

    Args:
        stream_sid: the ``streamSid`` from Twilio's ``start``.
        payload: base64 µ-law 8 kHz audio, any length, no file header (Twilio docs: "The audio
            can be of any size"; it is buffered and played in the order received).
    """
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """Outbound ``mark``: Twilio echoes it when the audio sent before it has played, at once if
    nothing is buffered, or immediately on ``clear`` (then it means discarded)."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Outbound ``clear``: drops all audio buffered at Twilio and echoes every pending mark."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def parse_message(text: str) -> PhoneEvent | None:
    """One Twilio Media Streams message as a phone event.

    Args:
        text: one websocket text frame from Twilio.

    Returns:
        ``PhoneStart``, ``PhoneAudio`` (``media``), ``PhoneMarkPlayed`` (a ``mark`` echo),
        ``PhoneDtmf`` or ``PhoneStop``; None for ``connected`` and types the relay does not use.

    Raises:
        MalformedFrame: not JSON, not an object, or a known event missing what the relay reads.
    """
    try:
        event = decode_json_object(text)
    except ValueError as exc:
        raise MalformedFrame("json", f"{exc} from twilio ignored") from None
    kind = event.get("event")
    if kind == "media":  # the hot path: 50 a second per call
        payload = _inner_text(event, "media", "payload")
        if payload is None:
            raise MalformedFrame("media", "twilio media without a payload dropped")
        return PhoneAudio(payload)
    if kind == "mark":
        name = _inner_text(event, "mark", "name")
        if name is None:
            raise MalformedFrame("mark", "twilio mark without a name dropped")
        return PhoneMarkPlayed(name)
    if kind == "start":
        start = event.get("start")
        if type(start) is not dict or type(start.get("streamSid")) is not str:
            raise MalformedFrame("start", "twilio start without start.streamSid dropped")
        params = start.get("customParameters")
        custom = {k: v for k, v in params.items() if type(v) is str} if type(params) is dict else {}
        call_sid = start.get("callSid")
        return PhoneStart(start["streamSid"], call_sid if type(call_sid) is str else "", custom)
    if kind == "dtmf":
        digit = _inner_text(event, "dtmf", "digit")
        if digit is None:
            raise MalformedFrame("dtmf", "twilio dtmf without a digit dropped")
        return PhoneDtmf(digit)
    if kind == "stop":
        return PhoneStop()
    if kind != "connected":
        logger.debug("twilio %s ignored", kind)
    return None


def _inner_text(event: dict[str, Any], outer: str, inner: str) -> str | None:
    """``event[outer][inner]`` when it is a string, else None."""
    body = event.get(outer)
    value = body.get(inner) if type(body) is dict else None
    return value if type(value) is str else None


# --- TwiML ---------------------------------------------------------------------------------


def stream_twiml(say: str, stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Say>`` then ``<Connect><Stream url>`` with one ``<Parameter>`` per item, nothing after.

    TwiML docs: ``<Connect><Stream>`` holds the call until the websocket closes, and with no verb
    after ``</Connect>`` the call then ends, so closing the stream is how the relay hangs up.
    Names and texts are XML-escaped by the twilio library.
    """
    response = VoiceResponse()
    response.say(say)
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def hang_up_twiml(say: str) -> str:
    """``<Say>`` then ``<Hangup/>``."""
    response = VoiceResponse()
    response.say(say)
    response.hangup()
    return str(response.to_xml())


# --- Signatures ------------------------------------------------------------------------------


class Signatures:
    """``X-Twilio-Signature`` checks with the twilio library's ``RequestValidator``.

    Twilio signs a webhook over its full URL and form parameters, and a Media Streams handshake
    over the ``wss://`` URL with no parameters (Twilio Media Streams docs: the handshake is signed like a webhook).
    """

    HEADER = "X-Twilio-Signature"

    def __init__(self, auth_token: str | None) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None

    @property
    def enabled(self) -> bool:
        """True when ``TWILIO_AUTH_TOKEN`` is set and requests must be signed."""
        return self._validator is not None

    def valid(self, url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        """True when the request's signature matches ``url`` and ``params`` (always, when off)."""
        if self._validator is None:
            return True
        return bool(self._validator.validate(url, dict(params), headers.get(self.HEADER, "")))


# --- The phone leg -------------------------------------------------------------------------


class TwilioLeg:
    """A Twilio Media Streams websocket as the bridge's phone leg.

    Iterate it for phone events (``async for event in leg``) until Twilio closes the socket;
    unusable frames are dropped with one warning per kind. Nothing may be sent before ``start``
    (every outbound message carries its ``streamSid``).
    """

    network = "twilio"

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.stream_sid = ""
        self._warned: set[str] = set()

    def __aiter__(self) -> TwilioLeg:
        return self

    async def __anext__(self) -> PhoneEvent:
        """The next usable phone event; StopAsyncIteration once the socket is closed. Safe to cancel."""
        while True:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    event = parse_message(msg.data)
                except MalformedFrame as exc:
                    self._warn_once(exc.kind, exc.message)
                    continue
                if event is None:
                    continue
                if type(event) is PhoneStart:
                    self.stream_sid = event.stream_sid
                return event
            if msg.type is WSMsgType.BINARY:
                self._warn_once("binary", "binary frame from twilio ignored")
            elif msg.type in _ENDED:
                raise StopAsyncIteration

    async def send_audio(self, payload: str) -> None:
        """Queue base64 µ-law audio at Twilio. Raises ConnectionResetError once the socket is gone."""
        await self.ws.send_str(media_message(self.stream_sid, payload))

    async def send_mark(self, name: str) -> None:
        """Send a mark, echoed when the audio sent before it has played (or was cleared)."""
        await self.ws.send_str(mark_message(self.stream_sid, name))

    async def clear(self) -> None:
        """Drop the audio queued at Twilio; Twilio echoes every pending mark at once."""
        await self.ws.send_str(clear_message(self.stream_sid))

    async def close(self, code: int, reason: str = "") -> None:
        """Close the websocket with ``code``; with nothing after ``</Connect>`` Twilio hangs up."""
        await self.ws.close(code=code, message=reason.encode())

    @property
    def closed(self) -> bool:
        """True once the websocket is closed (by either side)."""
        return self.ws.closed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s stream_sid=%s", message, self.stream_sid or "-")

"""The Twilio dialect: Media Streams messages, TwiML answers and signature checks.

Twilio's wire names are written here once. ``NETWORK`` is Twilio's line in the relay's table of
networks; its ``DIALECT`` drives a ``phones.websocket.WebSocketLeg``, and the call sees only the
network-neutral phone events of ``phones.leg``.

Sources: Twilio Media Streams "WebSocket Messages" docs; TwiML ``<Connect><Stream>`` docs;
Twilio "Webhooks security" docs (``X-Twilio-Signature``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from phones.leg import MalformedFrame, PhoneEvent, PhoneStart, inner_text, peer_id
from phones.network import Network
from phones.websocket import Dialect, parse_frame

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest frame accepted from Twilio (a 20 ms media frame is about 300 bytes)."""

# --- Media Streams messages ------------------------------------------------------------------


def media_message(stream_sid: str, payload: str) -> bytes:
    """Outbound ``media`` (UTF-8 JSON, as are the other outbound messages).

    Args:
        stream_sid: the ``streamSid`` from Twilio's ``start``.
        payload: base64 µ-law 8 kHz audio, any length, no file header (Twilio docs: "The audio
            can be of any size"; it is buffered and played in the order received).
    """
    return orjson.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> bytes:
    """Outbound ``mark``: Twilio echoes it when the audio sent before it has played, at once if
    nothing is buffered, or immediately on ``clear`` (then it means discarded)."""
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> bytes:
    """Outbound ``clear``: drops all audio buffered at Twilio and echoes every pending mark."""
    return orjson.dumps({"event": "clear", "streamSid": stream_sid})


def _start(event: dict[str, Any]) -> PhoneStart:
    start = event.get("start")
    stream_sid = peer_id(start.get("streamSid")) if type(start) is dict else None
    if stream_sid is None:
        raise MalformedFrame("start", "twilio start without a usable start.streamSid dropped")
    params = start.get("customParameters")
    custom = {k: v for k, v in params.items() if type(v) is str and len(v) <= 256} if type(params) is dict else {}
    return PhoneStart(stream_sid, peer_id(start.get("callSid")) or "", custom)


_MARKS = frozenset({"mark"})
_QUIET = frozenset({"connected"})


def parse_message(text: str | bytes) -> PhoneEvent | None:
    """One Twilio Media Streams message as a phone event.

    Args:
        text: one websocket text frame from Twilio.

    Returns:
        ``PhoneStart`` (``streamSid``, ``callSid``, ``customParameters``), ``PhoneAudio``
        (``media``), ``PhoneMarkPlayed`` (a ``mark`` echo), ``PhoneDtmf`` or ``PhoneStop``; None
        for ``connected`` and types the relay does not use.

    Raises:
        MalformedFrame: not JSON, not an object, or a known event missing what the relay reads.
    """
    return parse_frame(text, "twilio", _start, _MARKS, lambda event: inner_text(event, "mark", "name"), _QUIET)


# --- TwiML ---------------------------------------------------------------------------------


def stream_twiml(say: str, stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Say>`` (none for an empty ``say``: an outbound call) then ``<Connect><Stream url>`` with one
    ``<Parameter>`` per item, nothing after.

    TwiML docs: ``<Connect><Stream>`` holds the call until the websocket closes, and with no verb
    after ``</Connect>`` the call then ends, so closing the stream is how the relay hangs up.
    Names and texts are XML-escaped by the twilio library.
    """
    response = VoiceResponse()
    if say:
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
    if say:
        response.say(say)
    response.hangup()
    return str(response.to_xml())


# --- Signatures ------------------------------------------------------------------------------


class Signatures:
    """``X-Twilio-Signature`` checks with the twilio library's ``RequestValidator``
    (``phones.network.Signatures``).

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

    def webhook(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes = b"") -> bool:
        """True when the request's signature matches ``url`` and ``params`` (always, when off)."""
        if self._validator is None:
            return True
        return bool(self._validator.validate(url, dict(params), headers.get(self.HEADER, "")))

    def handshake(self, https_url: str, wss_url: str, headers: Mapping[str, str]) -> bool:
        """The media websocket's handshake, signed over its ``wss://`` URL with no parameters."""
        return self.webhook("GET", wss_url, {}, headers)


# --- The dialect ------------------------------------------------------------------------------

DIALECT = Dialect("twilio", parse_message, media_message, mark_message, clear_message, MAX_MESSAGE_BYTES)
"""Twilio Media Streams, for ``phones.websocket.WebSocketLeg``."""

NETWORK = Network(
    name="twilio",
    answer_path="/incoming-call",
    stream_path="/media-stream",
    dialect=DIALECT,
    stream_answer=stream_twiml,
    hang_up_answer=hang_up_twiml,
    content_type="text/xml",
    call_id_param="CallSid",
    caller_number=lambda raw: raw,
    signatures=lambda config: Signatures(config.twilio_auth_token),
)
"""Twilio: ``/incoming-call`` answers TwiML, ``/media-stream`` carries the call; both 404 until
``TWILIO_AUTH_TOKEN`` is set (or ``ALLOW_UNSIGNED_WEBHOOKS``)."""

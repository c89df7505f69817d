"""The Plivo dialect: Audio Streams messages, Plivo XML answers and V3 signature checks.

Plivo's wire names are written here once. ``NETWORK`` is Plivo's line in the relay's table of
networks; its ``DIALECT`` drives a ``phones.websocket.WebSocketLeg``, and the call sees only the
network-neutral phone events of ``phones.leg``.

Sources: Plivo Audio Streaming guide and XML reference (``<Stream>``; events ``start``, ``media``,
``dtmf``, ``playedStream``, ``clearedAudio`` in; ``playAudio``, ``checkpoint``, ``clearAudio`` out);
Plivo "Validating requests" (``X-Plivo-Signature-V3``); the ``plivo`` SDK (``plivoxml``,
``plivo.utils.signature_v3``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from plivo import plivoxml
from plivo.utils.signature_v3 import construct_get_url, get_signature_v3, validate_v3_signature

from phones.leg import MalformedFrame, PhoneEvent, PhoneStart, peer_id
from phones.network import Network
from phones.websocket import Dialect, parse_frame

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
"""Plivo's websocket message limit (Audio Streaming guide: 64 KB)."""
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
HEADERS = {"caller_number": "callerNumber", "stream_expires": "streamExpires", "stream_nonce": "streamNonce",
           "stream_token": "streamToken", "stream_order": "streamOrder"}
"""The stream's parameters as ``extraHeaders`` keys: the XML reference allows only letters and digits
there, so the caller's E.164 number travels without its ``+``."""
_HEADER_SPLIT = re.compile(r"[,;]")


# --- Audio Streams messages ------------------------------------------------------------------


def play_audio_message(stream_id: str, payload: str) -> bytes:
    """Outbound ``playAudio`` (UTF-8 JSON, as are the other outbound messages): base64 µ-law 8 kHz,
    queued and played in order. Plivo's own SDK sends no ``streamId`` here and pipecat sends one; both
    are reported to work, so it is sent."""
    return orjson.dumps({"event": "playAudio", "streamId": stream_id,
                         "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": payload}})


def checkpoint_message(stream_id: str, name: str) -> bytes:
    """Outbound ``checkpoint``: Plivo answers ``playedStream`` with this name once the audio before
    it has played. After ``clearAudio`` pending checkpoints are never answered."""
    return orjson.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


def clear_audio_message(stream_id: str) -> bytes:
    """Outbound ``clearAudio``: drops every queued ``playAudio``; Plivo answers ``clearedAudio``."""
    return orjson.dumps({"event": "clearAudio", "streamId": stream_id})


def extra_headers(raw: Any) -> dict[str, str]:
    """``start.extra_headers`` (``"k1=v1,k2=v2"``, or ``;``-separated as the guide writes it) as the
    stream's parameters under the names the bridge reads (``HEADERS``); the caller's number in E.164."""
    found: dict[str, str] = {}
    if type(raw) is not str:
        return found
    for pair in _HEADER_SPLIT.split(raw):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            found[key.strip()] = value.strip()
    params = {name: found[header] for name, header in HEADERS.items() if header in found}
    number = params.get("caller_number", "")
    if number.isdigit():
        params["caller_number"] = "+" + number
    return params


def _start(event: dict[str, Any]) -> PhoneStart:
    start = event.get("start")
    stream_id = peer_id(start.get("streamId")) if type(start) is dict else None
    if stream_id is None:
        raise MalformedFrame("start", "plivo start without a usable start.streamId dropped")
    headers = event.get("extra_headers")
    params = extra_headers(headers if type(headers) is str and len(headers) <= 512 else None)
    return PhoneStart(stream_id, peer_id(start.get("callId")) or "", params)


def _mark_name(event: dict[str, Any]) -> str | None:
    name = event.get("name")
    return name if type(name) is str else None


_MARKS = frozenset({"playedStream", "played"})
_QUIET = frozenset({"clearedAudio"})


def parse_message(text: str | bytes) -> PhoneEvent | None:
    """One Plivo Audio Streams message as a phone event.

    Returns:
        ``PhoneStart`` (``streamId``, ``callId``, ``extra_headers``), ``PhoneAudio`` (``media``),
        ``PhoneMarkPlayed`` (``playedStream``, or ``played`` as a support article names it),
        ``PhoneDtmf`` or ``PhoneStop``; None for ``clearedAudio`` and types the relay does not use.

    Raises:
        MalformedFrame: not JSON, not an object, or a known event missing what the relay reads.
    """
    return parse_frame(text, "plivo", _start, _MARKS, _mark_name, _QUIET)


DIALECT = Dialect("plivo", parse_message, play_audio_message, checkpoint_message, clear_audio_message,
                  MAX_MESSAGE_BYTES)
"""Plivo Audio Streams, for ``phone_ws.WebSocketLeg``."""


# --- Plivo XML ---------------------------------------------------------------------------------


def stream_xml(say: str, stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Speak>`` (none for an empty ``say``: an outbound call) then a bidirectional ``<Stream>`` that keeps
    the call alive, µ-law 8 kHz in and out, with the stream's parameters (``HEADERS``: caller number, stream
    token) in ``extraHeaders``. Closing the stream then ends the call."""
    headers = ",".join(f"{HEADERS[name]}={value.lstrip('+')}" for name, value in parameters.items())
    response = plivoxml.ResponseElement()
    if say:
        response.add(plivoxml.SpeakElement(say))
    response.add(plivoxml.StreamElement(
        stream_url,
        bidirectional=True,
        keepCallAlive=True,
        audioTrack="inbound",
        contentType=CONTENT_TYPE,
        extraHeaders=headers,
    ))
    return str(response.to_string(pretty=False))


def hang_up_xml(say: str) -> str:
    """``<Speak>`` then ``<Hangup/>``."""
    response = plivoxml.ResponseElement()
    if say:
        response.add(plivoxml.SpeakElement(say))
    response.add(plivoxml.HangupElement())
    return str(response.to_string(pretty=False))


def caller_number(raw: str | None) -> str | None:
    """Plivo's ``From`` (E.164 digits without ``+``, e.g. ``14155550100``) made readable by
    ``callers.find_caller``: a ``+`` is put back in front of an all-digit number."""
    if raw and raw.isdigit():
        return "+" + raw
    return raw


# --- Signatures ------------------------------------------------------------------------------


class Signatures:
    """``X-Plivo-Signature-V3`` checks with the plivo SDK (``phones.network.Signatures``);
    ``X-Plivo-Signature-Ma-V3`` is accepted too, checked with the same token (it matches when
    ``PLIVO_AUTH_TOKEN`` is the main account's).

    The signature is HMAC-SHA256 over the URL (and, for a POST, the sorted form parameters) and
    ``X-Plivo-Signature-V3-Nonce``; the header may hold several comma-separated signatures.
    """

    NONCE = "X-Plivo-Signature-V3-Nonce"
    HEADERS = ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3")

    def __init__(self, auth_token: str | None) -> None:
        self._token = auth_token

    @property
    def enabled(self) -> bool:
        """True when ``PLIVO_AUTH_TOKEN`` is set."""
        return self._token is not None

    def webhook(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes = b"") -> bool:
        """True when a signature header matches ``method``, ``url`` (``http(s)://``) and ``params``
        for the request's nonce (always, when off); False without a nonce or a signature."""
        if self._token is None:
            return True
        nonce = headers.get(self.NONCE)
        if not nonce:
            return False
        for header in self.HEADERS:
            signature = headers.get(header)
            if not signature:
                continue
            try:
                if validate_v3_signature(method, url, nonce, self._token, signature, dict(params)):
                    return True
            except Exception:  # the SDK raises its ValidationError for malformed arguments
                logger.debug("plivo signature check refused its arguments", exc_info=True)
        return False

    def handshake(self, https_url: str, wss_url: str, headers: Mapping[str, str]) -> bool:
        """The media websocket's handshake, signed as a GET. Whether Plivo signs the ``https://``
        or the ``wss://`` form of the URL is not documented: Plivo's own stream SDK checks the
        ``https://`` form, and both are accepted (the SDK's validator refuses ``wss://`` URLs, so
        that form is computed with its signing functions directly)."""
        if self.webhook("GET", https_url, {}, headers):
            return True
        nonce = headers.get(self.NONCE)
        if self._token is None or not nonce:
            return False
        expected = get_signature_v3(self._token.encode(), construct_get_url(wss_url, {}).decode(), nonce.encode())
        return any(expected in headers.get(header, "").encode().split(b",") for header in self.HEADERS)


NETWORK = Network(
    name="plivo",
    answer_path="/plivo/answer",
    stream_path="/plivo/media-stream",
    dialect=DIALECT,
    stream_answer=stream_xml,
    hang_up_answer=hang_up_xml,
    content_type="application/xml",
    call_id_param="CallUUID",
    caller_number=caller_number,
    signatures=lambda config: Signatures(config.plivo_auth_token),
)
"""Plivo: ``/plivo/answer`` answers Plivo XML, ``/plivo/media-stream`` carries the call; both 404 until
``PLIVO_AUTH_TOKEN`` is set (or ``ALLOW_UNSIGNED_WEBHOOKS``)."""

"""The Telnyx dialect: media-streaming messages, TeXML answers and Ed25519 webhook signatures.

Telnyx's wire names are written here once. ``NETWORK`` is Telnyx's line in the relay's table of networks;
its ``DIALECT`` drives a ``phones.websocket.WebSocketLeg``, and the call sees only the network-neutral phone
events of ``phones.leg``. Telnyx frames may arrive out of order: media carries its ``sequence_number``, and
the leg puts the frames back in order (by ``media.chunk``, the media frames' own count).

Sources: Telnyx "Media Streaming" docs (``start``, ``media``, ``mark``, ``dtmf``, ``stop``, ``error`` in;
``media``, ``mark``, ``clear`` out; a ``clear`` returns every queued mark; frame order not guaranteed); TeXML
``<Connect><Stream>`` docs (``bidirectionalMode="rtp"`` or the audio sent back is dropped); Telnyx webhook
signing (Ed25519 over ``"{telnyx-timestamp}|{raw body}"``, 300 s tolerance, as the ``telnyx`` SDK's
``webhook_verification`` checks it), with PyNaCl.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from twilio.twiml.voice_response import Connect, VoiceResponse

from phones.leg import MalformedFrame, PhoneAudio, PhoneEvent, PhoneStart, SequencedAudio, inner_text, peer_id
from phones.network import Network
from phones.websocket import Dialect, parse_frame

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest frame accepted from Telnyx (a 20 ms media frame is about 300 bytes)."""
TIMESTAMP_TOLERANCE_S = 300
"""A webhook's ``telnyx-timestamp`` may be this far from now (the ``telnyx`` SDK's tolerance)."""
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"

# --- Media streaming messages ----------------------------------------------------------------


def media_message(stream_id: str, payload: str) -> bytes:
    """Outbound ``media``: raw µ-law 8 kHz, base64, no RTP header (``bidirectionalMode="rtp"``, PCMU)."""
    return orjson.dumps({"event": "media", "media": {"payload": payload}})


def mark_message(stream_id: str, name: str) -> bytes:
    """Outbound ``mark``: Telnyx sends it back when the media before it has played, or at once on ``clear``."""
    return orjson.dumps({"event": "mark", "mark": {"name": name}})


def clear_message(stream_id: str) -> bytes:
    """Outbound ``clear``: stops what plays, empties the queue and sends back every queued mark."""
    return orjson.dumps({"event": "clear"})


def _start(event: dict[str, Any]) -> PhoneStart:
    start = event.get("start")
    stream_id = peer_id(event.get("stream_id"))
    if stream_id is None or type(start) is not dict:
        raise MalformedFrame("start", "telnyx start without a usable stream_id dropped")
    media_format = start.get("media_format")
    encoding = media_format.get("encoding") if type(media_format) is dict else None
    rate = media_format.get("sample_rate") if type(media_format) is dict else None
    if (encoding, rate) != ("PCMU", 8000):
        raise MalformedFrame("codec", f"telnyx start with media_format {encoding!r} at {rate!r} Hz refused: the "
                                      "stream must be PCMU at 8000 Hz (the TeXML answer asks for it)")
    params = start.get("custom_parameters")
    custom = {k: v for k, v in params.items() if type(v) is str and len(v) <= 256} if type(params) is dict else {}
    call_id = peer_id(custom.get("call_id")) or peer_id(start.get("call_control_id")) or ""
    return PhoneStart(stream_id, call_id, custom)


def _sequenced(payload: str, event: dict[str, Any]) -> PhoneAudio:
    """The frame with its place in the media sequence: ``media.chunk``, which counts media frames only (a gap
    is a frame still to come or lost), else ``sequence_number``, which every message shares (a burst of mark
    echoes after a ``clear`` would look like a hundred missing frames)."""
    media = event.get("media")
    for sequence in (media.get("chunk") if type(media) is dict else None, event.get("sequence_number")):
        if type(sequence) is str and sequence.isascii() and sequence.isdigit() and len(sequence) <= 12:
            return SequencedAudio(payload, int(sequence))
        if type(sequence) is int and 0 <= sequence < 10**12:
            return SequencedAudio(payload, sequence)
    raise MalformedFrame("sequence", "telnyx media without a usable chunk or sequence_number dropped")


_MARKS = frozenset({"mark"})
_QUIET = frozenset({"connected"})


def parse_message(text: str | bytes) -> PhoneEvent | None:
    """One Telnyx media-streaming message as a phone event.

    Returns:
        ``PhoneStart`` (``stream_id``; the call id the webhook answer carried as the ``call_id`` parameter,
        else ``start.call_control_id``; ``start.custom_parameters``),
        ``SequencedAudio`` (``media`` with its ``chunk``), ``PhoneMarkPlayed``, ``PhoneDtmf``,
        ``PhoneStop``; None for ``connected`` and types the relay does not use.

    Raises:
        MalformedFrame: not JSON, not an object, a known event missing what the relay reads, a start in
            another codec than PCMU at 8000 Hz, or an ``error`` Telnyx reports (logged once per call).
    """
    if b'"error"' in (text if type(text) is bytes else text.encode()):  # rare: Telnyx reports a fault
        _error(text)
    return parse_frame(text, "telnyx", _start, _MARKS, lambda event: inner_text(event, "mark", "name"), _QUIET,
                       _sequenced)


def _error(text: str | bytes) -> None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    if type(event) is dict and event.get("event") == "error":
        payload = event.get("payload") if type(event.get("payload")) is dict else {}
        raise MalformedFrame("error", f"telnyx reported error {str(payload.get('code'))[:12]} "
                                      f"{str(payload.get('title'))[:64]}: {str(payload.get('detail'))[:200]}")


# --- TeXML -------------------------------------------------------------------------------------


def stream_texml(say: str, stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Say>`` then ``<Connect><Stream>`` bidirectional in RTP mode, PCMU at 8000 Hz, with one ``<Parameter>``
    per item. TeXML mirrors TwiML, so the twilio library builds it (and escapes it); without
    ``bidirectionalMode="rtp"`` Telnyx would expect MP3 back and drop the audio."""
    response = VoiceResponse()
    response.say(say)
    connect = Connect()
    stream = connect.stream(url=stream_url, bidirectionalMode="rtp", bidirectionalCodec="PCMU",
                            bidirectionalSamplingRate="8000")
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def hang_up_texml(say: str) -> str:
    """``<Say>`` then ``<Hangup/>``."""
    response = VoiceResponse()
    response.say(say)
    response.hangup()
    return str(response.to_xml())


# --- Signatures ------------------------------------------------------------------------------


class Signatures:
    """Telnyx webhook signatures (``phones.network.Signatures``): Ed25519 over ``"{telnyx-timestamp}|{raw
    body}"`` with the account's public key, the timestamp at most ``TIMESTAMP_TOLERANCE_S`` from now.
    Telnyx does not sign the media websocket: the stream token of the webhook's answer vouches for it.

    Args:
        public_key: ``TELNYX_PUBLIC_KEY`` (base64, 32 bytes), or None: off (unchecked).
        now: the wall clock, seconds (tests pass their own).
    """

    def __init__(self, public_key: str | None, now: Callable[[], float] = time.time) -> None:
        self._key = VerifyKey(base64.b64decode(public_key)) if public_key else None
        self._now = now

    @property
    def enabled(self) -> bool:
        """True when ``TELNYX_PUBLIC_KEY`` is set."""
        return self._key is not None

    def webhook(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes = b"") -> bool:
        """True when the Ed25519 signature matches the timestamp and the raw body, and the timestamp is fresh
        (always, when off)."""
        if self._key is None:
            return True
        signature, timestamp = headers.get(SIGNATURE_HEADER, ""), headers.get(TIMESTAMP_HEADER, "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return False
        if abs(self._now() - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
            return False
        try:
            self._key.verify(timestamp.encode() + b"|" + body, base64.b64decode(signature, validate=True))
        except (BadSignatureError, binascii.Error, ValueError):
            return False
        return True

    def handshake(self, https_url: str, wss_url: str, headers: Mapping[str, str]) -> bool:
        """Telnyx signs no media-websocket handshake: True (the stream token is checked at the start)."""
        return True


# --- The dialect and the network ---------------------------------------------------------------

DIALECT = Dialect("telnyx", parse_message, media_message, mark_message, clear_message, MAX_MESSAGE_BYTES,
                  reorders=True)
"""Telnyx media streaming, for ``phones.websocket.WebSocketLeg``."""

NETWORK = Network(
    name="telnyx",
    answer_path="/telnyx/answer",
    stream_path="/telnyx/media-stream",
    dialect=DIALECT,
    stream_answer=stream_texml,
    hang_up_answer=hang_up_texml,
    content_type="text/xml",
    call_id_param="CallSid",
    caller_number=lambda raw: raw,
    signatures=lambda config: Signatures(config.telnyx_public_key),
    carries_call_id=True,
)
"""Telnyx (TeXML application): ``/telnyx/answer`` answers TeXML, ``/telnyx/media-stream`` carries the call;
both 404 until ``TELNYX_PUBLIC_KEY`` is set (or ``ALLOW_UNSIGNED_WEBHOOKS``)."""

"""The phone networks as a caller meets them: what Twilio, Plivo and Telnyx send on their media websockets and
webhooks, built from each network's own docs and SDKs, independently of the relay's ``phones`` package."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from nacl.signing import SigningKey
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3
from twilio.request_validator import RequestValidator


class CallFailed(Exception):
    """The simulated call did not go as scripted; the message says why."""


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


class PlivoMessages:
    """What Plivo sends on an Audio Streams websocket, as its docs show them (JSON strings).

    ``sequenceNumber`` and ``chunk`` are numbers, ``timestamp`` a string; there is no ``connected``
    and no documented ``stop`` (the socket closes); ``start`` carries the ``extraHeaders`` of the
    ``<Stream>`` as ``extra_headers``.
    """

    def __init__(self) -> None:
        self.stream_id = str(uuid.uuid4())
        self.call_id = str(uuid.uuid4())
        self.extra_headers = ""
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)

    def _message(self, event: str, **body: Any) -> str:
        return json.dumps({"event": event, "sequenceNumber": next(self._seq), "streamId": self.stream_id, **body})

    def start(self, extra_headers: str) -> str:
        self.extra_headers = extra_headers
        return json.dumps({"event": "start", "sequenceNumber": next(self._seq), "start": {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": "MA" + "0" * 18,
            "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        }, "extra_headers": extra_headers})

    def media(self, ulaw: bytes, timestamp_ms: int = 0) -> str:
        return self._message("media", media={
            "track": "inbound", "timestamp": str(timestamp_ms), "chunk": next(self._chunk),
            "payload": base64.b64encode(ulaw).decode(),
        }, extra_headers=self.extra_headers)

    def played_stream(self, name: str) -> str:
        """The answer to a checkpoint whose audio has played."""
        return self._message("playedStream", name=name)

    def cleared_audio(self) -> str:
        return json.dumps({"sequenceNumber": 0, "event": "clearedAudio", "streamId": self.stream_id})

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", dtmf={"track": "inbound", "digit": digit, "timestamp": str(int(time.time()))})


def plivo_signature_headers(auth_token: str, method: str, url: str, params: dict[str, str]) -> dict[str, str]:
    """``X-Plivo-Signature-V3`` and its nonce for a request, signed with the plivo SDK's own code."""
    nonce = secrets.token_hex(12)
    base = construct_post_url(url, dict(params)) if method == "POST" else construct_get_url(url, dict(params))
    signature = get_signature_v3(auth_token.encode(), base.decode(), nonce.encode()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


@dataclass(slots=True)
class Answer:
    """What the webhook answer told the phone network to do."""

    says: list[str]
    stream_url: str
    stream_params: Any
    """Twilio: the ``<Parameter>``s as a dict; Plivo: the ``extraHeaders`` string."""


class _EchoesMarks:
    """What Twilio and Telnyx do alike (TeXML mirrors TwiML): the answer is ``<Say>`` then ``<Connect><Stream>``
    with ``<Parameter>``s, the stream opens with ``connected`` and ``start``, the relay sends ``media``, ``mark``
    and ``clear``, a played mark is sent back as ``mark`` (a ``clear`` sends back every queued one, so nothing
    answers the clear itself), key presses are ``dtmf``, the end is ``stop``."""

    messages: TwilioMessages | TelnyxMessages
    document = "TwiML"
    stream_attributes: tuple[tuple[str, str], ...] = ()
    """Attributes the answer's ``<Stream>`` must have, as ``(name, value)``."""

    def _stream_id(self) -> str | None:
        """The id every relay message must carry at the top level (None: they carry none)."""
        return None

    def read_answer(self, body: str) -> Answer:
        root = ET.fromstring(body)
        stream = root.find("./Connect/Stream")
        if stream is None:
            raise CallFailed(f"{self.document} has no <Connect><Stream>: " + body[:200])
        for attribute, wanted in self.stream_attributes:
            if stream.get(attribute) != wanted:
                raise CallFailed(f"<Stream {attribute}> is {stream.get(attribute)!r}, not {wanted!r}")
        params = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        return Answer([el.text or "" for el in root.iter("Say")], stream.get("url", ""), params)

    def handshake_url(self, stream_url: str) -> str:
        return stream_url  # Twilio signs the wss:// URL itself; Telnyx signs none

    def opening(self, answer: Answer) -> list[str]:
        return [self.messages.connected(), self.messages.start(answer.stream_params)]

    def read(self, event: dict[str, Any]) -> tuple[str, str]:
        """A relay message as ``("media", payload)``, ``("mark", name)`` or ``("clear", "")``."""
        kind = event.get("event")
        stream_id = self._stream_id()
        if stream_id is not None and event.get("streamSid") != stream_id:
            raise CallFailed(f"relay sent {kind} with streamSid {event.get('streamSid')!r}")
        if kind == "media":
            return "media", event["media"]["payload"]
        if kind == "mark":
            return "mark", event["mark"]["name"]
        if kind == "clear":
            return "clear", ""
        raise CallFailed(f"relay sent an unknown event {kind!r}")

    def played(self, name: str) -> str:
        return self.messages.mark(name)

    def cleared(self) -> str | None:
        return None

    def dtmf(self, digit: str) -> str:
        return self.messages.dtmf(digit)

    def goodbye(self) -> str | None:
        return self.messages.stop()


class Twilio(_EchoesMarks):
    """Twilio's side of a call: voice webhook, TwiML, Media Streams, ``mark`` echoes (cleared ones too)."""

    name = "twilio"
    answer_path = "/incoming-call"
    echoes_cleared_marks = True
    """Twilio docs: ``clear`` sends back every pending mark."""

    def __init__(self) -> None:
        self.messages = TwilioMessages()

    def webhook(self, number: str) -> dict[str, str]:
        return {"CallSid": self.messages.call_sid, "AccountSid": self.messages.account_sid, "From": number,
                "To": "+14155550199", "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}

    def sign(self, token: str, method: str, url: str, params: dict[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": twilio_signature(token, url, params)}

    def _stream_id(self) -> str | None:
        return self.messages.stream_sid

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        return self.messages.media(ulaw, timestamp_ms)


class Plivo:
    """Plivo's side of a call: answer URL, Plivo XML, Audio Streams, ``playedStream`` for checkpoints
    whose audio played; ``clearAudio`` drops the queue, answers ``clearedAudio`` and answers no
    pending checkpoint."""

    name = "plivo"
    answer_path = "/plivo/answer"
    echoes_cleared_marks = False

    def __init__(self) -> None:
        self.messages = PlivoMessages()

    def webhook(self, number: str) -> dict[str, str]:
        return {"CallUUID": self.messages.call_id, "From": number.lstrip("+"), "To": "14155550199",
                "CallStatus": "ringing", "Direction": "inbound", "Event": "StartApp"}

    def sign(self, token: str, method: str, url: str, params: dict[str, str]) -> dict[str, str]:
        return plivo_signature_headers(token, method, url, params)

    def read_answer(self, body: str) -> Answer:
        root = ET.fromstring(body)
        stream = root.find("./Stream")
        if stream is None:
            raise CallFailed("Plivo XML has no <Stream>: " + body[:200])
        for attribute, wanted in (("bidirectional", "true"), ("keepCallAlive", "true"),
                                  ("contentType", "audio/x-mulaw;rate=8000")):
            if stream.get(attribute) != wanted:
                raise CallFailed(f"<Stream {attribute}> is {stream.get(attribute)!r}, not {wanted!r}")
        return Answer([el.text or "" for el in root.iter("Speak")], (stream.text or "").strip(),
                      stream.get("extraHeaders", ""))

    def handshake_url(self, stream_url: str) -> str:
        return "http" + stream_url.removeprefix("ws")  # the https:// form, as Plivo's stream SDK checks it

    def opening(self, answer: Answer) -> list[str]:
        return [self.messages.start(answer.stream_params)]

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        return self.messages.media(ulaw, timestamp_ms)

    def played(self, name: str) -> str:
        return self.messages.played_stream(name)

    def cleared(self) -> str | None:
        return self.messages.cleared_audio()

    def dtmf(self, digit: str) -> str:
        return self.messages.dtmf(digit)

    def goodbye(self) -> str | None:
        return None  # the socket closes; Plivo documents no stop

    def read(self, event: dict[str, Any]) -> tuple[str, str]:
        kind = event.get("event")
        if event.get("streamId") != self.messages.stream_id:
            raise CallFailed(f"relay sent {kind} with streamId {event.get('streamId')!r}")
        if kind == "playAudio":
            media = event["media"]
            if (media.get("contentType"), media.get("sampleRate")) != ("audio/x-mulaw", 8000):
                raise CallFailed(f"playAudio of {media.get('contentType')} at {media.get('sampleRate')}")
            return "media", media["payload"]
        if kind == "checkpoint":
            return "mark", event["name"]
        if kind == "clearAudio":
            return "clear", ""
        raise CallFailed(f"relay sent an unknown event {kind!r}")




def telnyx_signing_key(seed: str) -> SigningKey:
    """The stand-in Telnyx account's Ed25519 key, made from ``seed`` (the simulator's token): the relay is given
    its public half (``telnyx_public_key``) as ``TELNYX_PUBLIC_KEY``."""
    return SigningKey(hashlib.sha256(b"telnyx stand-in key\0" + seed.encode()).digest())


def telnyx_public_key(seed: str) -> str:
    """The base64 public key for ``TELNYX_PUBLIC_KEY`` that verifies what ``seed``'s key signs."""
    return base64.b64encode(bytes(telnyx_signing_key(seed).verify_key)).decode()


def telnyx_signature_headers(seed: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """``telnyx-signature-ed25519`` and ``telnyx-timestamp`` for a webhook body, as Telnyx signs them
    (Ed25519 over ``"{timestamp}|{raw body}"``)."""
    timestamp = str(int(time.time() if now is None else now))
    signed = telnyx_signing_key(seed).sign(timestamp.encode() + b"|" + body)
    return {"telnyx-signature-ed25519": base64.b64encode(signed.signature).decode(), "telnyx-timestamp": timestamp}


class TelnyxMessages:
    """What Telnyx sends on a media-streaming websocket, as its docs show them (JSON strings).

    ``sequence_number``, ``chunk`` and ``timestamp`` are strings; ``stream_id`` is top-level, ``call_control_id``
    inside ``start``.
    """

    def __init__(self) -> None:
        self.stream_id = str(uuid.uuid4())
        self.call_control_id = "v3:" + secrets.token_urlsafe(24)
        self.call_sid = "v3:" + secrets.token_urlsafe(24)
        """The TeXML webhook's ``CallSid``."""
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)

    def _message(self, event: str, **body: Any) -> str:
        return json.dumps({"event": event, "sequence_number": str(next(self._seq)), **body,
                           "stream_id": self.stream_id})

    def connected(self) -> str:
        return json.dumps({"event": "connected", "version": "1.0.0"})

    def start(self, custom_parameters: dict[str, str]) -> str:
        return self._message("start", start={
            "user_id": str(uuid.uuid4()), "call_control_id": self.call_control_id,
            "call_session_id": str(uuid.uuid4()), "from": "+14155550100", "to": "+14155550199",
            "custom_parameters": custom_parameters,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        })

    def media(self, ulaw: bytes, timestamp_ms: int = 0) -> str:
        return self._message("media", media={"track": "inbound", "chunk": str(next(self._chunk)),
                                             "timestamp": str(timestamp_ms),
                                             "payload": base64.b64encode(ulaw).decode()})

    def mark(self, name: str) -> str:
        return self._message("mark", mark={"name": name})

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", occurred_at="2026-12-06T08:00:00.000000Z", dtmf={"digit": digit})

    def stop(self) -> str:
        return self._message("stop", stop={"user_id": str(uuid.uuid4()), "call_control_id": self.call_control_id})


class Telnyx(_EchoesMarks):
    """Telnyx's side of a call: TeXML webhook (signed with Ed25519), media streaming in RTP mode, ``mark``
    echoes (cleared ones too, as a ``clear`` returns every queued mark), and now and then two media frames
    that arrive swapped, as Telnyx warns frames may."""

    name = "telnyx"
    answer_path = "/telnyx/answer"
    echoes_cleared_marks = True
    document = "TeXML"
    stream_attributes = (("bidirectionalMode", "rtp"), ("bidirectionalCodec", "PCMU"),
                         ("bidirectionalSamplingRate", "8000"))
    SWAP_EVERY = 25
    """Every this many media frames, the frame is held and sent after the next one (out of order)."""

    def __init__(self) -> None:
        self.messages = TelnyxMessages()
        self._held: str | None = None
        self._frames = 0
        self.swapped = 0
        """Pairs of frames sent out of order."""

    def webhook(self, number: str) -> dict[str, str]:
        return {"CallSid": self.messages.call_sid, "AccountSid": str(uuid.uuid4()), "From": number,
                "To": "+14155550199", "CallStatus": "ringing", "Direction": "inbound"}

    def sign(self, token: str, method: str, url: str, params: dict[str, str]) -> dict[str, str]:
        if method == "GET":  # Telnyx signs no media-websocket handshake
            return {}
        return telnyx_signature_headers(token, urlencode(params).encode())

    def media(self, ulaw: bytes, timestamp_ms: int) -> list[str]:
        """This frame's message, or none now and two next time (the held frame after its successor)."""
        message = self.messages.media(ulaw, timestamp_ms)
        self._frames += 1
        if self._held is not None:
            held, self._held = self._held, None
            self.swapped += 1
            return [message, held]
        if self._frames % self.SWAP_EVERY == 0:
            self._held = message
            return []
        return [message]


PhoneNetwork = Twilio | Plivo | Telnyx
NETWORKS: dict[str, type[Twilio] | type[Plivo] | type[Telnyx]] = {"twilio": Twilio, "plivo": Plivo, "telnyx": Telnyx}

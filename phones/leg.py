"""The phone leg: the typed phone events every network's dialect yields, and the interface the call sends through.

Nothing here touches a socket. Each network's wire names are in its own module (``phones.twilio``,
``phones.plivo``); ``phones.websocket.WebSocketLeg`` carries any of them over an aiohttp websocket.

Sources: Twilio Media Streams and Plivo Audio Streams docs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

# --- Phone leg events (what every telephony dialect yields) ---------------------------------


@dataclass(frozen=True, slots=True)
class PhoneStart:
    """The phone stream has started (Twilio ``start``; Plivo ``start``)."""

    stream_sid: str
    """The stream's id (Twilio ``streamSid``, Plivo ``streamId``)."""
    call_sid: str
    """The call's id (Twilio ``callSid``, Plivo ``callId``); "" when the network sent none."""
    custom_parameters: dict[str, str]
    """What the webhook answer attached to the stream (TwiML ``<Parameter>``s)."""


@dataclass(slots=True)  # not frozen: built per frame, and frozen construction costs 0.55 µs against 0.2 µs
class PhoneAudio:
    """One frame of caller audio: base64 µ-law 8 kHz, usually 20 ms (160 bytes, 216 characters)."""

    payload: str


@dataclass(slots=True)
class SequencedAudio(PhoneAudio):
    """A frame of caller audio with its network's sequence number, for a network whose frames may arrive
    out of order (Telnyx): the leg puts them back in order and hands the call plain ``PhoneAudio``."""

    sequence: int


@dataclass(slots=True)  # not frozen: built per frame, and frozen construction costs 0.55 µs against 0.2 µs
class PhoneMarkPlayed:
    """The phone reached a mark the relay sent after some audio (Twilio ``mark`` echo, Plivo
    ``playedStream``). Twilio also echoes marks discarded by a ``clear``; ``Playback`` tells them
    apart by generation."""

    name: str


@dataclass(frozen=True, slots=True)
class PhoneDtmf:
    """The caller pressed a key (``0``-``9``, ``*``, ``#``, ``A``-``D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class PhoneStop:
    """The phone network ended the stream (Twilio ``stop``): the caller hung up."""


PhoneEvent = PhoneStart | PhoneAudio | PhoneMarkPlayed | PhoneDtmf | PhoneStop


def decode_json_object(raw: str | bytes) -> dict[str, Any]:
    """One peer frame that must hold a JSON object (phone or Realtime), parsed by ``orjson``
    (UTF-8 bytes as they came off the socket, or a str).

    Raises:
        ValueError: ``non-JSON frame`` (invalid UTF-8 and nesting over 1024 deep included) or
            ``non-object frame``.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("non-JSON frame") from None
    if type(value) is not dict:
        raise ValueError("non-object frame")
    return value


_PEER_ID = re.compile(r"[!-~]{1,64}")


def peer_id(value: Any) -> str | None:
    """An identifier a peer sent (``streamSid``, ``callId``...) when it is 1-64 printable ASCII
    characters, else None: a newline in it would forge log lines, and a 30 KB one would be logged
    and echoed in every message."""
    return value if type(value) is str and _PEER_ID.fullmatch(value) else None


def inner_text(event: dict[str, Any], outer: str, inner: str) -> str | None:
    """``event[outer][inner]`` when it is a string, else None (``media.payload``, ``dtmf.digit``)."""
    body = event.get(outer)
    value = body.get(inner) if type(body) is dict else None
    return value if type(value) is str else None


class MalformedFrame(ValueError):
    """A phone frame a dialect cannot use. ``kind`` groups it for one warning per kind and call;
    ``message`` says what was dropped."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# --- The phone leg (what every dialect offers the bridge) ----------------------------------


class PhoneLeg(Protocol):
    """One phone call's media websocket, in the call's terms (``phones.websocket.WebSocketLeg``).

    Modelled on livekit's transport-neutral ``AudioOutput`` and pipecat's one serializer per
    dialect: the leg parses and builds its network's messages; the bridge never sees them.
    """

    network: str
    """The phone network's name for logs and reasons (``twilio``)."""

    def __aiter__(self) -> AsyncIterator[PhoneEvent]:
        """Phone events in arrival order until the socket closes; unusable frames are dropped by
        the leg with one warning per kind."""
        ...

    async def send_audio(self, payload: str) -> None:
        """Queue base64 µ-law 8 kHz audio (any length) for playback in the order sent."""
        ...

    async def send_mark(self, name: str) -> None:
        """Send a mark the phone reports back (``PhoneMarkPlayed``) when the audio before it has played."""
        ...

    async def clear(self) -> None:
        """Drop every byte of audio queued at the phone."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close the media socket with a websocket close ``code``; this hangs up the call."""
        ...

    @property
    def closed(self) -> bool:
        """True once the socket is closed by either side."""
        ...

    @property
    def write_stalled(self) -> bool:
        """True while sends are waiting for the phone to take what was sent before (it is not
        reading); checked once a second, never per frame."""
        ...

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued for the phone and not yet taken, for the log."""
        ...

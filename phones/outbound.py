"""Placing calls and putting callers through, over the networks' REST APIs with their own SDKs.

``CallPlacer`` is the seam: ``TwilioCalls`` (the ``twilio`` package's async client: ``calls.create`` with
asynchronous answering machine detection, ``calls(sid).update`` with a ``<Dial>``) and ``PlivoCalls`` (the
``plivo`` SDK, which is synchronous: each request runs in a worker thread, under its own timeout;
``calls.create`` with machine detection, ``calls.update`` of the A leg to a transfer URL on this relay). The
documents the networks fetch back (``<Dial>`` with a whisper, the whisper itself) are built here too.

Sources: Twilio "Make outbound phone calls", "Answering Machine Detection" and "Modifying live calls" docs, TwiML
``<Dial>`` / ``<Number url>`` (whisper); Plivo "Make a call", "Transfer a call", ``<Dial confirmSound>``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import plivo
from plivo import exceptions as plivo_errors
from plivo import plivoxml
from twilio.base.exceptions import TwilioException
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

from phones import twilio

logger = logging.getLogger(__name__)

RING_TIMEOUT_S = 45
"""How long a placed call rings before the network gives up (``no-answer``)."""
DETECTION_TIMEOUT_S = 30
"""Twilio's answering machine detection gives its verdict within this (its ``MachineDetectionTimeout``)."""
REST_TIMEOUT_S = 10.0
"""Each request to a network's REST API."""


class PlaceRefused(Exception):
    """The network's REST API refused the request, failed or did not answer in time; the message says why
    (the network's own words when it gave some)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """One call to place: who, from which number, and where the network reports back."""

    to: str
    """E.164."""
    from_: str
    """E.164: the number the call comes from (``TWILIO_PHONE_NUMBER``, ``PLIVO_PHONE_NUMBER``)."""
    stream_url: str
    """The media websocket (Twilio connects it from the TwiML sent with the call)."""
    parameters: Mapping[str, str]
    """The stream's parameters (the single-use stream token)."""
    answer_url: str
    """This relay's outbound answer (Plivo fetches the ``<Stream>`` from it once the callee picks up)."""
    status_url: str
    """The call's progress and end (Twilio ``StatusCallback``, Plivo ``hangup_url``)."""
    detection_url: str
    """The answering machine detection result (Twilio ``AsyncAmdStatusCallback``, Plivo
    ``machine_detection_url``)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """Where a live call is put through, and how."""

    destination: str
    """E.164 or a ``sip:`` URI (the operator's ``TRANSFER_TO``, never the model's)."""
    caller_id: str
    """The number the person who answers sees (E.164; "" for the network's default)."""
    whisper_url: str | None
    """What the person who answers hears first (a warm transfer); None: connected at once."""
    dial_url: str
    """This relay's URL answering the ``<Dial>`` (Plivo fetches it for the A leg)."""


class CallPlacer(Protocol):
    """A network's REST calls for outbound calls and transfers."""

    network: str

    async def place(self, placement: Placement) -> str:
        """Place the call; returns the network's id for it (Twilio ``CallSid``, Plivo ``request_uuid``).
        Raises PlaceRefused."""
        ...

    async def transfer(self, call_id: str, transfer: Transfer) -> None:
        """Redirect the live call ``call_id`` to ``transfer.destination``; its media stream ends. Raises
        PlaceRefused."""
        ...


# --- Twilio -------------------------------------------------------------------------------------


def dial_twiml(destination: str, caller_id: str, whisper_url: str | None) -> str:
    """``<Dial callerId>`` with one ``<Number>`` (or ``<Sip>`` for a ``sip:`` URI) whose ``url``, when given,
    is the whisper Twilio plays to the person who answers before connecting them (TwiML ``<Number url>``)."""
    response = VoiceResponse()
    dial = Dial(caller_id=caller_id or None)
    extra: dict[str, Any] = {"url": whisper_url, "method": "POST"} if whisper_url else {}
    if destination.lower().startswith(("sip:", "sips:")):
        dial.sip(destination, **extra)
    else:
        dial.number(destination, **extra)
    response.append(dial)
    return str(response.to_xml())


def say_twiml(text: str) -> str:
    """``<Say>`` alone: a whisper (the call is connected once it has played)."""
    response = VoiceResponse()
    response.say(text)
    return str(response.to_xml())


class TwilioCalls:
    """Twilio's Calls resource through the ``twilio`` package's async client (``CallPlacer``).

    Args:
        client: the REST client (``phones.sms.twilio_client``: base URL ``TWILIO_API_BASE_URL``).
    """

    network = "twilio"

    def __init__(self, client: Client) -> None:
        self._client = client

    async def place(self, placement: Placement) -> str:
        """``calls.create`` with the TwiML that connects the stream (no ``<Say>``: the callee speaks first),
        ``MachineDetection=DetectMessageEnd`` with ``AsyncAmd`` (the stream connects at once, the verdict comes
        to ``detection_url`` once a greeting has ended) and every progress event to ``status_url``."""
        twiml = twilio.stream_twiml("", placement.stream_url, placement.parameters)
        try:
            call = await self._client.calls.create_async(
                to=placement.to, from_=placement.from_, twiml=twiml, timeout=RING_TIMEOUT_S,
                status_callback=placement.status_url, status_callback_method="POST",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
                machine_detection="DetectMessageEnd", machine_detection_timeout=DETECTION_TIMEOUT_S,
                async_amd="true", async_amd_status_callback=placement.detection_url,
                async_amd_status_callback_method="POST",
            )
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise PlaceRefused(_twilio_reason(exc)) from None
        return str(call.sid)

    async def transfer(self, call_id: str, transfer: Transfer) -> None:
        """``calls(sid).update(twiml=<Dial>)``: Twilio replaces the call's TwiML at once, which ends its stream."""
        twiml = dial_twiml(transfer.destination, transfer.caller_id, transfer.whisper_url)
        try:
            await self._client.calls(call_id).update_async(twiml=twiml)
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise PlaceRefused(_twilio_reason(exc)) from None


def _twilio_reason(exc: BaseException) -> str:
    message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    status = getattr(exc, "status", None)
    return f"twilio: {message}" + (f" (HTTP {status})" if status else "")


# --- Plivo --------------------------------------------------------------------------------------


def dial_xml(destination: str, caller_id: str, whisper_url: str | None) -> str:
    """Plivo ``<Dial>`` with one ``<Number>`` (digits, no ``+``) or ``<User>`` (a ``sip:`` URI); with
    ``whisper_url`` as ``confirmSound``, fetched when the person answers and played to them alone."""
    response = plivoxml.ResponseElement()
    dial = plivoxml.DialElement(caller_id=caller_id.lstrip("+") or None, confirm_sound=whisper_url)
    if destination.lower().startswith(("sip:", "sips:")):
        dial.add(plivoxml.UserElement(destination))
    else:
        dial.add(plivoxml.NumberElement(destination.lstrip("+")))
    response.add(dial)
    return str(response.to_string(pretty=False))


def speak_xml(text: str) -> str:
    """``<Speak>`` alone: a whisper (Plivo's ``confirmSound`` answer)."""
    response = plivoxml.ResponseElement()
    response.add(plivoxml.SpeakElement(text))
    return str(response.to_string(pretty=False))


class _PlivoClient(plivo.RestClient):  # type: ignore[misc]
    """The SDK's client with its API origin set (``PLIVO_API_BASE_URL``): it has no setting for it, and
    resets ``base_uri`` before each voice request, so the origin is set where each request is built."""

    def __init__(self, auth_id: str, auth_token: str, origin: str) -> None:
        super().__init__(auth_id, auth_token, timeout=REST_TIMEOUT_S)
        self._account_uri = origin.rstrip("/") + "/v1/Account"
        self.voice_retry_count = 3  # no retries on the SDK's fallback hosts (they are the same origin)

    def create_request(self, method: str, path: Any = None, data: Any = None, **kwargs: Any) -> Any:
        self.base_uri = self._account_uri
        return super().create_request(method, path, data, **kwargs)


class PlivoCalls:
    """Plivo's Call resource through the ``plivo`` SDK (``CallPlacer``); each request in a worker thread.

    Args:
        auth_id, auth_token: ``PLIVO_AUTH_ID`` and ``PLIVO_AUTH_TOKEN``.
        origin: ``PLIVO_API_BASE_URL``.
    """

    network = "plivo"

    def __init__(self, auth_id: str, auth_token: str, origin: str) -> None:
        self._client = _PlivoClient(auth_id, auth_token, origin)

    async def place(self, placement: Placement) -> str:
        """``calls.create`` with ``answer_url`` (the ``<Stream>``, no ``<Speak>``), ``hangup_url`` and
        ``machine_detection=true`` with its ``machine_detection_url``; returns the ``request_uuid``."""
        response = await self._request(
            self._client.calls.create, from_=placement.from_.lstrip("+"), to_=placement.to.lstrip("+"),
            answer_url=placement.answer_url, answer_method="POST", hangup_url=placement.status_url,
            hangup_method="POST", ring_timeout=RING_TIMEOUT_S, machine_detection="true",
            machine_detection_url=placement.detection_url, machine_detection_method="POST",
        )
        request_uuid = getattr(response, "request_uuid", None)
        if not isinstance(request_uuid, str) or not request_uuid:
            raise PlaceRefused("plivo: the answer named no request_uuid")
        return request_uuid

    async def transfer(self, call_id: str, transfer: Transfer) -> None:
        """``calls.update(legs=aleg, aleg_url=dial_url)``: Plivo fetches the ``<Dial>`` from this relay."""
        await self._request(self._client.calls.update, call_id, legs="aleg", aleg_url=transfer.dial_url,
                            aleg_method="POST")

    @staticmethod
    async def _request(method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(REST_TIMEOUT_S + 1.0):
                return await asyncio.to_thread(method, *args, **kwargs)
        except TimeoutError:
            raise PlaceRefused("plivo: no answer in time") from None
        except (plivo_errors.PlivoRestError, OSError, ValueError) as exc:
            raise PlaceRefused(f"plivo: {exc}") from None

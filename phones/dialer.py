"""Outbound calls and transfers: who may be called, how often, and what the networks report back.

``Dialer.place`` checks an order (``POST /calls``) against the allowlists, ``OUTBOUND_ALLOWED_NUMBERS``, the
hourly cap and ``MAX_CALLS``, issues the call's single-use stream token and places it through the network's
``phones.outbound.CallPlacer``. The networks' callbacks (progress, answering machine detection) name the order
in their URL; the call that took the order's stream over hears the detection through the listener it attached
(``attach``). ``transfer`` puts a live call through to the operator's destination.

Orders live in this process: with ``WORKERS`` > 1 a placed call's stream and callbacks may reach another worker,
which does not know the order (the README says so).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from plivo import exceptions as plivo_errors
from twilio.rest import Client

from callers import AllowedCaller, find_callee, mask_number
from config import Config
from envreader import to_e164
from phones.outbound import CallPlacer, Placement, PlaceRefused, PlivoCalls, Transfer, TwilioCalls

logger = logging.getLogger("relay")

MAX_PURPOSE_CHARS = 1000
HOUR_S = 3600.0
TOKEN_TTL_S = 120.0
"""An outbound stream token's life: the call rings (``RING_TIMEOUT_S``) and is screened before its stream starts."""
MAX_ORDERS = 1000
"""Orders remembered (the oldest are forgotten first); each for ``ORDER_TTL_S`` at most."""
ORDER_TTL_S = 4 * 3600.0
MAX_SUMMARY_CHARS = 300
"""The whisper's length at most (a sentence)."""

MACHINE = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "machine"})
GREETING_ENDED = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other", "machine"})
"""Verdicts given once a machine's greeting has ended (Twilio ``DetectMessageEnd``; Plivo's ``Machine=true``)."""
FAX = "fax"
ENDED = {"completed": "answered", "busy": "busy", "no-answer": "no answer", "timeout": "no answer",
         "failed": "failed", "canceled": "failed", "cancel": "failed"}
"""A final call status and the outcome it means for a call never answered (Twilio and Plivo words)."""
OUTCOMES = ("answered", "machine", "no answer", "busy", "failed")


class DialRefused(Exception):
    """``POST /calls`` refused: ``status`` is the HTTP answer (400, 403, 429, 502, 503), the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class OutboundOrder:
    """One call placed by this relay, from its order to its outcome."""

    id: str
    """Hex: in the stream token and the callbacks' URLs."""
    network: str
    to: str
    """E.164."""
    purpose: str
    callee: AllowedCaller
    """The person called: first name when the number is on an allowlist, else ""."""
    placed_at: float = field(default_factory=time.time)
    call_sid: str = ""
    """The network's call id: Twilio's ``CallSid`` from the start, Plivo's ``CallUUID`` once answered."""
    request_id: str = ""
    """What placing the call answered: Twilio's ``CallSid``, Plivo's ``request_uuid``."""
    status: str = "queued"
    answered_by: str = ""
    outcome: str = ""
    """One of ``OUTCOMES`` once the call has ended."""
    listener: Callable[[str], None] | None = None
    """The call holding the stream: told the detection verdict."""


class Dialer:
    """Places calls and redirects live ones; keeps each order until its outcome.

    Args:
        placers: the networks that can place calls, by name.
        issue_token: ``(callee, order id, ttl_s)`` to the stream's parameters (``ops.tokens.StreamTokens``).
        reserve: takes a place in ``MAX_CALLS`` for ``ttl_s`` seconds; False when full.
        on_outcome: told each ended call's outcome (``OUTCOMES``), for the metrics.
    """

    def __init__(self, config: Config, placers: Mapping[str, CallPlacer],
                 issue_token: Callable[[str, str, float], dict[str, str]], reserve: Callable[[float], bool],
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.placers = dict(placers)
        """The networks that can redirect calls (transfers), by name."""
        self.dialing = sorted(name for name in placers if self.caller_id(name))
        """The networks that can place calls: those with a number to call from."""
        self._issue_token = issue_token
        self._reserve = reserve
        self._on_outcome = on_outcome
        self._placed: deque[float] = deque()
        self.origin = config.public_url or ""
        """This relay's public https origin, for the URLs the networks fetch (``PUBLIC_URL``, else the origin of
        the last signed webhook)."""
        self.orders: OrderedDict[str, OutboundOrder] = OrderedDict()

    @property
    def placed_last_hour(self) -> int:
        cutoff = time.monotonic() - HOUR_S
        while self._placed and self._placed[0] < cutoff:
            self._placed.popleft()
        return len(self._placed)

    def check(self, body: object) -> tuple[str, str, str]:
        """A ``POST /calls`` body as ``(to, purpose, network)``. Raises DialRefused (400) naming what is wrong."""
        if not isinstance(body, dict):
            raise DialRefused(400, "the body must be a JSON object")
        to, purpose, network = body.get("to"), body.get("purpose"), body.get("network")
        if not isinstance(to, str) or not to.startswith("+") or to_e164(to) != to:
            raise DialRefused(400, "'to' must be a phone number in E.164, such as +14155550100")
        if not isinstance(purpose, str) or not purpose.strip():
            raise DialRefused(400, "'purpose' must be a non-empty string")
        if len(purpose) > MAX_PURPOSE_CHARS:
            raise DialRefused(400, f"'purpose' is longer than {MAX_PURPOSE_CHARS} characters")
        if network is None and len(self.dialing) == 1:
            network = self.dialing[0]
        if network is None:
            raise DialRefused(400, f"name the 'network': one of {', '.join(self.dialing) or 'none'}")
        if network not in self.dialing:
            ready = ", ".join(self.dialing) or "none is set up (TWILIO_PHONE_NUMBER, PLIVO_PHONE_NUMBER)"
            raise DialRefused(400, f"'network' must be one that can place calls here: {ready}")
        return to, purpose.strip(), str(network)

    async def place(self, to: str, purpose: str, network: str, stream_url: str) -> OutboundOrder:
        """Place one call that ``check`` let through, its stream to ``stream_url`` (the network's media websocket
        here), its callbacks to ``origin``.

        Raises:
            DialRefused: 403 destination not allowed, 429 over ``OUTBOUND_MAX_PER_HOUR``, 503 at ``MAX_CALLS``,
                502 the network's API refused (with its message).
        """
        origin = self.origin
        callee = find_callee(self.config, to)
        if callee is None:
            logger.warning("outbound call to %s refused: not on the allowlists or OUTBOUND_ALLOWED_NUMBERS",
                           mask_number(to))
            raise DialRefused(403, "that number is not on the allowlists or in OUTBOUND_ALLOWED_NUMBERS")
        if self.placed_last_hour >= self.config.outbound_max_per_hour:
            raise DialRefused(429, f"OUTBOUND_MAX_PER_HOUR={self.config.outbound_max_per_hour} calls placed "
                                   "in the last hour")
        if not self._reserve(TOKEN_TTL_S):
            raise DialRefused(503, f"MAX_CALLS={self.config.max_calls} reached")
        self._placed.append(time.monotonic())
        order = OutboundOrder(secrets.token_hex(8), network, to, purpose, callee)
        query = "?" + urlencode({"order": order.id})
        placement = Placement(
            to=to, from_=self.caller_id(network),
            stream_url=stream_url, parameters=self._issue_token(to, order.id, TOKEN_TTL_S),
            answer_url=f"{origin}/outbound/{network}/answer{query}",
            status_url=f"{origin}/outbound/{network}/status{query}",
            detection_url=f"{origin}/outbound/{network}/detection{query}",
        )
        self._remember(order)  # first: the network may call back (or the stream start) before it answers the request
        try:
            order.request_id = await self.placers[network].place(placement)
        except PlaceRefused as exc:
            logger.warning("outbound call to %s refused by %s: %s", mask_number(to), network, exc)
            self._finish(order, "failed")
            raise DialRefused(502, str(exc)) from None
        if network == "twilio" and not order.call_sid:  # Plivo's create names the request; its call, its answer
            order.call_sid = order.request_id
        logger.info("outbound call %s to %s placed on %s", order.id, mask_number(to), network)
        return order

    def order(self, order_id: str) -> OutboundOrder | None:
        return self.orders.get(order_id) if order_id else None

    def find(self, call_id: str) -> OutboundOrder | None:
        """The order whose network call id (or request id) is ``call_id`` (``GET /calls/<call_sid>``)."""
        return next((order for order in self.orders.values() if call_id in (order.call_sid, order.request_id)),
                    None) if call_id else None

    def attach(self, order_id: str, call_sid: str, listener: Callable[[str], None]) -> OutboundOrder | None:
        """The stream of ``order_id`` started with ``call_sid``: its call is told the detection verdict from now
        on (at once when it came first). None: no such order here, or another call already took it."""
        order = self.order(order_id)
        if order is None or order.listener is not None or (order.call_sid and order.call_sid != call_sid):
            return None
        order.call_sid, order.listener, order.status = call_sid, listener, "in-progress"
        self._tell(order)
        return order

    def on_status(self, order: OutboundOrder, status: str, call_id: str = "") -> None:
        """A progress callback (Twilio ``CallStatus``; Plivo's answer and hangup). A final one settles the
        outcome once."""
        if call_id and not order.call_sid:
            order.call_sid = call_id
        order.status = status
        if status in ENDED and not order.outcome:
            answered = status == "completed"
            machine = order.answered_by in MACHINE or order.answered_by == FAX
            self._finish(order, ("machine" if machine else "answered") if answered else ENDED[status])

    def on_detection(self, order: OutboundOrder, answered_by: str) -> None:
        """Answering machine detection's verdict (Twilio ``AnsweredBy``: ``human``, ``machine_end_beep``, ``fax``,
        ``unknown``...; Plivo ``Machine=true``). The call hears it as ``human``, ``machine`` (once a greeting has
        ended), ``fax`` or ``unknown``; ``machine_start`` (the greeting is still playing) is not passed on."""
        order.answered_by = answered_by
        logger.info("outbound call %s answered by %s", order.id, answered_by)
        self._tell(order)

    def can_transfer(self, network: str) -> bool:
        """Calls on ``network`` can be put through (it has REST credentials here)."""
        return network in self.placers

    async def transfer(self, network: str, call_sid: str, destination: str, summary: str | None) -> str | None:
        """Put the live call through to ``destination``; with ``summary``, the person who answers hears it first.
        Returns None once the network took the redirect, else why not."""
        placer = self.placers.get(network)
        origin = self.origin
        if placer is None:
            return f"{network} cannot transfer calls here"
        whisper = None
        if summary:
            whisper = f"{origin}/outbound/{network}/whisper?" + urlencode({"text": summary[:MAX_SUMMARY_CHARS]})
        dial = f"{origin}/outbound/{network}/transfer?" + urlencode(
            {"to": destination, **({"whisper": whisper} if whisper else {})})
        try:
            await placer.transfer(call_sid, Transfer(destination, self.caller_id(network), whisper, dial))
        except PlaceRefused as exc:
            logger.warning("transfer of %s refused: %s", call_sid, exc)
            return str(exc)
        return None

    def caller_id(self, network: str) -> str:
        """The number calls on ``network`` come from and transfers show (E.164; "" when none is set)."""
        return (self.config.twilio_phone_number if network == "twilio" else self.config.plivo_phone_number) or ""

    @staticmethod
    def _tell(order: OutboundOrder) -> None:
        """Pass the order's detection verdict to the call holding its stream, once both are there (``verdict``);
        ``machine_start`` (the greeting still playing) is not passed on."""
        if order.listener is not None and order.answered_by and order.answered_by != "machine_start":
            order.listener(verdict(order.answered_by))

    def _remember(self, order: OutboundOrder) -> None:
        self.orders[order.id] = order
        cutoff = time.time() - ORDER_TTL_S
        while self.orders and (len(self.orders) > MAX_ORDERS or next(iter(self.orders.values())).placed_at < cutoff):
            self.orders.popitem(last=False)

    def _finish(self, order: OutboundOrder, outcome: str) -> None:
        order.outcome = outcome
        logger.info("outbound call %s to %s ended: %s", order.id, mask_number(order.to), outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)


def verdict(answered_by: str) -> str:
    """A network's detection result as the call hears it: ``human``, ``machine``, ``fax`` or ``unknown``."""
    if answered_by in GREETING_ENDED:
        return "machine"
    return answered_by if answered_by in ("human", FAX) else "unknown"


def outbound_placers(config: Config, twilio_client: Client | None) -> dict[str, CallPlacer]:
    """The networks whose calls can be placed and transferred with ``config``: Twilio with REST credentials,
    Plivo with ``PLIVO_AUTH_ID`` and ``PLIVO_AUTH_TOKEN`` (placing a call also needs the network's number,
    ``Dialer.dialing``).

    Args:
        twilio_client: the process's ``twilio`` REST client (``phones.sms.twilio_client``), or None.
    """
    placers: dict[str, CallPlacer] = {}
    if twilio_client is not None:
        placers["twilio"] = TwilioCalls(twilio_client)
    if config.plivo_auth_id and config.plivo_auth_token:
        try:
            placers["plivo"] = PlivoCalls(config.plivo_auth_id, config.plivo_auth_token, config.plivo_api_base_url)
        except plivo_errors.AuthenticationError:  # the SDK checks the id's form (MA or SA and 18 more)
            logger.warning("PLIVO_AUTH_ID is not a Plivo auth id: Plivo calls cannot be placed or transferred")
    return placers

"""Single-use stream tokens: the signed webhook vouches for the media stream that follows it.

A phone network signs its media-stream handshake over a fixed URL, so that signature never changes:
whoever saw it once could open streams at will, claiming any allowlisted caller. The voice webhook
(itself signed, and different for every call) therefore issues a token bound to the caller's
number and the call's id, valid for ``TOKEN_TTL_S`` and usable once; the stream's start must carry
it. The caller's number is taken from the token's signed fields, never from a peer's say-so alone.

The token's fields are digits and hex only, because Plivo's ``extraHeaders`` allow nothing else.

One call id is admitted once: the webhook for a call id seen before gets the same token again while it is
unspent (a network that asks twice), and nothing once the call's stream has started or its token expired.
So a captured signed webhook, replayed, opens no second stream and no second model session. Within one
process: ``WORKERS`` processes each remember their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

TOKEN_TTL_S = 30.0
"""How long after the webhook the stream's start may present the token."""
MAX_OUTSTANDING = 100_000
"""Used nonces remembered (each only until its token expires)."""
ADMITTED_TTL_S = 24 * 3600.0
"""How long a call id, once admitted, is remembered: a replay of its signed webhook within this time gets no
second token (Twilio's signature has no timestamp or nonce, so a captured webhook is valid for good)."""
MAX_ADMITTED = 100_000
"""Call ids remembered at most (the oldest are forgotten first)."""

FIELDS = ("caller_number", "stream_expires", "stream_nonce", "stream_token")
"""The custom parameters a stream's start carries (Twilio ``<Parameter>``s; Plivo ``extraHeaders``)."""
ORDER_FIELD = "stream_order"
"""An outbound call's token carries its order's id (hex) and is bound to it instead of the call id: the call id
is not known when the call is placed (``ops.dialer``)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a stream's start proved."""

    caller_number: str | None
    """The caller's number the webhook vouched for (an outbound call's callee); None when the token is refused."""
    reason: str
    """Why it is refused (for the log), or ``ok``."""
    order: str = ""
    """The outbound order the token was issued for ("" for an inbound call)."""


class StreamTokens:
    """Issues and checks single-use stream tokens with an HMAC-SHA256 key.

    Args:
        key: the secret (derive it from one the operator already has: every worker of one
            deployment must share it).
        now: the wall clock, seconds (tests pass their own).
    """

    def __init__(self, key: bytes, now: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"relay stream token v1\0" + key).digest()
        self._now = now
        self._used: OrderedDict[str, float] = OrderedDict()
        self._admitted: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        """Call ids admitted: when they are forgotten, and the parameters issued for them."""
        self.ledger: Callable[[str, float], Awaitable[bool | None]] | None = None
        """Spends a nonce across workers and hosts (the records): ``(nonce, expires)`` → True the first time, False
        when spent before, None when it could not tell. None: this process's memory only."""

    def issue(self, caller_number: str, call_sid: str) -> dict[str, str]:
        """The parameters to attach to the stream for this caller and call (``FIELDS``); the call id is
        admitted from now on (``again``)."""
        now = self._now()
        expires = str(int(now + TOKEN_TTL_S))
        nonce = secrets.token_hex(8)
        params = {"caller_number": caller_number, "stream_expires": expires, "stream_nonce": nonce,
                  "stream_token": self._mac(caller_number, call_sid, expires, nonce)}
        if call_sid:
            self._admitted[call_sid] = (now + ADMITTED_TTL_S, params)
            self._admitted.move_to_end(call_sid)
            while self._admitted and (next(iter(self._admitted.values()))[0] < now
                                      or len(self._admitted) > MAX_ADMITTED):
                self._admitted.popitem(last=False)
        return params

    def issue_outbound(self, callee_number: str, order: str, ttl_s: float) -> dict[str, str]:
        """The parameters for an outbound call's stream (``FIELDS`` and ``ORDER_FIELD``), valid ``ttl_s``
        seconds (the call may ring, then be screened by answering machine detection) and, like any token,
        once. Bound to ``order`` (hex), since the call id is not known yet."""
        expires = str(int(self._now() + ttl_s))
        nonce = secrets.token_hex(8)
        return {"caller_number": callee_number, "stream_expires": expires, "stream_nonce": nonce,
                ORDER_FIELD: order, "stream_token": self._mac(callee_number, _bound_to_order(order), expires, nonce)}

    def again(self, call_sid: str) -> dict[str, str] | bool:
        """A webhook for ``call_sid``: False when the call id was never admitted (issue a token); the
        parameters issued before when that token is still unspent and valid (answer the same again);
        True when the call was admitted and its stream has started or its token expired (refuse)."""
        entry = self._admitted.get(call_sid) if call_sid else None
        if entry is None or entry[0] < self._now():
            return False
        params = entry[1]
        if params["stream_nonce"] in self._used or int(params["stream_expires"]) < self._now():
            return True
        return params

    def check(self, params: Mapping[str, str], call_sid: str) -> Verdict:
        """A stream's start: its custom parameters and the call id the network reported in it.
        A valid token is spent (a second start with it is refused)."""
        caller, expires, nonce, token = (params.get(name, "") for name in FIELDS)
        if not (caller and expires.isdigit() and nonce and token):
            return Verdict(None, "no stream token")
        order = params.get(ORDER_FIELD, "")
        expected = self._mac(caller, _bound_to_order(order) if order else call_sid, expires, nonce)
        if not hmac.compare_digest(expected, token):
            return Verdict(None, "stream token does not match this call")
        now = self._now()
        if int(expires) < now:
            return Verdict(None, "stream token expired")
        if nonce in self._used:
            return Verdict(None, "stream token already used")
        self._used[nonce] = float(expires)
        while self._used and (next(iter(self._used.values())) < now or len(self._used) > MAX_OUTSTANDING):
            self._used.popitem(last=False)
        return Verdict(caller, "ok", order)

    async def spend(self, params: Mapping[str, str], call_sid: str) -> Verdict:
        """``check``, then the nonce spent in the ``ledger``, so the token is single-use across every worker and
        host sharing it. A ledger that cannot tell leaves this process's check standing."""
        verdict = self.check(params, call_sid)
        if verdict.caller_number is None or self.ledger is None:
            return verdict
        if await self.ledger(params["stream_nonce"], float(params["stream_expires"])) is False:
            return Verdict(None, "stream token already used (on another worker)")
        return verdict

    def _mac(self, caller: str, call_sid: str, expires: str, nonce: str) -> str:
        message = "\0".join((caller, call_sid, expires, nonce)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def _bound_to_order(order: str) -> str:
    """What an outbound token is bound to in place of a call id (no call id has this form)."""
    return "\0order:" + order


def operator_allowed(authorization: str | None, token: str | None, bearer: bool = False) -> bool:
    """An operator page's HTTP Basic auth (any user name, ``token`` as the password), or with ``bearer``
    also ``Authorization: Bearer <token>`` (for scripts: ``POST /calls``), compared in constant time. True
    when no token is configured (the page is open).

    Args:
        authorization: the request's ``Authorization`` header (None when absent).
    """
    if token is None:
        return True
    scheme, _, encoded = (authorization or "").partition(" ")
    if bearer and scheme.lower() == "bearer":
        return hmac.compare_digest(encoded.strip().encode(), token.encode())
    if scheme.lower() != "basic":
        return False
    try:  # RFC 7617: base64 of "user-id:password"
        _user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(colon) and hmac.compare_digest(password.encode(), token.encode())


FEED_TICKET_TTL_S = 3600
"""How long the console page's feed ticket opens ``/console/ws`` (the page reloads for a new one)."""


def feed_ticket(token: str, now: float | None = None) -> str:
    """A ticket for the console's websocket, handed out in the page the operator authenticated for:
    browsers do not reliably send Basic auth on a websocket handshake. ``<expiry>.<HMAC-SHA256>``,
    keyed with the console token."""
    expires = int((time.time() if now is None else now) + FEED_TICKET_TTL_S)
    return f"{expires}.{_feed_mac(token, expires)}"


def feed_ticket_valid(token: str, ticket: str, now: float | None = None) -> bool:
    """``ticket`` was made by ``feed_ticket`` with ``token`` and has not expired (constant-time compare)."""
    expires_text, _, mac = ticket.partition(".")
    if not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(mac.encode(), _feed_mac(token, expires).encode())


def _feed_mac(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"console-feed:{expires}".encode(), hashlib.sha256).hexdigest()

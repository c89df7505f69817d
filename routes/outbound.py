"""Outbound calls' routes: ``POST /calls`` places one, ``GET /calls/<call_sid>`` tells how it goes, and the
networks' callbacks for placed calls and transfers.

``POST /calls`` and ``GET /calls/...`` sit behind the console's operator credentials (``CONSOLE_TOKEN`` as the
Basic password or a ``Bearer`` token; 404 while it is unset). Every callback is signed by its network and
checked like the voice webhook (403 otherwise); its URL names the order it is about (``order=``), and an order
this process does not know is answered 200 and ignored.

- ``/outbound/{network}/status``: progress and end (Twilio ``StatusCallback``; Plivo ``hangup_url``).
- ``/outbound/{network}/detection``: answering machine detection (Twilio ``AsyncAmdStatusCallback``; Plivo
  ``machine_detection_url``).
- ``/outbound/plivo/answer``: Plivo's answer URL: the ``<Stream>`` with the call's single-use stream token.
- ``/outbound/{network}/transfer``: the ``<Dial>`` a transferred Plivo call fetches.
- ``/outbound/{network}/whisper``: what the person who picks up a warm transfer hears first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from callers import mask_number
from ops.tokens import operator_allowed
from phones import outbound as documents
from phones import plivo, twilio
from phones.dialer import MAX_SUMMARY_CHARS, TOKEN_TTL_S, Dialer, DialRefused, OutboundOrder, outbound_placers
from phones.network import Network
from routes.calls import public_origin, signed_form, stream_origin
from routes.state import BUDGET, CAPACITY, CONFIG, DIALER, DRAINING, METRICS, SMS, STREAM_TOKENS

logger = logging.getLogger("relay")

NETWORKS: dict[str, Network] = {"twilio": twilio.NETWORK, "plivo": plivo.NETWORK}
"""The networks that place calls and transfer them."""
MAX_BODY_BYTES = 8 * 1024


def add_outbound_routes(app: web.Application) -> None:
    """The routes above, and the ``Dialer`` (built with the app's REST clients, closed with it)."""
    app.cleanup_ctx.append(_dialer)
    app.router.add_post("/calls", place_call)
    app.router.add_get("/calls/{call_sid}", call_status)
    app.router.add_post("/outbound/{network}/status", status_callback)
    app.router.add_post("/outbound/{network}/detection", detection_callback)
    app.router.add_post("/outbound/plivo/answer", plivo_answer)
    app.router.add_post("/outbound/{network}/transfer", transfer_answer)
    app.router.add_post("/outbound/{network}/whisper", whisper_answer)


async def _dialer(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the dialer, over the process's one Twilio REST client (the SMS replies', which ``relay``'s
    earlier context opens and closes)."""
    config = app[CONFIG]
    metrics = app[METRICS]
    tokens, capacity = app[STREAM_TOKENS], app[CAPACITY]

    def outcome(name: str) -> None:
        if metrics is not None:
            metrics.call_outcomes.labels("outbound", name).inc()

    app[DIALER] = Dialer(config, outbound_placers(config, app[SMS].twilio), tokens.issue_outbound,
                         lambda ttl_s: capacity.answer(ttl_s), outcome)
    yield


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.json_response(body, status=status)


def _refused(request: web.Request) -> web.Response | None:
    """The operator gate of ``/calls``: 404 without ``CONSOLE_TOKEN``, 401 without it as the Basic password or
    ``Authorization: Bearer`` (for scripts; compared in constant time)."""
    token = request.app[CONFIG].console_token
    if token is None:
        raise web.HTTPNotFound()
    if operator_allowed(request.headers.get("Authorization"), token, bearer=True):
        return None
    return web.json_response({"error": "unauthorized"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="relay"'})


async def place_call(request: web.Request) -> web.Response:
    """``POST /calls`` ``{"to": E.164, "purpose": "...", "network": "twilio"}`` → 202 ``{"call_sid", "status",
    "order"}`` (Plivo: its ``request_uuid`` as ``call_sid``, the call's own ``CallUUID`` following in
    ``GET /calls/...``); refused with ``{"error": reason}``: 400 bad body, 403 destination not allowed, 429 over
    ``OUTBOUND_MAX_PER_HOUR``, 502 the network's API refused, 503 draining, at ``MAX_CALLS`` or over
    ``DAILY_BUDGET_USD``."""
    refused = _refused(request)
    if refused is not None:
        return refused
    if request.app[DRAINING].is_set():
        return _json(503, {"error": "draining for a restart"})
    budget = request.app[BUDGET]
    if budget is not None and budget.exhausted:
        return _json(503, {"error": "DAILY_BUDGET_USD reached for today (UTC)"})
    raw = bytearray()
    async for chunk in request.content.iter_chunked(4096):  # stops reading past the bound, chunked bodies too
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return _json(400, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"})
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json(400, {"error": "the body is not JSON"})
    dialer = request.app[DIALER]
    config = request.app[CONFIG]
    dialer.origin = public_origin(config, request)
    try:
        to, purpose, network = dialer.check(body)
        order = await dialer.place(to, purpose, network, stream_origin(config, request) + NETWORKS[network].stream_path)
    except DialRefused as exc:
        logger.info("POST /calls refused (%d): %s", exc.status, exc)
        return _json(exc.status, {"error": str(exc)})
    return _json(202, {"call_sid": order.call_sid or order.request_id, "status": "queued", "order": order.id})


async def call_status(request: web.Request) -> web.Response:
    """``GET /calls/<call_sid>`` (or the order's id) → ``{"call_sid", "order", "to", "network", "status",
    "answered_by", "outcome"}``; 404 for a call this process did not place."""
    refused = _refused(request)
    if refused is not None:
        return refused
    dialer = request.app[DIALER]
    key = request.match_info["call_sid"]
    order = dialer.order(key) or dialer.find(key)
    if order is None:
        return _json(404, {"error": "no call placed here has that id"})
    return _json(200, {"call_sid": order.call_sid, "order": order.id, "to": mask_number(order.to),
                       "network": order.network, "status": order.status, "answered_by": order.answered_by,
                       "outcome": order.outcome})


async def _callback(request: web.Request) -> tuple[Network, dict[str, str], OutboundOrder | None]:
    """A signed callback: its network, form and order (None: unknown here). Raises HTTPNotFound for a network
    that places no calls, HTTPForbidden without a valid signature."""
    network = NETWORKS.get(request.match_info.get("network", "plivo"))
    if network is None:
        raise web.HTTPNotFound()
    form = await signed_form(request, network)
    if form is None:
        raise web.HTTPForbidden(text="invalid signature")
    order = request.app[DIALER].order(request.query.get("order", ""))
    if order is None:
        logger.debug("%s callback %s for an unknown order ignored", network.name, request.path)
    return network, form, order


async def status_callback(request: web.Request) -> web.Response:
    """A placed call's progress (``CallStatus``: initiated, ringing, in-progress, completed, busy, no-answer...)."""
    network, form, order = await _callback(request)
    if order is not None:
        request.app[DIALER].on_status(order, form.get("CallStatus", "")[:32], form.get(network.call_id_param, ""))
    return web.Response(text="")


async def detection_callback(request: web.Request) -> web.Response:
    """Answering machine detection: Twilio ``AnsweredBy``; Plivo ``Machine`` (``true``: a machine)."""
    _network, form, order = await _callback(request)
    if order is not None:
        answered_by = form.get("AnsweredBy") or {"true": "machine", "false": "human"}.get(form.get("Machine", ""), "")
        request.app[DIALER].on_detection(order, answered_by[:32] or "unknown")
    return web.Response(text="")


async def plivo_answer(request: web.Request) -> web.Response:
    """Plivo's answer URL for a placed call: the ``<Stream>`` (no ``<Speak>``: the callee speaks first) with the
    call's stream token; a hang-up for an unknown order."""
    network, form, order = await _callback(request)
    if order is None or order.listener is not None:
        return web.Response(text=network.hang_up_answer(""), content_type=network.content_type)
    request.app[DIALER].on_status(order, "in-progress", form.get(network.call_id_param, ""))
    config = request.app[CONFIG]
    parameters = request.app[STREAM_TOKENS].issue_outbound(order.to, order.id, TOKEN_TTL_S)
    stream_url = stream_origin(config, request) + network.stream_path
    return web.Response(text=network.stream_answer("", stream_url, parameters), content_type=network.content_type)


async def transfer_answer(request: web.Request) -> web.Response:
    """The ``<Dial>`` a transferred call fetches (Plivo's ``aleg_url``): only to a destination this relay has
    configured (``TRANSFER_TO`` and the groups'), with the whisper URL it was given."""
    network = (await _callback(request))[0]
    config = request.app[CONFIG]
    destination = request.query.get("to", "")
    if destination not in {config.transfer_to, config.primary_transfer_to, config.secondary_transfer_to} - {None}:
        logger.warning("transfer to an unconfigured destination refused")
        return web.Response(text=network.hang_up_answer(""), content_type=network.content_type)
    whisper = request.query.get("whisper") or None
    dial = documents.dial_xml if network.name == "plivo" else documents.dial_twiml
    caller_id = request.app[DIALER].caller_id(network.name)
    return web.Response(text=dial(destination, caller_id, whisper), content_type=network.content_type)


async def whisper_answer(request: web.Request) -> web.Response:
    """A warm transfer's whisper: the summary, said to the person who picked up before they are connected."""
    network = (await _callback(request))[0]
    text = request.query.get("text", "")[:MAX_SUMMARY_CHARS] or "A caller is being put through to you."
    say = documents.speak_xml if network.name == "plivo" else documents.say_twiml
    return web.Response(text=say(text), content_type=network.content_type)

"""The phone networks' routes: each network's voice webhook and media stream (from its ``Network`` record),
and the SMS webhook.

1. The network POSTs (or GETs) its voice webhook; ``voice_webhook`` answers in the network's language: a
   greeting and a stream to its media path for an allowed caller, carrying the caller's number and a
   single-use stream token; a short message and a hang-up for anyone else, during a drain, or at
   ``MAX_CALLS``.
2. The network opens the media websocket; ``media_stream`` checks its signature, wraps it in a
   ``phones.websocket.WebSocketLeg`` speaking the network's dialect and holds a ``bridge.call.Call`` on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web

from bridge.call import Call
from bridge.events import CallEvent, CallEventHook
from bridge.handoff import call_brief, transfer_destination
from callers import (
    ADMITTED_MESSAGE,
    BUSY_MESSAGE,
    DRAINING_MESSAGE,
    RESTRICTED_MESSAGE,
    find_caller,
    mask_number,
    welcome_message,
)
from config import LOOPBACK_HOSTS, Config
from ops.budget import UNAVAILABLE_MESSAGE
from ops.tokens import TOKEN_TTL_S
from phones import twilio
from phones.network import Network, Signatures
from phones.websocket import WebSocketLeg
from routes.state import (
    BUDGET,
    CALLS,
    CAPACITY,
    CONFIG,
    CONSOLE,
    DIALER,
    DRAINING,
    METRICS,
    OPENAI_CLIENT,
    PREWARMS,
    PRICES,
    RECORDS,
    SESSIONS,
    SIGNATURES,
    SMS,
    STATS,
    STREAM_TOKENS,
    WAIT_MUSIC,
)

logger = logging.getLogger("relay")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_network(app: web.Application, network: Network) -> Handler:
    """Serve ``network``'s voice webhook (GET and POST) and media stream; returns the stream handler."""

    async def answer(request: web.Request) -> web.Response:
        return await voice_webhook(request, network)

    async def stream(request: web.Request) -> web.StreamResponse:
        return await media_stream(request, network)

    app.router.add_route("GET", network.answer_path, answer)
    app.router.add_route("POST", network.answer_path, answer)
    app.router.add_get(network.stream_path, stream)
    return stream


def public_origin(config: Config, request: web.Request) -> str:
    """The https origin the phone network used to reach us: ``PUBLIC_URL``, else the Host header (with
    ``X-Forwarded-Proto`` when a proxy terminates TLS)."""
    if config.public_url:
        return config.public_url
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{proto}://{request.host}"


def stream_origin(config: Config, request: web.Request) -> str:
    """The websocket origin for stream URLs: ``wss://``, as phone networks require, except for an
    ``http://`` origin that is loopback (``PUBLIC_URL``, or the Host of a plain-http request:
    ``python simulate.py --relay-url http://127.0.0.1:5050``), where it is ``ws://``. A public Host
    reached over http is taken to sit behind a TLS proxy that did not say so."""
    origin = urlsplit(public_origin(config, request))
    if origin.scheme == "http" and (config.public_url or origin.hostname in LOOPBACK_HOSTS):
        return "ws://" + origin.netloc
    return "wss://" + origin.netloc


def _served(request: web.Request, network: Network) -> Signatures:
    """The network's signature checks; 404 while it is off (no credentials, no ``ALLOW_UNSIGNED_WEBHOOKS``)."""
    signatures = request.app[SIGNATURES][network.name]
    if not signatures.enabled and not request.app[CONFIG].allow_unsigned_webhooks:
        raise web.HTTPNotFound()
    return signatures


async def _form(request: web.Request) -> dict[str, str]:
    """A webhook's form parameters (empty for a GET)."""
    form = await request.post() if request.method == "POST" else {}
    return {key: str(value) for key, value in form.items()}


async def signed_form(request: web.Request, network: Network) -> dict[str, str] | None:
    """A network's callback: its form parameters when its signature matches (over this relay's public URL of the
    request), None otherwise (logged). 404 while the network is off."""
    signatures = _served(request, network)
    body = await request.read() if request.method == "POST" else b""
    params = await _form(request)
    url = public_origin(request.app[CONFIG], request) + request.path_qs
    if not signatures.webhook(request.method, url, params, request.headers, body):
        logger.warning("rejected %s: bad %s signature", request.path, network.name)
        return None
    return params


async def voice_webhook(request: web.Request, network: Network) -> web.Response:
    """A network's voice webhook (GET or POST), answered in its language. 404 while the network is off (no
    credentials, and no ``ALLOW_UNSIGNED_WEBHOOKS``), 403 without a valid signature."""
    params = await signed_form(request, network)
    if params is None:
        return web.Response(status=403, text="invalid signature")
    raw_from = network.caller_number(params.get("From") or request.query.get("From"))
    call_id = params.get(network.call_id_param) or request.query.get(network.call_id_param) or ""
    return web.Response(text=await _answer(request, network, raw_from, call_id), content_type=network.content_type)


def _recall(app: web.Application) -> Callable[[str], Awaitable[str]] | None:
    """``CALLER_MEMORY``'s digest by number (``store.records.Records.recall``); None without records."""
    records = app[RECORDS]
    return records.recall if records is not None else None


async def _answer(request: web.Request, network: Network, raw_from: str | None, call_id: str) -> str:
    """The webhook answer: a short message and a hang-up for a caller on no allowlist, during a restart's
    drain, or at ``MAX_CALLS``; otherwise the welcome, then a stream carrying the caller's number and a
    single-use stream token for this call (``ops.tokens``). A call id seen before gets the same answer while
    its token is unspent, and a refusal once its stream has started (one call id, one stream). Only a call let in
    waits for the caller's memory (``CALLER_MEMORY``)."""
    config = request.app[CONFIG]
    caller = find_caller(config, raw_from)
    if caller is None:
        logger.info("restricted caller %s refused", mask_number(raw_from or ""))
        return network.hang_up_answer(RESTRICTED_MESSAGE)
    if request.app[DRAINING].is_set():
        logger.info("call from %s turned away: draining for a restart", mask_number(caller.number))
        return network.hang_up_answer(DRAINING_MESSAGE)
    budget = request.app[BUDGET]
    if budget is not None and budget.exhausted:
        logger.info("call from %s turned away: DAILY_BUDGET_USD reached", mask_number(caller.number))
        return network.hang_up_answer(UNAVAILABLE_MESSAGE)
    tokens = request.app[STREAM_TOKENS]
    parameters = tokens.again(call_id)
    if parameters is True:
        logger.warning("webhook for call %r refused: that call was admitted already", call_id[:64])
        return network.hang_up_answer(ADMITTED_MESSAGE)
    if parameters is False:  # a new call: a place, and its token
        if not request.app[CAPACITY].answer():
            logger.warning("call from %s turned away: MAX_CALLS=%d reached", mask_number(caller.number),
                           config.max_calls)
            return network.hang_up_answer(BUSY_MESSAGE)
        parameters = tokens.issue(caller.number, call_id)  # admitted before the wait: a retry gets this token
        recall = _recall(request.app)
        memory = await recall(caller.number) if recall is not None else ""
        destination = transfer_destination(config, request.app.get(DIALER), network.name, caller)
        request.app[PREWARMS].start(parameters["stream_nonce"], caller.first_name, TOKEN_TTL_S,
                                    call_brief(destination, None, caller, memory))
    if network.carries_call_id:
        parameters = {**parameters, "call_id": call_id}
    stream_url = stream_origin(config, request) + network.stream_path
    return network.stream_answer(welcome_message(config, caller), stream_url, parameters)


async def sms(request: web.Request) -> web.Response:
    """``POST /sms`` (Twilio "A message comes in" webhook): TwiML at once; the reply follows by REST
    (``phones.sms.SmsReplies``). Signed like the voice webhook (403 otherwise)."""
    signatures = _served(request, twilio.NETWORK)
    params = await _form(request)
    url = public_origin(request.app[CONFIG], request) + request.path_qs
    if not signatures.webhook(request.method, url, params, request.headers):
        logger.warning("rejected /sms: bad X-Twilio-Signature")
        return web.Response(status=403, text="invalid signature")
    return web.Response(text=request.app[SMS].receive(params), content_type="text/xml")


async def media_stream(request: web.Request, network: Network) -> web.StreamResponse:
    """A network's media websocket: one call. Before anything reaches OpenAI, an unsigned handshake is
    closed 1008, and one that comes during a drain or beyond ``MAX_CALLS`` open streams 1013 (try again
    later). 404 while the network is off."""
    app = request.app
    signatures = _served(request, network)
    config = app[CONFIG]
    https_url = public_origin(config, request) + request.path_qs
    wss_url = stream_origin(config, request) + request.path_qs
    signed = signatures.handshake(https_url, wss_url, request.headers)
    capacity = app[CAPACITY]
    dialect = network.dialect
    # No permessage-deflate (a client that offers it would cost ~250 KiB and a fifth more CPU per call), and
    # text frames as bytes: orjson parses them without a UTF-8 decode (benchmarks/load.py).
    ws = web.WebSocketResponse(max_msg_size=dialect.max_message_bytes, autoping=True, compress=False,
                               decode_text=False)
    await ws.prepare(request)
    if not signed:
        logger.warning("rejected %s media stream: bad signature", network.name)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid signature")
        return ws
    if app[DRAINING].is_set() or not capacity.open_stream():
        why = "draining" if app[DRAINING].is_set() else f"MAX_CALLS={capacity.max_calls} reached"
        logger.warning("%s media stream refused: %s", network.name, why)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=why.encode())
        return ws
    leg = WebSocketLeg(ws, dialect, request.transport)
    call = Call(leg, config, app[STATS], app[STREAM_TOKENS], wait_music=app[WAIT_MUSIC],
                openai_client=app[OPENAI_CLIENT], sessions=app[SESSIONS], on_event=call_observers(app),
                prewarms=app[PREWARMS], switchboard=app.get(DIALER), prices=app[PRICES], recall=_recall(app))
    task = asyncio.current_task()
    assert task is not None
    app[CALLS][call] = task  # type: ignore[assignment]
    try:
        await call.run()
    finally:
        del app[CALLS][call]
        capacity.close_stream()
    return ws


def call_observers(app: web.Application) -> CallEventHook | None:
    """The calls' one event hook, fanned out to the metrics, the console, the records and the daily budget
    (whichever are on)."""
    records = app[RECORDS]
    recorder = records.recording if records is not None else None
    observers = [observer.on_event for observer in (app[METRICS], app[CONSOLE], recorder, app[BUDGET])
                 if observer is not None]
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def on_event(event: CallEvent) -> None:
        for observer in observers:
            observer(event)

    return on_event

"""The relay: phone calls bridged to the OpenAI Realtime API, in one aiohttp process.

Call flow (a maintainer's map):

1. Twilio POSTs ``/incoming-call`` (Plivo: ``/plivo/answer``); the handler answers TwiML (Plivo
   XML): a greeting and a ``<Stream>`` to ``/media-stream`` (``/plivo/media-stream``) for an
   allowed caller, a short "restricted" message and a hang-up for anyone else.
2. The network opens the media websocket; ``_bridge`` checks its signature, wraps the socket in a
   ``phone_ws.WebSocketLeg`` speaking that network's ``Dialect`` and hands it to a ``bridge.Call``.
3. ``Call.run`` holds the call: Realtime session, audio both ways, barge-in, tools, goodbye.
4. Closing the phone socket hangs up.
5. SIGTERM/SIGINT drains (``_serve``): ``/health`` answers 503, new calls are turned away politely,
   live calls go on for up to ``DRAIN_TIMEOUT_S``, then each hears a closing line and ends 1001.

Imports point one way: this module imports the others, nothing imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from dotenv import load_dotenv

import redact
import tools
from bridge.call import Call
from bridge.events import CallEvent, CallEventHook, Stats
from bridge.music import load_wait_music
from config import (
    BUSY_MESSAGE,
    DRAINING_MESSAGE,
    RESTRICTED_MESSAGE,
    Config,
    ConfigError,
    EventLoop,
    LogFormat,
    find_caller,
    mask_number,
    startup_warnings,
    welcome_message,
)
from model.websocket import RealtimeClient
from ops import tunnel, workers
from ops.capacity import Capacity, LoopErrors, raise_open_files_limit
from ops.console import Console, Watcher
from ops.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from ops.metrics import Metrics
from ops.tokens import StreamTokens, feed_ticket, feed_ticket_valid, operator_allowed
from phones import plivo as phone_plivo
from phones import sms as sms_module
from phones import twilio as phone_twilio
from phones.sms import SmsReplies
from phones.websocket import Dialect, WebSocketLeg

logger = logging.getLogger("relay")
access_logger = logging.getLogger("relay.access")

PROBES = frozenset({"/health", "/healthz"})
"""Paths a load balancer polls: logged at DEBUG only."""
CLOSING_LINE_S = 5.0
"""The last part of ``DRAIN_TIMEOUT_S``, kept for the calls' closing lines."""
CLOSING_INSTRUCTION = (
    "The server is restarting and this call must end now. In one short sentence, tell the caller "
    "you have to hang up and ask them to call back in a minute, then say goodbye."
)
IDLE_TIMEOUT_S = 15.0
"""A connection that has not completed a request this long after opening (or after its last
response) is closed: aiohttp's keep-alive timer, which also ends slowloris clients that never finish
their headers (aiohttp's default is an hour)."""

CONFIG = web.AppKey("config", Config)
STATS = web.AppKey("stats", Stats)
CALLS = web.AppKey("calls", dict[Call, asyncio.Task[web.StreamResponse]])
"""Live calls and the request handler task holding each."""
CAPACITY = web.AppKey("capacity", Capacity)
METRICS = web.AppKey("metrics", Metrics | None)
CONSOLE = web.AppKey("console", Console | None)
CONSOLE_HTML = web.AppKey("console_html", str)
"""None unless ``METRICS=true``."""
TWILIO_SIGNATURES = web.AppKey("twilio_signatures", phone_twilio.Signatures)
PLIVO_SIGNATURES = web.AppKey("plivo_signatures", phone_plivo.Signatures)
DRAINING = web.AppKey("draining", asyncio.Event)
WAIT_MUSIC = web.AppKey("wait_music", tuple[str, ...])
"""The waiting music as base64 µ-law 20 ms frames (empty: none)."""
OPENAI_CLIENT = web.AppKey("openai_client", openai.AsyncOpenAI | None)
"""One REST client (and connection pool) for every call's web searches and every SMS reply."""
REALTIME_CLIENT = web.AppKey("realtime_client", RealtimeClient)
"""One connection pool for every call's Realtime websocket."""
SMS = web.AppKey("sms", SmsReplies)
STREAM_TOKENS = web.AppKey("stream_tokens", StreamTokens)
"""Issued by the voice webhooks, checked (once) by the media streams."""


def make_app(config: Config) -> web.Application:
    """Build the aiohttp application for ``config`` (routes, state, shutdown).

    Raises:
        ConfigError: the waiting music file cannot be used.
    """
    app = web.Application()
    app[CONFIG] = config
    app[WAIT_MUSIC] = load_wait_music(config)
    app.cleanup_ctx.append(_rest_clients)
    app[STATS] = Stats()
    app[CALLS] = {}
    app[CAPACITY] = Capacity(config.max_calls)
    app[METRICS] = Metrics(lambda: app[STATS].active) if config.metrics else None
    app[CONSOLE] = Console() if config.console_token else None
    app[CONSOLE_HTML] = CONSOLE_PAGE.read_text(encoding="utf-8") if config.console_token else ""
    app.cleanup_ctx.append(_loop_lag)
    app[TWILIO_SIGNATURES] = phone_twilio.Signatures(config.twilio_auth_token)
    app[PLIVO_SIGNATURES] = phone_plivo.Signatures(config.plivo_auth_token)
    app[DRAINING] = asyncio.Event()
    app[STREAM_TOKENS] = StreamTokens(config.openai_api_key.encode())
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("GET", "/incoming-call", incoming_call)
    app.router.add_route("POST", "/incoming-call", incoming_call)
    app.router.add_get("/media-stream", media_stream)
    app.router.add_post("/sms", sms)
    app.router.add_route("GET", "/plivo/answer", plivo_answer)
    app.router.add_route("POST", "/plivo/answer", plivo_answer)
    app.router.add_get("/plivo/media-stream", plivo_media_stream)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/console", console_page)
    app.router.add_get("/console/ws", console_feed)
    app.on_shutdown.append(_close_calls)
    app.on_shutdown.append(_close_console)
    return app


async def _rest_clients(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Realtime websockets' connection pool, the Responses API client (when
    ``gpt_web_search`` is offered or SMS replies are configured) and Twilio's REST client for SMS
    (with REST credentials); SMS replies still under way are cancelled at shutdown."""
    config = app[CONFIG]
    twilio = sms_module.twilio_client(config)
    client = None
    if "gpt_web_search" in config.tools or twilio is not None:
        client = openai.AsyncOpenAI(
            api_key=config.openai_api_key,
            base_url=config.openai_base_url,
            max_retries=0,  # the caller's own deadline bounds the whole search
            timeout=config.web_search_timeout_s,
        )
        await tools.warm_up_web_search(config.web_search_model)
    app[OPENAI_CLIENT] = client
    app[REALTIME_CLIENT] = RealtimeClient()
    app[SMS] = SmsReplies(config, twilio[0] if twilio else None, client)
    yield
    await app[REALTIME_CLIENT].close()
    await app[SMS].close()
    if twilio is not None:
        await twilio[1].close()
    if client is not None:
        await client.close()


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: with metrics on, sample the event loop's lag while the app runs."""
    watcher = app[METRICS]
    task = asyncio.create_task(watcher.watch_loop_lag()) if watcher is not None else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_calls(app: web.Application) -> None:
    """Shutdown: refuse new calls, end live ones with 1001 going away (after ``drain``, none)."""
    app[DRAINING].set()
    calls = list(app[CALLS])
    if calls:
        logger.info("shutting down: closing %d live call(s)", len(calls))
    await asyncio.gather(*(call.close(WSCloseCode.GOING_AWAY, "server shutting down") for call in calls))


async def drain(app: web.Application, timeout_s: float, hurry: asyncio.Event) -> None:
    """A restart's drain, with the listener still open: ``/health`` answers 503 ``draining`` and new
    calls are turned away (``_answer``, ``_bridge``) while live calls go on for up to ``timeout_s``
    minus ``CLOSING_LINE_S``; each call still live then hears a closing line from the assistant and
    ends 1001. ``hurry`` (a second signal) skips to the end. Calls still live on return are closed
    1001 by ``_close_calls`` when the caller shuts the runner down."""
    app[DRAINING].set()
    calls = app[CALLS]
    logger.info("draining: %d live call(s), up to %.0fs", len(calls), timeout_s)
    await _until_ended(list(calls.values()), max(0.0, timeout_s - CLOSING_LINE_S), hurry)
    if calls and not hurry.is_set():
        logger.info("drain timeout: ending %d call(s) with a closing line", len(calls))
        left = dict(calls)
        await asyncio.gather(*(call.say_goodbye("server restarting", CLOSING_INSTRUCTION) for call in left))
        await _until_ended(list(left.values()), CLOSING_LINE_S, hurry)


async def _until_ended(tasks: list[asyncio.Task[web.StreamResponse]], timeout_s: float, hurry: asyncio.Event) -> None:
    """Wait until every task has ended, ``timeout_s`` has passed or ``hurry`` is set (never cancels them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending: set[asyncio.Future[Any]] = set(tasks)
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        while pending and not hurry.is_set() and (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait(pending | {hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            pending -= done
    finally:
        hurried.cancel()


# --- HTTP routes ------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /``: a liveness message; a websocket upgrade here is a media stream (some setups
    point the stream at the bare host)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await media_stream(request)
    return web.json_response({"message": "Twilio ⇄ OpenAI Realtime relay is running"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: status and counters for load balancers: 503 ``draining`` during a restart's
    drain, 503 ``full`` at ``MAX_CALLS`` (send new calls elsewhere), else 200 ``healthy``."""
    stats = request.app[STATS]
    capacity = request.app[CAPACITY]
    status = "draining" if request.app[DRAINING].is_set() else "full" if capacity.full else "healthy"
    body = {
        "status": status,
        "capacity": capacity.max_calls,
        "active": capacity.in_use,
        "uptime": f"{int(time.monotonic() - stats.started)}s",
        "pid": os.getpid(),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "connections": {"active": stats.active, "total": stats.total},
        "errors": stats.errors,
        "upstream_lost": stats.upstream_lost,
        "session_replacements": stats.session_replacements,
        "openai_configured": bool(request.app[CONFIG].openai_api_key),
    }
    return web.json_response(body, status=200 if status == "healthy" else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format (``metrics.Metrics``); 404 unless ``METRICS=true``,
    401 without ``CONSOLE_TOKEN`` as the Basic auth password when one is set."""
    collected = request.app[METRICS]
    if collected is None:
        raise web.HTTPNotFound()
    refused = _operator_refused(request)
    if refused is not None:
        return refused
    return web.Response(body=collected.render(), headers={"Content-Type": PROMETHEUS_TEXT})


CONSOLE_PAGE = Path(__file__).resolve().parent / "assets" / "console.html"


def _operator_refused(request: web.Request, ticket: bool = False) -> web.Response | None:
    """The operator pages' gate: a 401 answer without ``CONSOLE_TOKEN`` as the Basic auth password
    (or, with ``ticket``, the console page's feed ticket in the query); None when the request may go
    on (always, when no token is set)."""
    token = request.app[CONFIG].console_token
    if operator_allowed(request.headers.get("Authorization"), token):
        return None
    if ticket and token is not None and feed_ticket_valid(token, request.query.get("ticket", "")):
        return None
    return web.Response(status=401, text="unauthorized", headers={"WWW-Authenticate": 'Basic realm="relay"'})


def _console(request: web.Request) -> Console:
    """The console; 404 when it is off (no ``CONSOLE_TOKEN``)."""
    console = request.app[CONSOLE]
    if console is None:
        raise web.HTTPNotFound()
    return console


async def console_page(request: web.Request) -> web.Response:
    """``GET /console``: the live call console, one self-contained page (no CDN), carrying the ticket
    its script opens ``/console/ws`` with. Behind ``CONSOLE_TOKEN`` (``_operator_refused``)."""
    _console(request)
    refused = _operator_refused(request)
    if refused is not None:
        return refused
    token = request.app[CONFIG].console_token
    assert token is not None
    page = request.app[CONSOLE_HTML].replace("__FEED_TICKET__", feed_ticket(token))
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'",
            "X-Frame-Options": "DENY",
        },
    )


async def console_feed(request: web.Request) -> web.WebSocketResponse | web.Response:
    """``GET /console/ws``: the call-event feed (``console.Console``): a snapshot of every call, then
    each event as it happens. Browsers that fall behind are dropped; incoming messages are ignored."""
    console = _console(request)
    refused = _operator_refused(request, ticket=True)
    if refused is not None:
        return refused
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    transport = request.transport
    watcher = Watcher(transport.abort if transport is not None else lambda: None)
    if not console.add(watcher):
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too many console watchers")
        return ws

    async def send() -> None:
        await ws.send_str(console.snapshot())
        while True:
            await ws.send_str(await watcher.queue.get())

    sender = asyncio.create_task(send(), name="console feed")
    try:
        async for _ in ws:  # the browser sends nothing we need; reading keeps pings and the close working
            if sender.done():
                break
    finally:
        console.remove(watcher)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if not ws.closed:
            await ws.close()
    return ws


async def _close_console(app: web.Application) -> None:
    """on_shutdown: cut every console feed (they would hold the runner's shutdown open)."""
    console = app[CONSOLE]
    if console is not None:
        console.drop_all()


def _call_observers(app: web.Application) -> CallEventHook | None:
    """The bridge's one call-event hook, fanned out to the metrics and the console (whichever are on)."""
    observers = [observer.on_event for observer in (app[METRICS], app[CONSOLE]) if observer is not None]
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def on_event(event: CallEvent) -> None:
        for observer in observers:
            observer(event)

    return on_event


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: a bare liveness probe."""
    return web.json_response({"status": "ok"})


def public_origin(config: Config, request: web.Request) -> str:
    """The https origin the phone network used to reach us: ``PUBLIC_URL``, else the Host
    header (with ``X-Forwarded-Proto`` when a proxy terminates TLS)."""
    if config.public_url:
        return config.public_url
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{proto}://{request.host}"


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def stream_origin(config: Config, request: web.Request) -> str:
    """The websocket origin for stream URLs: ``wss://``, as phone networks require, except for an
    ``http://`` origin that is loopback (``PUBLIC_URL``, or the Host of a plain-http request:
    ``python simulate.py --relay-url http://127.0.0.1:5050``), where it is ``ws://``. A public Host
    reached over http is taken to sit behind a TLS proxy that did not say so."""
    origin = urlsplit(public_origin(config, request))
    if origin.scheme == "http" and (config.public_url or origin.hostname in LOOPBACK_HOSTS):
        return "ws://" + origin.netloc
    return "wss://" + origin.netloc


async def _form(request: web.Request) -> dict[str, str]:
    """A webhook's form parameters (empty for a GET)."""
    form = await request.post() if request.method == "POST" else {}
    return {key: str(value) for key, value in form.items()}


async def incoming_call(request: web.Request) -> web.Response:
    """``/incoming-call`` (Twilio voice webhook, GET or POST): answer with TwiML.

    Twilio docs: the webhook is form-encoded and signed with ``X-Twilio-Signature``.
    """
    params = await _form(request)
    url = public_origin(request.app[CONFIG], request) + request.path_qs
    if not request.app[TWILIO_SIGNATURES].valid(url, params, request.headers):
        logger.warning("rejected /incoming-call: bad X-Twilio-Signature")
        return web.Response(status=403, text="invalid signature")
    raw_from = params.get("From") or request.query.get("From")
    call_sid = params.get("CallSid") or request.query.get("CallSid") or ""
    twiml = _answer(request, raw_from, call_sid, phone_twilio.hang_up_twiml, phone_twilio.stream_twiml, "/media-stream")
    return web.Response(text=twiml, content_type="text/xml")


async def plivo_answer(request: web.Request) -> web.Response:
    """``/plivo/answer`` (Plivo answer URL, GET or POST): answer with Plivo XML; 404 unless
    ``PLIVO_AUTH_TOKEN`` is set, 403 without a valid ``X-Plivo-Signature-V3``."""
    signatures = request.app[PLIVO_SIGNATURES]
    if not signatures.enabled:
        raise web.HTTPNotFound()
    params = await _form(request)
    url = public_origin(request.app[CONFIG], request) + request.path_qs
    if not signatures.valid(request.method, url, params, request.headers):
        logger.warning("rejected /plivo/answer: bad X-Plivo-Signature-V3")
        return web.Response(status=403, text="invalid signature")
    raw_from = phone_plivo.caller_number(params.get("From") or request.query.get("From"))
    call_uuid = params.get("CallUUID") or request.query.get("CallUUID") or ""
    xml = _answer(request, raw_from, call_uuid, phone_plivo.hang_up_xml, phone_plivo.stream_xml, "/plivo/media-stream")
    return web.Response(text=xml, content_type="application/xml")


def _answer(
    request: web.Request,
    raw_from: str | None,
    call_sid: str,
    hang_up: Callable[[str], str],
    stream: Callable[[str, str, Mapping[str, str]], str],
    media_path: str,
) -> str:
    """The webhook answer in the network's language: a short message and a hang-up for a caller on
    no allowlist, during a restart's drain, or at ``MAX_CALLS``; otherwise the welcome, then a stream
    to ``media_path`` carrying the caller's number and a single-use stream token for this call
    (``tokens``)."""
    config = request.app[CONFIG]
    caller = find_caller(config, raw_from)
    if caller is None:
        logger.info("restricted caller %s refused", mask_number(raw_from or ""))
        return hang_up(RESTRICTED_MESSAGE)
    if request.app[DRAINING].is_set():
        logger.info("call from %s turned away: draining for a restart", mask_number(caller.number))
        return hang_up(DRAINING_MESSAGE)
    if not request.app[CAPACITY].answer():
        logger.warning("call from %s turned away: MAX_CALLS=%d reached", mask_number(caller.number), config.max_calls)
        return hang_up(BUSY_MESSAGE)
    parameters = request.app[STREAM_TOKENS].issue(caller.number, call_sid)
    return stream(welcome_message(config, caller), stream_origin(config, request) + media_path, parameters)


async def sms(request: web.Request) -> web.Response:
    """``POST /sms`` (Twilio "A message comes in" webhook): TwiML at once; the reply follows by REST
    (``sms.SmsReplies``). Signed like the voice webhook (403 otherwise)."""
    params = await _form(request)
    url = public_origin(request.app[CONFIG], request) + request.path_qs
    if not request.app[TWILIO_SIGNATURES].valid(url, params, request.headers):
        logger.warning("rejected /sms: bad X-Twilio-Signature")
        return web.Response(status=403, text="invalid signature")
    return web.Response(text=request.app[SMS].receive(params), content_type="text/xml")


async def media_stream(request: web.Request) -> web.WebSocketResponse:
    """``/media-stream`` websocket (also ``/`` upgrades): one Twilio call.

    Twilio signs the handshake over the ``wss://`` URL with empty params.
    """
    url = stream_origin(request.app[CONFIG], request) + request.path_qs
    signed = request.app[TWILIO_SIGNATURES].valid(url, {}, request.headers)
    return await _bridge(request, phone_twilio.DIALECT, signed)


async def plivo_media_stream(request: web.Request) -> web.WebSocketResponse:
    """``/plivo/media-stream`` websocket: one Plivo call (404 unless ``PLIVO_AUTH_TOKEN`` is set)."""
    signatures = request.app[PLIVO_SIGNATURES]
    if not signatures.enabled:
        raise web.HTTPNotFound()
    config = request.app[CONFIG]
    https_url = public_origin(config, request) + request.path_qs
    wss_url = stream_origin(config, request) + request.path_qs
    signed = signatures.valid_handshake(https_url, wss_url, request.headers)
    return await _bridge(request, phone_plivo.DIALECT, signed)


async def _bridge(request: web.Request, dialect: Dialect, signed: bool) -> web.WebSocketResponse:
    """Accept a media websocket and hold the call on it. Before anything reaches OpenAI, an unsigned
    handshake is closed 1008, and one that comes during a drain or beyond ``MAX_CALLS`` open streams
    1013 (try again later)."""
    app = request.app
    capacity = app[CAPACITY]
    # No permessage-deflate (a client that offers it would cost ~250 KiB and a fifth more CPU per call), and
    # text frames as bytes: orjson parses them without a UTF-8 decode (benchmarks/load.py).
    ws = web.WebSocketResponse(max_msg_size=dialect.max_message_bytes, autoping=True, compress=False,
                               decode_text=False)
    await ws.prepare(request)
    if not signed:
        logger.warning("rejected %s media stream: bad signature", dialect.network)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid signature")
        return ws
    if app[DRAINING].is_set() or not capacity.open_stream():
        why = "draining" if app[DRAINING].is_set() else f"MAX_CALLS={capacity.max_calls} reached"
        logger.warning("%s media stream refused: %s", dialect.network, why)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=why.encode())
        return ws
    leg = WebSocketLeg(ws, dialect, request.transport)
    call = Call(leg, app[CONFIG], app[STATS], app[STREAM_TOKENS], wait_music=app[WAIT_MUSIC],
                openai_client=app[OPENAI_CLIENT], realtime_client=app[REALTIME_CLIENT], on_event=_call_observers(app))
    task = asyncio.current_task()
    assert task is not None
    app[CALLS][call] = task  # type: ignore[assignment]
    try:
        await call.run()
    finally:
        del app[CALLS][call]
        capacity.close_stream()
    return ws


# --- Entry point ------------------------------------------------------------------------


class AccessLog(AbstractAccessLogger):
    """One line per request: client, method, path *without its query* (GET webhooks carry the
    caller's number there), status, seconds. Health probes are logged at DEBUG only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in PROBES else logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level, '%s "%s %s" %d %.3fs', request.remote, request.method, request.path, response.status, time
            )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context from ``TLS_CERT_FILE`` / ``TLS_KEY_FILE`` (None: plain http/ws).

    Raises:
        ConfigError: the files are not a PEM certificate (chain) and its private key.
    """
    if not config.tls_cert_file or not config.tls_key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"TLS_CERT_FILE / TLS_KEY_FILE: not a usable PEM certificate and key ({type(exc).__name__})"
        ) from None
    return context


def _runner(app: web.Application, shutdown_timeout_s: float) -> web.AppRunner:
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout_s,
        access_log_class=AccessLog,
        access_log=access_logger,
        keepalive_timeout=IDLE_TIMEOUT_S,
    )


@contextlib.asynccontextmanager
async def serving(config: Config, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the relay on ``host:port`` inside the current event loop (tests, the simulator).

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321`` (``https://`` with ``TLS_CERT_FILE``).
    """
    tls = tls_context(config)
    runner = _runner(make_app(config), 2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0]
    try:
        yield f"{'https' if tls else 'http'}://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()


def host_of(url: str) -> str:
    """``host[:port]`` of a URL for the log: never its ``user:password@``, path or query."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "?"
    return parts.hostname + (f":{parts.port}" if parts.port else "")


async def _serve(app: web.Application, config: Config, tls: ssl.SSLContext | None) -> int:
    """Serve on 0.0.0.0:$PORT until SIGINT or SIGTERM; then ``drain`` and return 0.
    Returns 1, after one line naming ``PORT``, when the port cannot be bound. A worker of
    ``WORKERS`` binds with ``SO_REUSEPORT``, beside its siblings."""
    asyncio.get_running_loop().set_exception_handler(LoopErrors())
    worker = os.environ.get(workers.WORKER_ENV)
    close_tunnel = None
    if config.ngrok_authtoken:
        try:
            url, close_tunnel = await tunnel.open_tunnel(config.port, config.ngrok_authtoken, config.ngrok_domain)
        except tunnel.TunnelError as exc:
            logger.error("%s", exc)
            return 1
        if config.public_url:
            logger.warning("PUBLIC_URL is replaced by the ngrok tunnel's URL")
        config = replace(config, public_url=url)
        app[CONFIG] = config
        logger.info("ngrok tunnel open: %s; Twilio voice webhook: %s/incoming-call", url, url)
    runner = _runner(app, 5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", config.port, ssl_context=tls, reuse_port=worker is not None).start()
    except OSError as exc:
        await runner.cleanup()
        why = "is in use by another process" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        logger.error("PORT %d %s; set PORT to a free port", config.port, why)
        if close_tunnel is not None:
            await close_tunnel()
        return 1
    # Modules, config and the app's clients (set up just now, imports included) live for the whole
    # process: keep them out of full collections, which otherwise walk them all while every live
    # call's audio waits (40 ms here with 150 calls; gc docs: gc.freeze).
    gc.collect()
    gc.freeze()
    logger.info(
        "%s listening on 0.0.0.0:%d%s (realtime %s, model %s, %s event loop)",
        f"worker {worker} (pid {os.getpid()})" if worker else "relay",
        config.port,
        " with TLS (https/wss)" if tls else "",
        host_of(config.realtime_url),
        config.realtime_model,
        type(asyncio.get_running_loop()).__module__.partition(".")[0],
    )
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # the first signal drains; a second one ends the drain at once
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    orphan_watch = asyncio.create_task(workers.orphaned()) if worker else None
    if orphan_watch is not None:
        orphan_watch.add_done_callback(lambda task: task.cancelled() or on_signal())
    await stop.wait()
    if orphan_watch is not None and not orphan_watch.done():
        orphan_watch.cancel()
    await drain(app, config.drain_timeout_s, hurry)
    await runner.cleanup()
    if close_tunnel is not None:
        await close_tunnel()
    logger.info("stopped")
    return 0


def main() -> None:
    """``python relay.py``: serve on 0.0.0.0:$PORT until SIGINT/SIGTERM (exit 0; 1 on bad config
    or a port that cannot be bound); with ``WORKERS`` > 1, supervise that many worker processes."""
    load_dotenv(Path.cwd() / ".env")  # the working directory's .env; real env vars win
    redactor = redact.install(os.environ)  # before anything can print a secret
    try:
        config = Config.from_env(os.environ)
        tls = tls_context(config)
        app = make_app(config)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        sys.exit(1)
    redact.configure_logging(
        config.log_level, config.log_level_libraries, config.log_format is LogFormat.JSON, redactor
    )
    if redactor is None:
        logger.warning("DISABLE_LOG_REDACTION=true: secret values are not masked in this log")
    if not workers.is_worker():  # the supervisor (or the only process) says it once
        for note in startup_warnings(config):
            logger.warning("%s", note)
        if config.workers > 1:
            sys.exit(workers.supervise(config.workers, [sys.executable, str(Path(__file__).resolve())]))
    raise_open_files_limit(config.max_calls)
    with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
        sys.exit(runner.run(_serve(app, config, tls)))


def event_loop_factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop for ``EVENT_LOOP=uvloop`` where it is installed (a declared dependency
    except on Windows): less CPU per call (``benchmarks/load.py``). None, asyncio's own loop, for
    ``EVENT_LOOP=asyncio`` or without uvloop."""
    if kind is EventLoop.ASYNCIO:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()

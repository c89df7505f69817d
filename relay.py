"""The relay: phone calls bridged to the OpenAI Realtime API, in one aiohttp process.

Call flow (a maintainer's map):

1. Twilio POSTs ``/incoming-call`` (Plivo: ``/plivo/answer``); the handler answers TwiML (Plivo
   XML): a greeting and a ``<Stream>`` to ``/media-stream`` (``/plivo/media-stream``) for an
   allowed caller, a short "restricted" message and a hang-up for anyone else.
2. The network opens the media websocket; ``_bridge`` checks its signature, wraps the socket in a
   ``phone_ws.WebSocketLeg`` speaking that network's ``Dialect`` and hands it to a ``bridge.Call``.
3. ``Call.run`` holds the call: Realtime session, audio both ways, barge-in, tools, goodbye.
4. Closing the phone socket hangs up; on shutdown every live call is closed with 1001.

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
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import openai
from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from dotenv import load_dotenv

import phone_plivo
import phone_twilio
import redact
import sms as sms_module
import tools
from bridge import Call, Stats
from config import (
    RESTRICTED_MESSAGE,
    Config,
    ConfigError,
    LogFormat,
    find_caller,
    mask_number,
    startup_warnings,
    welcome_message,
)
from music import load_wait_music
from phone_ws import Dialect, WebSocketLeg
from sms import SmsReplies
from tokens import StreamTokens

logger = logging.getLogger("relay")
access_logger = logging.getLogger("relay.access")

PROBES = frozenset({"/health", "/healthz"})
"""Paths a load balancer polls: logged at DEBUG only."""
IDLE_TIMEOUT_S = 15.0
"""A connection that has not completed a request this long after opening (or after its last
response) is closed: aiohttp's keep-alive timer, which also ends slowloris clients that never finish
their headers (aiohttp's default is an hour)."""

CONFIG = web.AppKey("config", Config)
STATS = web.AppKey("stats", Stats)
CALLS = web.AppKey("calls", set[Call])
TWILIO_SIGNATURES = web.AppKey("twilio_signatures", phone_twilio.Signatures)
PLIVO_SIGNATURES = web.AppKey("plivo_signatures", phone_plivo.Signatures)
DRAINING = web.AppKey("draining", asyncio.Event)
WAIT_MUSIC = web.AppKey("wait_music", tuple[str, ...])
"""The waiting music as base64 µ-law 20 ms frames (empty: none)."""
OPENAI_CLIENT = web.AppKey("openai_client", openai.AsyncOpenAI | None)
"""One REST client (and connection pool) for every call's web searches and every SMS reply."""
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
    app[CALLS] = set()
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
    app.on_shutdown.append(_close_calls)
    return app


async def _rest_clients(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Responses API client (when ``gpt_web_search`` is offered or SMS replies are
    configured) and Twilio's REST client for SMS (with REST credentials); SMS replies still under
    way are cancelled at shutdown."""
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
    app[SMS] = SmsReplies(config, twilio[0] if twilio else None, client)
    yield
    await app[SMS].close()
    if twilio is not None:
        await twilio[1].close()
    if client is not None:
        await client.close()


async def _close_calls(app: web.Application) -> None:
    """Shutdown: refuse new calls, end live ones with 1001 going away."""
    app[DRAINING].set()
    calls = list(app[CALLS])
    if calls:
        logger.info("shutting down: closing %d live call(s)", len(calls))
    await asyncio.gather(*(call.close(WSCloseCode.GOING_AWAY, "server shutting down") for call in calls))


# --- HTTP routes ------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /``: a liveness message; a websocket upgrade here is a media stream (some setups
    point the stream at the bare host)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await media_stream(request)
    return web.json_response({"message": "Twilio ⇄ OpenAI Realtime relay is running"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: status and counters for load balancers (503 while draining)."""
    stats = request.app[STATS]
    draining = request.app[DRAINING].is_set()
    body = {
        "status": "draining" if draining else "healthy",
        "uptime": f"{int(time.monotonic() - stats.started)}s",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "connections": {"active": stats.active, "total": stats.total},
        "errors": stats.errors,
        "openai_configured": bool(request.app[CONFIG].openai_api_key),
    }
    return web.json_response(body, status=503 if draining else 200)


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


def stream_origin(config: Config, request: web.Request) -> str:
    """The websocket origin for stream URLs: ``wss://`` unless ``PUBLIC_URL`` is an ``http://``
    loopback test origin (phone networks accept only wss)."""
    if config.public_url and config.public_url.startswith("http://"):
        return "ws://" + config.public_url.removeprefix("http://")
    return "wss://" + urlsplit(public_origin(config, request)).netloc


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
    """The webhook answer in the network's language: the restricted-line message and a hang-up for a
    caller on no allowlist; otherwise the welcome, then a stream to ``media_path`` carrying the
    caller's number and a single-use stream token for this call (``tokens``)."""
    config = request.app[CONFIG]
    caller = find_caller(config, raw_from)
    if caller is None:
        logger.info("restricted caller %s refused", mask_number(raw_from or ""))
        return hang_up(RESTRICTED_MESSAGE)
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
    """Accept a media websocket and hold the call on it. An unsigned handshake is closed with
    1008 (and a draining server closes with 1001) before anything reaches OpenAI."""
    app = request.app
    ws = web.WebSocketResponse(max_msg_size=dialect.max_message_bytes, autoping=True)
    await ws.prepare(request)
    if app[DRAINING].is_set():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        return ws
    if not signed:
        logger.warning("rejected %s media stream: bad signature", dialect.network)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid signature")
        return ws
    leg = WebSocketLeg(ws, dialect)
    call = Call(leg, app[CONFIG], app[STATS], app[STREAM_TOKENS], wait_music=app[WAIT_MUSIC],
                openai_client=app[OPENAI_CLIENT])
    app[CALLS].add(call)
    try:
        await call.run()
    finally:
        app[CALLS].discard(call)
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
        The base URL, e.g. ``http://127.0.0.1:54321``.
    """
    runner = _runner(make_app(config), 2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()


def host_of(url: str) -> str:
    """``host[:port]`` of a URL for the log: never its ``user:password@``, path or query."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "?"
    return parts.hostname + (f":{parts.port}" if parts.port else "")


async def _serve(app: web.Application, config: Config) -> int:
    """Serve on 0.0.0.0:$PORT until SIGINT or SIGTERM; then close live calls (1001) and return 0.
    Returns 1, after one line naming ``PORT``, when the port cannot be bound."""
    runner = _runner(app, 5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", config.port).start()
    except OSError as exc:
        await runner.cleanup()
        why = "is in use by another process" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        logger.error("PORT %d %s; set PORT to a free port", config.port, why)
        return 1
    logger.info(
        "relay listening on 0.0.0.0:%d (realtime %s, model %s)",
        config.port,
        host_of(config.realtime_url),
        config.realtime_model,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main() -> None:
    """``python relay.py``: serve on 0.0.0.0:$PORT until SIGINT/SIGTERM (exit 0; 1 on bad config
    or a port that cannot be bound)."""
    load_dotenv(Path.cwd() / ".env")  # the working directory's .env; real env vars win
    redactor = redact.install(os.environ)  # before anything can print a secret
    try:
        config = Config.from_env(os.environ)
        app = make_app(config)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        sys.exit(1)
    redact.configure_logging(
        config.log_level, config.log_level_libraries, config.log_format is LogFormat.JSON, redactor
    )
    if redactor is None:
        logger.warning("DISABLE_LOG_REDACTION=true: secret values are not masked in this log")
    for note in startup_warnings(config):
        logger.warning("%s", note)
    # Modules and config live for the whole process: keep them out of full collections, which
    # otherwise stall every live call's audio for ~10 ms (gc docs: gc.freeze).
    gc.freeze()
    sys.exit(asyncio.run(_serve(app, config)))


if __name__ == "__main__":
    main()

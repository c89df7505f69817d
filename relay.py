"""The relay: phone calls bridged to OpenAI's voice models, in one aiohttp process.

Call flow (a maintainer's map):

1. A network POSTs its voice webhook (Twilio ``/incoming-call``, Plivo ``/plivo/answer``: one line each
   in ``phones.networks.NETWORKS``); ``routes.calls`` answers in its language: a greeting and a stream
   for an allowed caller, a short "restricted" message and a hang-up for anyone else.
2. The network opens the media websocket; ``routes.calls.media_stream`` checks its signature, wraps the
   socket in a ``phones.websocket.WebSocketLeg`` speaking that network's dialect and hands it to a
   ``bridge.call.Call``.
3. ``Call.run`` holds the call: the model session, audio both ways, barge-in, tools, goodbye.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from dotenv import load_dotenv

import redact
import tools
from bridge.events import Stats
from bridge.music import load_wait_music
from bridge.prewarm import Prewarms
from config import Config, ConfigError, EventLoop, LogFormat, startup_warnings
from model import factory as model_factory
from model.prices import PriceError, PriceTable
from model.websocket import RealtimeClient
from ops import tunnel, workers
from ops.capacity import Capacity, LoopErrors, raise_open_files_limit
from ops.cli import command_line
from ops.cli import port_argument as port_argument  # the simulator reads ports as the relay does
from ops.console import Console
from ops.dialing import place_call
from ops.metrics import Metrics
from ops.probe import healthcheck
from ops.tokens import StreamTokens
from phones import sms as sms_module
from phones.networks import NETWORKS
from phones.sms import SmsReplies
from routes import calls
from routes.operator import CONSOLE_PAGE, add_operator_routes, close_console
from routes.outbound import add_outbound_routes
from routes.records import add_records_routes
from routes.state import (
    BUDGET,
    CALLS,
    CAPACITY,
    CONFIG,
    CONSOLE,
    CONSOLE_HTML,
    DRAINING,
    METRICS,
    OPENAI_CLIENT,
    PREWARMS,
    PRICES,
    REALTIME_CLIENT,
    RECORDS,
    SESSIONS,
    SIGNATURES,
    SMS,
    STATS,
    STREAM_TOKENS,
    WAIT_MUSIC,
)
from store.commands import migrate_first, print_calls

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

FIRST_STREAM = web.AppKey("first_stream", Callable[[web.Request], Awaitable[web.StreamResponse]])
"""The first network's media-stream handler, which a bare ``/`` upgrade reaches."""


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
    app[SIGNATURES] = {network.name: network.signatures(config) for network in NETWORKS}
    app[DRAINING] = asyncio.Event()
    app[STREAM_TOKENS] = StreamTokens(config.openai_api_key.encode())
    app[RECORDS], app[BUDGET] = None, None  # set by the records' cleanup context (routes.records)
    try:
        app[PRICES] = PriceTable.load(config.prices_file)
    except PriceError as exc:
        raise ConfigError(f"PRICES_FILE: {exc}") from None
    app.router.add_get("/", index)
    streams = [calls.add_network(app, network) for network in NETWORKS]
    app[FIRST_STREAM] = streams[0]
    app.router.add_post("/sms", calls.sms)
    add_operator_routes(app)
    add_outbound_routes(app)
    add_records_routes(app)
    app.on_shutdown.append(_close_calls)
    app.on_shutdown.append(close_console)
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
    app[SESSIONS] = model_factory.session_factory(config, app[REALTIME_CLIENT])
    metrics = app[METRICS]
    app[PREWARMS] = Prewarms(app[SESSIONS], config.prewarm, config.noise_reduction.value,
                             on_outcome=lambda outcome: metrics and metrics.prewarms.labels(outcome).inc())
    app[SMS] = SmsReplies(config, twilio[0] if twilio else None, client)
    yield
    await app[PREWARMS].close()
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


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /``: a liveness message; a websocket upgrade here is the first network's media stream (some
    setups point the stream at the bare host)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await request.app[FIRST_STREAM](request)
    return web.json_response({"message": "phone ⇄ OpenAI voice relay is running"})


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


async def _tunnel(app: web.Application, config: Config) -> tuple[Config, Callable[[], Awaitable[None]] | None]:
    """With ``NGROK_AUTHTOKEN``, open the tunnel and make its URL the app's ``PUBLIC_URL``. Returns the config
    in force and the tunnel's closer (None without a tunnel). Raises tunnel.TunnelError."""
    if not config.ngrok_authtoken:
        return config, None
    url, close_tunnel = await tunnel.open_tunnel(config.port, config.ngrok_authtoken, config.ngrok_domain)
    if config.public_url:
        logger.warning("PUBLIC_URL is replaced by the ngrok tunnel's URL")
    config = replace(config, public_url=url)
    app[CONFIG] = config
    logger.info("ngrok tunnel open: %s; Twilio voice webhook: %s/incoming-call", url, url)
    return config, close_tunnel


async def _serve(app: web.Application, config: Config, tls: ssl.SSLContext | None) -> int:
    """Serve on $HOST:$PORT until SIGINT or SIGTERM; then ``drain`` and return 0.
    Returns 1, after one line naming ``PORT``, when the port cannot be bound. A worker of
    ``WORKERS`` binds with ``SO_REUSEPORT``, beside its siblings."""
    asyncio.get_running_loop().set_exception_handler(LoopErrors())
    worker = os.environ.get(workers.WORKER_ENV)
    try:
        config, close_tunnel = await _tunnel(app, config)
    except tunnel.TunnelError as exc:
        logger.error("%s", exc)
        return 1
    runner = _runner(app, 5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port, ssl_context=tls, reuse_port=worker is not None).start()
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
        "%s listening on %s:%d%s (realtime %s, model %s, %s event loop)",
        f"worker {worker} (pid {os.getpid()})" if worker else "relay",
        config.host,
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
    """``python relay.py``: serve on $HOST:$PORT until SIGINT/SIGTERM (exit 0; 1 on bad config or a port
    that cannot be bound; 2 on a bad option); with ``WORKERS`` > 1, supervise that many worker processes."""
    args = command_line()
    load_dotenv(Path.cwd() / ".env")  # the working directory's .env; real env vars win
    redactor = redact.install(os.environ)  # before anything can print a secret
    try:
        config = Config.from_env(os.environ)
        config = replace(config, host=args.host or config.host, port=args.port or config.port)
        if args.command == "healthcheck":
            sys.exit(healthcheck(config))
        if args.command == "call":
            sys.exit(place_call(config, args.to, args.purpose, args.network, args.relay_url))
        if args.command == "calls":
            sys.exit(print_calls(config, args.limit, args.caller))
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
        for note in startup_warnings(config) + model_factory.startup_warnings(config):
            logger.warning("%s", note)
        if config.workers > 1:
            migrate_first(config)  # once, before the workers open the database together
            sys.exit(workers.supervise(config.workers, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]))
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

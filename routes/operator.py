"""The operator's routes: ``/health`` for load balancers, ``/metrics``, and the live call console.

``/metrics`` and the console sit behind ``CONSOLE_TOKEN`` (HTTP Basic password, any user name).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import WSCloseCode, web

from ops.console import Console, Watcher
from ops.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from ops.tokens import feed_ticket, feed_ticket_valid, operator_allowed
from routes.state import (
    BUDGET,
    CAPACITY,
    CONFIG,
    CONSOLE,
    CONSOLE_HTML,
    DIALER,
    DRAINING,
    METRICS,
    PREWARMS,
    RECORDS,
    STATS,
)

CONSOLE_PAGE = Path(__file__).resolve().parent.parent / "assets" / "console.html"


def add_operator_routes(app: web.Application) -> None:
    """``/health``, ``/healthz``, ``/metrics``, ``/console`` and ``/console/ws``."""
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/console", console_page)
    app.router.add_get("/console/ws", console_feed)


async def health(request: web.Request) -> web.Response:
    """``GET /health``: status and counters for load balancers: 503 ``draining`` during a restart's
    drain, 503 ``full`` at ``MAX_CALLS`` (send new calls elsewhere), else 200 ``healthy`` (also over
    ``DAILY_BUDGET_USD``, which every relay of the deployment shares: ``budget.exhausted`` says so)."""
    stats = request.app[STATS]
    capacity = request.app[CAPACITY]
    status = "draining" if request.app[DRAINING].is_set() else "full" if capacity.full else "healthy"
    prewarms = request.app.get(PREWARMS)
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
        "prewarms": {"waiting": len(prewarms), **prewarms.counts} if prewarms is not None else {},
        "outbound": _outbound(request.app),
        "records": records.health() if (records := request.app.get(RECORDS)) is not None else {},
        "budget": budget.health() if (budget := request.app.get(BUDGET)) is not None else {},
        "openai_configured": bool(request.app[CONFIG].openai_api_key),
    }
    return web.json_response(body, status=200 if status == "healthy" else 503)


def _outbound(app: web.Application) -> dict[str, object]:
    """Calls this process placed: the networks that can place them, the last hour's count against its cap, and
    those still ringing or under way."""
    dialer = app.get(DIALER)
    if dialer is None:
        return {}
    return {"networks": dialer.dialing, "placed_last_hour": dialer.placed_last_hour,
            "max_per_hour": dialer.config.outbound_max_per_hour,
            "in_progress": sum(1 for order in dialer.orders.values() if not order.outcome)}


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


async def close_console(app: web.Application) -> None:
    """on_shutdown: cut every console feed (they would hold the runner's shutdown open)."""
    console = app[CONSOLE]
    if console is not None:
        console.drop_all()


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: a bare liveness probe."""
    return web.json_response({"status": "ok"})

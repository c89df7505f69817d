"""The records' routes and lifetime: ``GET /api/calls`` and ``GET /api/calls/<call_sid>`` behind the operator's
credentials, and the cleanup context that opens the records (``store.records``) and the daily budget
(``ops.budget``) and hooks them to the calls, the texts and the stream tokens."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web

from envreader import to_e164
from ops.budget import DailyBudget
from ops.tokens import operator_allowed
from redact import describe
from routes.state import BUDGET, CONFIG, METRICS, RECORDS, SMS, STREAM_TOKENS
from store.records import Records

logger = logging.getLogger("relay")

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
BUDGET_REFRESH_S = 60.0
READ_DEADLINE_S = 10.0
"""How long one ``/api/calls`` read may take."""

T = TypeVar("T")


def add_records_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call_sid}", get_call)
    app.cleanup_ctx.append(records_context)


async def records_context(app: web.Application) -> AsyncIterator[None]:
    """Open the records (``DATABASE_URL``) and the budget; close them at shutdown. A database that cannot be
    used leaves the relay serving without records until it can be (logged, and ``/health`` says so)."""
    config = app[CONFIG]
    records = None
    if config.database_url is not None:
        metrics = app[METRICS]
        records = Records(config, config.openai_api_key.encode(),
                          metrics.records_dropped.inc if metrics is not None else None)
        await records.start()
        # Both do nothing while the records are not ready (a database down at startup is tried again).
        app[SMS].on_text = records.on_text
        app[STREAM_TOKENS].ledger = records.spend_nonce
    app[RECORDS] = records
    budget = app[BUDGET] = None
    refresher = None
    if config.daily_budget_usd is not None:
        budget = app[BUDGET] = DailyBudget(config.daily_budget_usd,
                                           records.db.spent_since if records is not None else None)
        refresher = asyncio.create_task(_refresh(budget), name="budget refresh")
    try:
        yield
    finally:
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        if records is not None:
            await records.close()


async def _refresh(budget: DailyBudget) -> None:
    while True:
        with contextlib.suppress(Exception):  # the database's: the local count stands until the next try
            async with asyncio.timeout(10.0):
                await budget.refresh()
        await asyncio.sleep(BUDGET_REFRESH_S)


def _records(request: web.Request) -> Records | web.Response:
    """The records, or the answer: 404 without ``CONSOLE_TOKEN`` or records, 401 without the credentials
    (Basic password or Bearer), 503 when the database could not be used."""
    token = request.app[CONFIG].console_token
    records = request.app[RECORDS]
    if token is None or request.app[CONFIG].database_url is None:
        return web.json_response({"error": "records are off (RECORDS=off, or no CONSOLE_TOKEN)"}, status=404)
    if not operator_allowed(request.headers.get("Authorization"), token, bearer=True):
        return web.json_response({"error": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": 'Basic realm="relay"'})
    if records is None or not records.ready:
        return web.json_response({"error": "the records' database cannot be used yet"}, status=503)
    return records


async def list_calls(request: web.Request) -> web.Response:
    """``GET /api/calls?limit=50&before=<ISO time>&since=<ISO time>&caller=<E.164>`` → ``{"calls": [...]}``
    newest first (``store.database.summary``). 400 for a malformed parameter."""
    records = _records(request)
    if isinstance(records, web.Response):
        return records
    query = request.query
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
        before, since = _time(query.get("before")), _time(query.get("since"))
    except ValueError:
        return web.json_response({"error": "limit is a whole number; before and since are ISO 8601 times"},
                                 status=400)
    if not 1 <= limit <= MAX_LIMIT:
        return web.json_response({"error": f"limit is 1 to {MAX_LIMIT}"}, status=400)
    key = None
    if query.get("caller"):
        number = to_e164(query["caller"], request.app[CONFIG].default_region)
        if number is None:
            return web.json_response({"error": "caller is a phone number (E.164: +14155550100)"}, status=400)
        key = records.db.key_of(number)
    calls = await _read(records.db.list_calls(limit, before, key, since), "GET /api/calls")
    return calls if isinstance(calls, web.Response) else web.json_response({"calls": calls})


async def get_call(request: web.Request) -> web.Response:
    """``GET /api/calls/<call_sid>`` → the whole record: the list's fields and ``stream_sid``, ``group``,
    ``voice_api``, ``model``, ``turns``, ``tools``, ``key_presses``, ``barge_ins``, ``rollovers``, ``usage``,
    ``latency``. 404 for a call not recorded."""
    records = _records(request)
    if isinstance(records, web.Response):
        return records
    record = await _read(records.db.get_call(request.match_info["call_sid"][:128]), "GET /api/calls/<call_sid>")
    if isinstance(record, web.Response):
        return record
    if record is None:
        return web.json_response({"error": "no such call in the records"}, status=404)
    return web.json_response(record)


async def _read(read: Awaitable[T], what: str) -> T | web.Response:
    """What ``read`` returns, under ``READ_DEADLINE_S``; a 503 answer when the database fails or does not answer
    (logged as ``what``)."""
    try:
        async with asyncio.timeout(READ_DEADLINE_S):
            return await read
    except Exception as exc:  # the database's, or the deadline
        logger.warning("%s failed: %s", what, describe(exc)[:200])
        return web.json_response({"error": "the records' database did not answer"}, status=503)


def _time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time (``2026-12-06``, ``2026-12-06T10:00:00Z``), UTC when it names no offset. Raises
    ValueError."""
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment

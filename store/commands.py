"""The records from ``python relay.py``: the supervisor's migration before its workers start, and
``python relay.py calls`` (the last calls as a table in the terminal, read from ``DATABASE_URL``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from config import Config
from envreader import to_e164
from redact import describe
from store.database import Database
from store.records import STARTUP_DEADLINE_S

logger = logging.getLogger("relay.records")
T = TypeVar("T")

COLUMNS = (("started (UTC)", 19), ("network", 7), ("dir", 3), ("caller", 13), ("duration", 8), ("turns", 5),
           ("cost $", 7), ("first word", 10), ("p50 ms", 6), ("ended", 24), ("call_sid", 34))


def migrate_first(config: Config) -> None:
    """Apply the records' migrations once (``WORKERS`` > 1: before the workers start); a failure is logged, and
    each worker then tries on its own."""
    if config.database_url is None:
        return
    try:
        asyncio.run(_migrated(config, _nothing))
    except Exception as exc:  # the driver's: the workers try again
        logger.warning("records: migrations not applied before the workers started (%s)", describe(exc)[:200])


def print_calls(config: Config, limit: int, caller: str | None, out: TextIO = sys.stdout) -> int:
    """``python relay.py calls``: the last ``limit`` calls (of ``caller`` only, when given), newest first, as a
    table. Exit status: 0, 1 when the records are off or cannot be read, 2 for a malformed number."""
    if config.database_url is None:
        print("relay: the records are off (RECORDS=off)", file=sys.stderr)
        return 1
    number = to_e164(caller, config.default_region) if caller else None
    if caller and number is None:
        print(f"relay: {caller!r} is not a phone number (E.164: +14155550100)", file=sys.stderr)
        return 2

    async def read(db: Database) -> list[dict[str, Any]]:
        return await db.list_calls(limit, caller_key=db.key_of(number) if number else None)

    try:
        calls = asyncio.run(_migrated(config, read))
    except Exception as exc:  # the driver's
        print(f"relay: the records could not be read ({describe(exc)[:200]})", file=sys.stderr)
        return 1
    print("  ".join(name.ljust(width) for name, width in COLUMNS), file=out)
    for call in calls:
        print("  ".join(str(value).ljust(width)[:width] for value, (_, width) in zip(row(call), COLUMNS, strict=True)),
              file=out)
    if not calls:
        print("(no calls recorded)", file=out)
    return 0


async def _migrated(config: Config, then: Callable[[Database], Awaitable[T]]) -> T:
    """Open ``DATABASE_URL``, migrate it and run ``then`` on it, all within ``STARTUP_DEADLINE_S``; closed after.
    Raises what the driver raises, or TimeoutError."""
    db = Database(config.database_url or "", config.openai_api_key.encode())
    try:
        async with asyncio.timeout(STARTUP_DEADLINE_S):
            await db.migrate()
            return await then(db)
    finally:
        await db.close()


async def _nothing(_db: Database) -> None:
    return None


def row(call: dict[str, Any]) -> tuple[object, ...]:
    """One call's cells (``COLUMNS``)."""
    latency = call["latency_ms"]
    return (
        (call["started_at"] or "")[:19].replace("T", " "), call["network"], call["direction"][:3], call["caller"],
        _or_dash(call["duration_s"], "{:.1f} s"), call["turns_count"], _or_dash(call["cost_usd"], "{:.4f}"),
        _or_dash(latency["first_word"], "{:.0f} ms"), _or_dash(latency["p50"], "{:.0f}"),
        call["end_reason"] or "(in progress)", call["call_sid"],
    )


def _or_dash(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)

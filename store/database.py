"""The records' database: one code path for SQLite and PostgreSQL (SQLAlchemy Core 2 async, ``aiosqlite`` and
``asyncpg``), its migrations applied at startup (Alembic), and every statement the relay runs on it.

Times are UTC, timezone-aware on the way in and out (SQLite stores them as text without an offset). Numbers
are stored as ``caller`` (masked as in the logs, or whole with ``RECORD_NUMBERS=full``) and looked up by
``caller_key``, a keyed hash of the E.164 number, so a search by number works either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from store.schema import calls, sms_messages, stream_nonces

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
STATEMENT_TIMEOUT_S = 5.0
"""How long one connection attempt or statement may take before the driver gives up."""
LIST_COLUMNS = (calls.c.call_sid, calls.c.network, calls.c.direction, calls.c.caller, calls.c.started_at,
                calls.c.ended_at, calls.c.duration_s, calls.c.end_reason, calls.c.cost_usd, calls.c.turns_count,
                calls.c.first_word_ms, calls.c.p50_ms, calls.c.p95_ms)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a ``DATABASE_URL``: ``sqlite:///relay.db`` (a file, relative to the working
    directory; ``sqlite:////var/lib/relay/relay.db`` absolute), ``postgres://`` or ``postgresql://`` (as Heroku
    and Railway set it; ``sslmode`` becomes asyncpg's ``ssl``).

    Raises:
        ValueError: not a URL, or neither engine.
    """
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise ValueError("DATABASE_URL is not a URL (sqlite:///relay.db or postgresql://user:pass@host/db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("DATABASE_URL: SQLite needs a file (sqlite:///relay.db); workers could not share memory")
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgres", "postgresql"):
        query = dict(parsed.query)
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        return parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(hide_password=False)
    raise ValueError(f"DATABASE_URL: {backend!r} is not supported (sqlite:/// or postgresql://)")


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """``moment`` as an aware UTC time (SQLite gives them back without their offset)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


class Database:
    """The records' engine and statements.

    Args:
        url: a ``DATABASE_URL`` (``engine_url``).
        key: the secret ``caller_key`` is keyed with (every worker and host of a deployment must share it).

    Raises:
        ValueError: ``url`` is not one ``engine_url`` accepts.
    """

    def __init__(self, url: str, key: bytes) -> None:
        target = engine_url(url)
        self.sqlite = target.startswith("sqlite")
        connect_args: dict[str, Any] = (
            {"timeout": STATEMENT_TIMEOUT_S} if self.sqlite
            else {"timeout": STATEMENT_TIMEOUT_S, "command_timeout": STATEMENT_TIMEOUT_S}
        )
        # SQLite takes one writer at a time, and each aiosqlite connection is a thread of its own (with its own
        # malloc arena): two connections. PostgreSQL's asyncpg connections are cheap: five, and five more at a burst.
        pool = {"pool_size": 2, "max_overflow": 0} if self.sqlite else {"pool_size": 5, "max_overflow": 5}
        # hide_parameters: a failed statement's message (logged) never carries a caller's number or words.
        self.engine: AsyncEngine = create_async_engine(target, connect_args=connect_args, **pool,
                                                       pool_timeout=STATEMENT_TIMEOUT_S, pool_pre_ping=not self.sqlite,
                                                       hide_parameters=True)
        if self.sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._key = hashlib.sha256(b"relay caller key v1\0" + key).digest()

    def key_of(self, number: str) -> str:
        """The lookup key of an E.164 number (hex, 32 characters)."""
        return hmac.new(self._key, number.encode(), hashlib.sha256).hexdigest()[:32]

    async def migrate(self) -> None:
        """Apply every migration not yet applied (none when the schema is current). Raises what the driver
        raises when the database cannot be reached."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    async def insert_call(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(insert(calls).values(**row))

    async def finish_call(self, record_id: str, values: dict[str, Any], start: dict[str, Any]) -> None:
        """Complete a call's record with ``values``; when its start was never written (dropped, or the database
        was down then), write it whole from ``start`` (the start's row)."""
        async with self.engine.begin() as connection:
            done = await connection.execute(update(calls).where(calls.c.record_id == record_id).values(**values))
            if done.rowcount == 0:
                await connection.execute(insert(calls).values(**{**start, **values}))

    async def insert_sms(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(insert(sms_messages).values(**row))

    async def spend_nonce(self, nonce: str, expires_at: dt.datetime) -> bool:
        """Spend a stream token's nonce: True the first time, False when any worker spent it before."""
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(stream_nonces).values(nonce=nonce, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def delete_before(self, records_cutoff: dt.datetime, now: dt.datetime) -> int:
        """Delete calls and texts older than ``records_cutoff`` and nonces expired at ``now``; the rows gone."""
        async with self.engine.begin() as connection:
            gone = (await connection.execute(delete(calls).where(calls.c.started_at < records_cutoff))).rowcount
            gone += (await connection.execute(
                delete(sms_messages).where(sms_messages.c.at < records_cutoff))).rowcount
            await connection.execute(delete(stream_nonces).where(stream_nonces.c.expires_at < now))
        return int(gone or 0)

    async def list_calls(self, limit: int, before: dt.datetime | None = None, caller_key: str | None = None,
                         since: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Calls newest first: at most ``limit``, started before ``before`` and at or after ``since``, of one
        caller (``caller_key``) when given."""
        query = select(*LIST_COLUMNS).order_by(calls.c.started_at.desc()).limit(limit)
        if before is not None:
            query = query.where(calls.c.started_at < before)
        if since is not None:
            query = query.where(calls.c.started_at >= since)
        if caller_key is not None:
            query = query.where(calls.c.caller_key == caller_key)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [summary(row) for row in rows]

    async def get_call(self, call_sid: str) -> dict[str, Any] | None:
        """The whole record of ``call_sid`` (its latest, should a network reuse an id), or None."""
        query = select(calls).where(calls.c.call_sid == call_sid).order_by(calls.c.started_at.desc()).limit(1)
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            return None
        return {**summary(row), "stream_sid": row["stream_sid"], "group": row["caller_group"],
                "voice_api": row["voice_api"], "model": row["model"], **(row["detail"] or {})}

    async def spent_since(self, since: dt.datetime) -> float:
        """US dollars the calls started since ``since`` cost (those priced)."""
        query = select(func.coalesce(func.sum(calls.c.cost_usd), 0.0)).where(calls.c.started_at >= since)
        async with self.engine.connect() as connection:
            return float((await connection.execute(query)).scalar_one())

    async def recent_texts(self, number_key: str, limit: int) -> list[dict[str, Any]]:
        """The texts to and from one number, newest first: ``at``, ``direction``, ``body``."""
        query = (select(sms_messages.c.at, sms_messages.c.direction, sms_messages.c.body)
                 .where(sms_messages.c.number_key == number_key).order_by(sms_messages.c.at.desc()).limit(limit))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [{"at": utc(row["at"]), "direction": row["direction"], "body": row["body"]} for row in rows]

    async def recent_details(self, caller_key: str, limit: int) -> list[dict[str, Any]]:
        """One caller's ended calls, newest first: ``started_at`` and ``turns``."""
        query = (select(calls.c.started_at, calls.c.detail)
                 .where(calls.c.caller_key == caller_key, calls.c.ended_at.is_not(None))
                 .order_by(calls.c.started_at.desc()).limit(limit))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [{"started_at": utc(row["started_at"]), "turns": (row["detail"] or {}).get("turns", [])}
                for row in rows]


def summary(row: Any) -> dict[str, Any]:
    """A call's row as ``GET /api/calls`` lists it (times ISO 8601 UTC)."""
    started, ended = utc(row["started_at"]), utc(row["ended_at"])
    return {
        "call_sid": row["call_sid"], "network": row["network"], "direction": row["direction"],
        "caller": row["caller"], "started_at": started.isoformat() if started else None,
        "ended_at": ended.isoformat() if ended else None, "duration_s": row["duration_s"],
        "end_reason": row["end_reason"], "cost_usd": row["cost_usd"], "turns_count": row["turns_count"],
        "latency_ms": {"p50": row["p50_ms"], "p95": row["p95_ms"], "first_word": row["first_word_ms"]},
    }


def _upgrade(connection: Connection) -> None:
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    settings.attributes["connection"] = connection
    command.upgrade(settings, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL, so several workers share one file (readers never wait for the writer); a writer waits up to
    ``STATEMENT_TIMEOUT_S`` for another's lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(STATEMENT_TIMEOUT_S * 1000)}")
    cursor.close()

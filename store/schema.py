"""The records' tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL. The migrations in
``store/migrations/versions`` create them; a change here comes with a new migration."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("call_sid", String(128), nullable=False, index=True),
    Column("stream_sid", String(128), nullable=False),
    Column("network", String(16), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("caller", String(32), nullable=False),
    Column("caller_key", String(64), nullable=False),
    Column("caller_group", String(16), nullable=False),
    Column("voice_api", String(16), nullable=False),
    Column("model", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Column("end_reason", String(200)),
    Column("turns_count", Integer, nullable=False, default=0),
    Column("cost_usd", Float),
    Column("first_word_ms", Float),
    Column("p50_ms", Float),
    Column("p95_ms", Float),
    Column("detail", JSON),
    Index("ix_calls_started_at", "started_at"),
    Index("ix_calls_caller_key_started_at", "caller_key", "started_at"),
)
"""One row per call: written at its start, completed at its end (``detail``: turns, tools, key presses,
barge-ins, rollovers, usage, each answer's wait)."""

sms_messages = Table(
    "sms_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("number", String(32), nullable=False),
    Column("number_key", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_sms_number_key_at", "number_key", "at"),
    Index("ix_sms_at", "at"),
)
"""One row per text, in (``in``) or out (``out``), with the other party's number."""

stream_nonces = Table(
    "stream_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)
"""Stream tokens spent: one atomic insert each, so a token is single-use across every worker sharing the
database (``ops.tokens``)."""

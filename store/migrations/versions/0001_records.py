"""The records: calls, texts and spent stream tokens.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("record_id", sa.String(32), primary_key=True),
        sa.Column("call_sid", sa.String(128), nullable=False),
        sa.Column("stream_sid", sa.String(128), nullable=False),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("caller", sa.String(32), nullable=False),
        sa.Column("caller_key", sa.String(64), nullable=False),
        sa.Column("caller_group", sa.String(16), nullable=False),
        sa.Column("voice_api", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float),
        sa.Column("end_reason", sa.String(200)),
        sa.Column("turns_count", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("first_word_ms", sa.Float),
        sa.Column("p50_ms", sa.Float),
        sa.Column("p95_ms", sa.Float),
        sa.Column("detail", sa.JSON),
    )
    op.create_index("ix_calls_call_sid", "calls", ["call_sid"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_caller_key_started_at", "calls", ["caller_key", "started_at"])
    op.create_table(
        "sms_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("number_key", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_sms_number_key_at", "sms_messages", ["number_key", "at"])
    op.create_index("ix_sms_at", "sms_messages", ["at"])
    op.create_table(
        "stream_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_stream_nonces_expires_at", "stream_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_table("stream_nonces")
    op.drop_table("sms_messages")
    op.drop_table("calls")

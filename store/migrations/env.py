"""Alembic's environment for the records: run by ``store.database.migrate`` on a connection it opens (the
relay applies every migration at startup), or by ``alembic`` with ``-x url=...`` for a maintainer writing a new
migration (``alembic -c store/alembic.ini revision -m "..."``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from store.schema import metadata

connection = context.config.attributes.get("connection")


def run(bound: object) -> None:
    context.configure(connection=bound, target_metadata=metadata, render_as_batch=True)  # type: ignore[arg-type]
    with context.begin_transaction():
        if bound.dialect.name == "postgresql":  # type: ignore[attr-defined]
            # Several hosts may start at once: one migrates, the others wait, then find nothing to do.
            bound.execute(text("SELECT pg_advisory_xact_lock(7140110002)"))  # type: ignore[attr-defined]
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///relay.db")
    with create_engine(url).connect() as opened:
        run(opened)

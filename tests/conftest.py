"""Fixtures for every test: an exit stack, an HTTP client, the no-secret-in-logs check, and ``database_url``
(the records' suite runs once on SQLite and once on PostgreSQL).

Shared helpers live in ``support.py``; tests import them from there, never from each other."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pytest_postgresql import factories
from support import SECRET_KEY

POSTGRES = os.environ.get("RELAY_TEST_DATABASE_URL", "")
"""A PostgreSQL server for the tests (``.ci/postgres`` starts one and prints this); each test gets a fresh
database on it (pytest-postgresql). Without it the PostgreSQL half is skipped, except in CI, where it fails."""

if POSTGRES:
    _server = urlsplit(POSTGRES)
    postgresql_noproc = factories.postgresql_noproc(host=_server.hostname, port=_server.port or 5432,
                                                    user=_server.username or "postgres", password=_server.password,
                                                    dbname="relay_tests")
    postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
async def http(stack: contextlib.AsyncExitStack) -> aiohttp.ClientSession:
    return await stack.enter_async_context(aiohttp.ClientSession())


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test: the fake API key never reaches a log record."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert SECRET_KEY not in record.getMessage()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``DATABASE_URL`` for an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    if not POSTGRES:
        if os.environ.get("CI"):
            pytest.fail("RELAY_TEST_DATABASE_URL is not set: .ci/run starts PostgreSQL with .ci/postgres")
        pytest.skip("no PostgreSQL: export RELAY_TEST_DATABASE_URL=$(.ci/postgres)")
    info = request.getfixturevalue("postgresql").info
    password = f":{info.password}" if info.password else ""
    return f"postgresql://{info.user}{password}@{info.host}:{info.port}/{info.dbname}"

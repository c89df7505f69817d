"""Fixtures for every test: an exit stack, an HTTP client, and the no-secret-in-logs check.

Shared helpers live in ``support.py``; tests import them from there, never from each other."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import SECRET_KEY


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

"""Shared test helpers: the relay and the stand-ins on loopback, and a raw Twilio-like leg."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import relay  # noqa: E402
import simulate  # noqa: E402

CALLER = "+14155550100"
SECRET_KEY = "sk-test-" + "k" * 24
"""The fake OpenAI key the tests configure; it must never appear in a log."""


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` every 5 ms until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def make_config(realtime_url: str = "ws://127.0.0.1:9/v1/realtime", **overrides: Any) -> relay.Config:
    """A relay Config for tests: one primary caller, server VAD, the fake key."""
    values: dict[str, Any] = {
        "openai_api_key": SECRET_KEY,
        "realtime_url": realtime_url,
        "primary_numbers": (CALLER,),
        "primary_first_name": "Jordan",
        "vad_type": relay.VadType.SERVER,
        "vad_silence_duration_ms": 700,
    }
    values.update(overrides)
    return relay.Config(**values)


class TwilioLeg:
    """A raw Media Streams client: what Twilio sends and receives, frame by frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.seq = 0

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base_url: str, path: str = "/media-stream",
                   headers: dict[str, str] | None = None) -> TwilioLeg:
        ws = await http.ws_connect(base_url.replace("http://", "ws://") + path, headers=headers or {})
        return cls(ws)

    async def send(self, event: dict[str, Any]) -> None:
        self.seq += 1
        await self.ws.send_str(json.dumps({"sequenceNumber": str(self.seq), **event}))

    async def start(self, caller: str = CALLER) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({
            "event": "start", "streamSid": self.stream_sid,
            "start": {"streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
                      "tracks": ["inbound"], "customParameters": {"caller_number": caller},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })

    async def media(self, ulaw: bytes) -> None:
        await self.send({"event": "media", "streamSid": self.stream_sid,
                         "media": {"track": "inbound", "chunk": str(self.seq), "timestamp": "0",
                                   "payload": base64.b64encode(ulaw).decode()}})

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid,
                         "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})

    async def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next JSON message from the relay, or None when the relay closed the socket."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return None
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the relay closes; returns the close code."""
        async with asyncio.timeout(timeout):
            while await self.recv(timeout) is not None:
                pass
        return self.ws.close_code


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


async def start_standin(stack: contextlib.AsyncExitStack, script: Any = None,
                        seed: int | None = 1) -> tuple[simulate.RealtimeStandIn, str]:
    return await stack.enter_async_context(simulate.realtime_standin(script, seed=seed))


async def start_relay(stack: contextlib.AsyncExitStack, config: relay.Config) -> str:
    return await stack.enter_async_context(relay.serving(config))

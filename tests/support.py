"""Helpers shared by the tests: the relay and the stand-ins on loopback, a raw Twilio-like leg,
a real SMTP server, and polling with a deadline. (Fixtures are in conftest.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import audio
import relay
import simulate
from config import Config
from mailserver import SmtpSecurity, SmtpServer
from ops.tokens import StreamTokens
from phones import plivo as phone_plivo
from standins import openai_service as standin_openai
from standins.phone_dialects import Answer, Plivo, Telnyx, Twilio

ROOT = Path(__file__).resolve().parent.parent
CALLER = simulate.DEFAULT_CALLER
SECRET_KEY = "sk-test-" + "k" * 24
"""The fake OpenAI key the tests configure; it must never appear in a log."""


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (a function, or a coroutine function) every 5 ms until truthy; fail the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def make_config(realtime_url: str = "ws://127.0.0.1:9/v1/realtime", **overrides: Any) -> Config:
    """A relay Config for tests: ``simulate.relay_config`` (one primary caller, server VAD) with the
    fake key."""
    return simulate.relay_config(realtime_url, **{"openai_api_key": SECRET_KEY, **overrides})


def speech(name: str) -> bytes:
    """An utterance from ``assets/`` as 8 kHz µ-law."""
    return audio.to_ulaw_8k(audio.load_wav(ROOT / "assets" / f"{name}.wav"))


class RawLeg:
    """A raw media-stream client: what Twilio (or Plivo) sends and receives, frame by frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, network: Twilio | Plivo | Telnyx) -> None:
        self.ws = ws
        self.network = network
        self.stream_sid = network.messages.stream_sid if isinstance(network, Twilio) else network.messages.stream_id

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base_url: str, path: str | None = None,
                   headers: dict[str, str] | None = None, network: Twilio | Plivo | Telnyx | None = None,
                   auth_token: str | None = None, compress: int = 0) -> RawLeg:
        """Open the network's media websocket (signed with ``auth_token`` when given; offering
        permessage-deflate with ``compress``, a zlib window size such as 15)."""
        network = network or Twilio()
        path = path or {"twilio": "/media-stream", "plivo": "/plivo/media-stream",
                        "telnyx": "/telnyx/media-stream"}[network.name]
        url = base_url.replace("http://", "ws://") + path
        if auth_token:
            headers = {**network.sign(auth_token, "GET", network.handshake_url(url), {}), **(headers or {})}
        return cls(await http.ws_connect(url, headers=headers or {}, compress=compress), network)

    async def send(self, event: dict[str, Any]) -> None:
        """Send any JSON object as it is (malformed frames included)."""
        await self.ws.send_str(json.dumps(event))

    @property
    def call_sid(self) -> str:
        return self.network.messages.call_id if isinstance(self.network, Plivo) else self.network.messages.call_sid

    async def start(self, caller: str = CALLER, key: str = SECRET_KEY, parameters: dict[str, str] | None = None,
                    ) -> None:
        """Send the start with the stream parameters a webhook would have issued for this call (a stream
        token minted with the relay's key ``key``), or with ``parameters`` as given."""
        if parameters is None:
            parameters = StreamTokens(key.encode()).issue(caller, self.call_sid)
        if isinstance(self.network, Telnyx) and "call_id" not in parameters:
            parameters = {**parameters, "call_id": self.call_sid}  # as the relay's TeXML carries it
        params: Any = parameters
        if isinstance(self.network, Plivo):
            params = ",".join(f"{phone_plivo.HEADERS[k]}={v.lstrip('+')}" for k, v in parameters.items())
        for message in self.network.opening(Answer([], "", params)):
            await self.ws.send_str(message)

    async def media(self, ulaw: bytes) -> None:
        out = self.network.media(ulaw, 0)
        for message in [out] if isinstance(out, str) else out:
            await self.ws.send_str(message)

    async def mark(self, name: str) -> None:
        """Report a mark (checkpoint) as played."""
        await self.ws.send_str(self.network.played(name))

    async def dtmf(self, digit: str) -> None:
        await self.ws.send_str(self.network.dtmf(digit))

    async def stop(self) -> None:
        goodbye = self.network.goodbye()
        if goodbye is None:
            await self.ws.close()
        else:
            await self.ws.send_str(goodbye)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next JSON message from the relay, or None when the relay closed the socket."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return None
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def recv_kind(self, timeout: float = 5.0) -> tuple[str, str] | None:
        """The next relay message as ``("media", payload)``, ``("mark", name)`` or ``("clear", "")``."""
        event = await self.recv(timeout)
        return None if event is None else self.network.read(event)

    async def say(self, name: str) -> None:
        """Speak an utterance from ``assets/`` and then a second of silence, as fast as the socket takes it
        (the stand-in's VAD reads the audio, not the clock)."""
        for frame in audio.frames(speech(name) + audio.ULAW_SILENCE * 8000):
            await self.media(frame)

    async def hear(self, nbytes: int, timeout: float = 10.0) -> None:
        """Receive ``nbytes`` of audio without echoing a mark, as a phone still playing it: the relay's
        clock says how much has been heard."""
        heard = 0
        while heard < nbytes:
            event = await self.recv(timeout)
            assert event is not None, "the relay closed the call early"
            kind, value = self.network.read(event)
            heard += len(base64.b64decode(value)) if kind == "media" else 0

    async def listen(self, until_bytes: int, timeout: float = 10.0) -> bytes:
        """Hear audio, echoing marks as a phone does, until ``until_bytes`` arrived and the mark
        after them; fails the test if the relay closes first."""
        heard = bytearray()
        while True:
            event = await self.recv(timeout)
            assert event is not None, "the relay closed the call early"
            kind, value = self.network.read(event)
            if kind == "media":
                heard += base64.b64decode(value)
            elif kind == "mark":
                await self.mark(value)
                if len(heard) >= until_bytes:
                    return bytes(heard)

    async def until_closed(self, timeout: float = 15.0) -> tuple[bytes, int | None]:
        """Everything heard (marks echoed) until the relay closes the call, and the close code."""
        heard = bytearray()
        async with asyncio.timeout(timeout):
            while (event := await self.recv(timeout)) is not None:
                kind, value = self.network.read(event)
                if kind == "media":
                    heard += base64.b64decode(value)
                elif kind == "mark":
                    await self.mark(value)
        return bytes(heard), self.ws.close_code

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the relay closes; returns the close code."""
        async with asyncio.timeout(timeout):
            while await self.recv(timeout) is not None:
                pass
        return self.ws.close_code


async def start_standin(stack: contextlib.AsyncExitStack, script: Any = None,
                        seed: int | None = 1) -> tuple[standin_openai.RealtimeStandIn, str]:
    return await stack.enter_async_context(standin_openai.realtime_standin(script, seed=seed))


async def start_relay(stack: contextlib.AsyncExitStack, config: Config) -> str:
    return await stack.enter_async_context(relay.serving(config))


@dataclass
class RelayProcess:
    """``python relay.py`` running as a user runs it; ``output`` is its stdout and stderr, once it has exited."""

    process: asyncio.subprocess.Process
    base_url: str
    output: str = field(default="")


async def health(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    """``GET /health``: the status code and the JSON body."""
    async with http.get(base + "/health") as resp:
        return resp.status, await resp.json()


def process_env(**variables: str) -> dict[str, str]:
    """A clean environment for a relay process: PATH, HOME and LANG from this one, no records (unless
    ``variables`` turn them on), plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    env["RECORDS"] = "off"
    env.update(variables)
    return env


async def spawn_relay(env: dict[str, str], preexec_fn: Callable[[], None] | None = None) -> asyncio.subprocess.Process:
    """``python relay.py`` with ``env`` (working directory ``tests/``, so no ``.env`` is read), its
    stdout and stderr in one pipe; ``preexec_fn`` runs in the child before it starts (limits)."""
    return await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "relay.py"), env=env, cwd=ROOT / "tests",
                                                preexec_fn=preexec_fn, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)


async def relay_output(env: dict[str, str], timeout: float = 40.0) -> tuple[int | None, str]:
    """Run ``python relay.py`` until it exits by itself (a startup failure); its exit code and output."""
    process = await spawn_relay(env)
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, output.decode()


@contextlib.asynccontextmanager
async def relay_process(http: aiohttp.ClientSession, env: dict[str, str],
                        preexec_fn: Callable[[], None] | None = None) -> AsyncIterator[RelayProcess]:
    """Start ``python relay.py`` (``spawn_relay``) with ``env`` (which must set PORT), wait until
    ``/healthz`` answers, and on exit make sure it has ended (SIGKILL if still running) and read its
    output."""
    process = await spawn_relay(env, preexec_fn)
    running = RelayProcess(process, f"http://127.0.0.1:{env['PORT']}")
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(running.base_url + "/healthz") as resp:
                    if resp.status == 200:
                        break
            assert process.returncode is None, "relay exited: " + (await process.stdout.read()).decode()
            assert time.monotonic() < deadline, "relay did not start"
            await asyncio.sleep(0.1)
        yield running
    finally:
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout:  # bounded: an orphaned child could hold the pipe open
            with contextlib.suppress(TimeoutError):
                running.output = (await asyncio.wait_for(process.stdout.read(), 10)).decode()


# --- Email over a real SMTP server on loopback --------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts (optionally after a delay)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.logins: list[tuple[str, str]] = []
        self.received = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        await asyncio.sleep(self.delay_s)  # runs on the server's own thread and loop
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        self.received.set()
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            return AuthResult(success=auth_data.password == b"app-password")
        return AuthResult(success=False)


@contextlib.contextmanager
def smtp_server(delay_s: float = 0.0) -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on loopback with AUTH LOGIN/PLAIN over plain TCP."""
    mailbox = Mailbox(delay_s)
    port = simulate.free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, authenticator=mailbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def smtp_settings(port: int, password: str = "app-password") -> SmtpServer:
    return SmtpServer("127.0.0.1", port, SmtpSecurity.NONE, "assistant@example.com", "assistant", password)

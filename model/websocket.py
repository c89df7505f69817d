"""The voice model's websocket on aiohttp's client: one connection pool per process, JSON text frames in and out.

A model session (``model.realtime.RealtimeSession``) speaks its protocol through its wire module; this
module only moves its frames, and finds a service that has stopped listening. On aiohttp's client the
frame reader and masking are compiled, a send is one call without a context manager, and text frames
can be sent from and read into bytes, so ``orjson`` encodes and parses them without a UTF-8 round
trip (the per-message cost is what bounds calls per core: ``benchmarks/load.py``).

Source: OpenAI Realtime API "WebSocket" guide (``wss://api.openai.com/v1/realtime?model=...``,
``Authorization: Bearer``); RFC 6455 (ping, pong, close codes).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import ClientWebSocketResponse, ServerTimeoutError, WSMsgType

from model.session import ModelUnavailable, SessionClosed
from redact import describe

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**24
"""Largest frame accepted from the service (16 MiB; an audio delta is a few KB)."""
HEARTBEAT_S = 5.0
"""A ping goes out this often, whatever the service is sending; a pong must come back within half of
it, or the socket is dead (closed 1006). aiohttp's own heartbeat pings only after a quiet spell, so a
service that keeps streaming audio but no longer reads would count as alive for good: this one finds
it within ~8 s, hung or deaf, instead of leaving the caller on a dead line."""
CLOSE_TIMEOUT_S = 2.0
"""How long a closing handshake with the service may take (a hung service never answers it)."""


class RealtimeSocket:
    """One open Realtime websocket.

    Read it with ``receive`` (each server event as UTF-8 JSON bytes, None once closed) and write
    with ``send`` (one client event as UTF-8 JSON bytes). After the end, ``close_code`` and
    ``close_reason`` say how it ended (1006 for a dropped connection or a missed pong).
    """

    __slots__ = ("_binary_seen", "_pinger", "_pong", "_ws", "close_reason")

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self._ws = ws
        self.close_reason = ""
        """The service's close reason (RFC 6455 close frame), empty when it sent none."""
        self._binary_seen = False
        self._pong = asyncio.Event()
        self._pinger = asyncio.create_task(self._keep_alive(), name="realtime ping")

    async def receive(self) -> bytes | None:
        """The next text frame's bytes, or None once the socket has closed (the service closed it,
        the connection dropped, a pong was missed or a frame was over ``MAX_MESSAGE_BYTES``).
        Binary frames are not part of the protocol: skipped, with one warning per socket."""
        ws = self._ws
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                data: bytes = msg.data
                return data
            if kind is WSMsgType.PONG:
                self._pong.set()
                continue
            if kind is WSMsgType.PING:
                await self._ws.pong(msg.data)
                continue
            if kind is WSMsgType.BINARY:
                if not self._binary_seen:
                    self._binary_seen = True
                    logger.warning("binary frame from the Realtime service ignored")
                continue
            if kind is WSMsgType.CLOSE and isinstance(msg.extra, str):
                self.close_reason = msg.extra
            elif kind is WSMsgType.ERROR and not self.close_reason:
                self.close_reason = f"{type(msg.data).__name__}: {msg.data}"
            return None

    async def send(self, data: bytes) -> None:
        """Send one client event (UTF-8 JSON) as a text frame; waits while the socket's send buffer
        is full. Raises SessionClosed once the socket is closing or closed."""
        try:
            await self._ws.send_frame(data, WSMsgType.TEXT)
        except ConnectionError as exc:  # aiohttp: ClientConnectionResetError
            raise SessionClosed(str(exc)) from None

    async def send_event(self, event: dict[str, Any]) -> None:
        """Send one client event (a JSON object); on a socket that has just closed it is dropped (the
        session's reader sees the end)."""
        try:
            await self.send(orjson.dumps(event))
        except SessionClosed:
            pass

    async def close(self) -> None:
        """Close with 1000, waiting up to ``CLOSE_TIMEOUT_S`` for the service's close frame."""
        self._pinger.cancel()
        await asyncio.gather(self._pinger, return_exceptions=True)
        await self._ws.close()

    async def _keep_alive(self) -> None:
        """Every ``HEARTBEAT_S``, a ping; no pong within half of it (the service is hung, or no longer
        reads what it is sent) ends the socket as aiohttp's own heartbeat does: closed 1006, and a
        ``receive`` under way returns None. The pong is seen by ``receive``, which the session's reader
        is always in between events."""
        ws = self._ws
        while not ws.closed:
            await asyncio.sleep(HEARTBEAT_S)
            self._pong.clear()
            try:
                async with asyncio.timeout(HEARTBEAT_S / 2):
                    await ws.ping()
                    await self._pong.wait()
            except TimeoutError:
                self.close_reason = f"no pong within {HEARTBEAT_S / 2:g} s"
                # aiohttp's heartbeat failure path (client_ws.py): close code 1006, the connection
                # closed, a waiting receive() handed an ERROR. No public call ends a socket this way.
                ws._handle_ping_pong_exception(ServerTimeoutError(self.close_reason))
                return
            except ConnectionError:
                return

    @property
    def closed(self) -> bool:
        """The socket has closed (or is closing): nothing more can be sent. ``close_code`` alone does not
        say so: aiohttp sets it to 1006 when a ``receive`` is cancelled, the socket still open."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code once closed (the service's, or 1006 for a dropped connection)."""
        return self._ws.close_code


class RealtimeClient:
    """Opens Realtime websockets for every call of this process over one aiohttp session: one
    DNS cache and TLS setup, no limit on concurrent sockets (``MAX_CALLS`` bounds the calls), no
    compression (it would cost memory and CPU on every frame). Proxies come from the environment
    (``env_proxy``), as for the OpenAI SDK. Close it at shutdown."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def connect(self, url: str, api_key: str, timeout_s: float) -> RealtimeSocket:
        """Open ``url`` with ``Authorization: Bearer api_key``.

        Raises:
            OSError: the service could not be reached (aiohttp's connector errors are OSErrors).
            aiohttp.ClientError: the handshake was refused (``WSServerHandshakeError`` with the
                HTTP status) or the URL is invalid.
            TimeoutError: no open socket within ``timeout_s``.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),  # each connect has its own deadline
                # Not trust_env: it also applies ~/.netrc, whose credentials aiohttp refuses beside our
                # Authorization header; the proxy is read by env_proxy instead.
                trust_env=False,
            )
        async with asyncio.timeout(timeout_s):
            ws = await self._session.ws_connect(
                url,
                headers={"Authorization": f"Bearer {api_key}"},
                max_msg_size=MAX_MESSAGE_BYTES,
                compress=0,
                autoping=False,  # pings and pongs are answered and awaited by RealtimeSocket
                heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                decode_text=False,
                proxy=env_proxy(url),
            )
        return RealtimeSocket(ws)

    async def open_configured(
        self,
        api: str,
        url: str,
        api_key: str,
        first: bytes,
        confirmed: Callable[[bytes], Awaitable[bool]],
        timeouts: tuple[float, float],
    ) -> RealtimeSocket:
        """Open a model session's websocket, send its configuration event ``first`` before anything else and
        read until ``confirmed`` says a frame is the confirmation (it sees every frame before it, and may raise
        ModelUnavailable for a refusal).

        Args:
            api: the voice API's name, for the messages.
            timeouts: seconds for the connection, then for the confirmation.

        Raises:
            ModelUnavailable: the service could not be reached or refused the handshake, closed, refused the
                configuration, or did not confirm in time. The socket is closed then (and when cancelled).
        """
        connect_s, configure_s = timeouts
        try:
            socket = await self.connect(url, api_key, connect_s)
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            raise ModelUnavailable(f"{api} connect failed: {describe(exc)}") from None
        done = False
        try:
            await socket.send(first)
            async with asyncio.timeout(configure_s):
                while (raw := await socket.receive()) is not None:
                    if await confirmed(raw):
                        done = True
                        return socket
        except TimeoutError:
            raise ModelUnavailable(f"{api} did not confirm the session within {configure_s:.0f}s") from None
        except SessionClosed:
            pass
        finally:
            if not done:  # refused, timed out, or the call ended meanwhile (cancelled): nothing leaks
                await socket.close()
        raise ModelUnavailable(f"{api} closed the session before confirming it code={socket.close_code}")

    async def close(self) -> None:
        """Close the connection pool (the calls' sockets are closed by the calls)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def env_proxy(url: str) -> str | None:
    """The HTTP proxy the environment names for ``url`` (``WSS_PROXY``/``HTTPS_PROXY`` for wss,
    ``WS_PROXY``/``HTTP_PROXY`` for ws, upper or lower case), or None: none set, or the host is in
    ``NO_PROXY``. Read with the standard library's ``urllib.request`` rules, as ``websockets`` did."""
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    secure = parts.scheme == "wss"
    return proxies.get("wss" if secure else "ws") or proxies.get("https" if secure else "http")


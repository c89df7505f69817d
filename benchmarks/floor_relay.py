"""The floor relay of ``benchmarks/load.py``: the least a Twilio ⇄ Realtime relay can do, in aiohttp.

It answers the voice webhook with a ``<Connect><Stream>``, opens one Realtime websocket per call
(aiohttp's client, no compression), sends ``session.update``, forwards each Twilio ``media`` as an
``input_audio_buffer.append`` and each ``response.output_audio.delta`` as a Twilio ``media`` plus a
``mark``, and ignores everything else: no playback accounting, no barge-in, no tools, no checks.
The load benchmark runs it beside ``relay.py`` so every figure is a ratio to this floor.
With ``FLOOR_FAST=1`` it runs on uvloop and encodes and parses with orjson (frames as bytes), as
``relay.py`` does: the floor of the same toolbox.

Run: ``PORT=5060 OPENAI_REALTIME_URL=ws://... [FLOOR_FAST=1] python benchmarks/floor_relay.py``
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

FAST = os.environ.get("FLOOR_FAST") == "1"
if FAST:
    import orjson
    import uvloop

    dumps: Callable[[Any], str | bytes] = orjson.dumps
    loads: Callable[[str | bytes], Any] = orjson.loads
else:
    dumps, loads = json.dumps, json.loads


async def send(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, message: str | bytes) -> None:
    if type(message) is bytes:
        await ws.send_frame(message, WSMsgType.TEXT)
    else:
        await ws.send_str(message)  # type: ignore[arg-type]

SESSION_UPDATE = dumps({"type": "session.update", "session": {
    "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}},
                                  "output": {"format": {"type": "audio/pcmu"}}}}})


async def incoming_call(request: web.Request) -> web.Response:
    host = request.host
    return web.Response(text=f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                             f'<Stream url="ws://{host}/media-stream" /></Connect></Response>',
                        content_type="text/xml")


async def media_stream(request: web.Request) -> web.WebSocketResponse:
    phone = web.WebSocketResponse(compress=False, max_msg_size=65536, decode_text=not FAST)
    await phone.prepare(request)
    http: aiohttp.ClientSession = request.app["http"]
    url = os.environ["OPENAI_REALTIME_URL"]
    stream_sid = ""
    upstream: aiohttp.ClientWebSocketResponse | None = None
    pump: asyncio.Task[None] | None = None
    marks = 0
    held: list[str | bytes] = []

    async def from_openai(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal marks
        async for msg in ws:
            event = loads(msg.data)
            if event.get("type") == "response.output_audio.delta":
                marks += 1
                await send(phone, dumps({"event": "media", "streamSid": stream_sid,
                                         "media": {"payload": event["delta"]}}))
                await send(phone, dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": str(marks)}}))

    try:
        async for msg in phone:
            event = loads(msg.data)
            kind = event.get("event")
            if kind == "media":
                append = dumps({"type": "input_audio_buffer.append", "audio": event["media"]["payload"]})
                if upstream is None:
                    held.append(append)  # before the upstream is open: held, not lost
                else:
                    await send(upstream, append)
            elif kind == "start":
                stream_sid = event["start"]["streamSid"]
                upstream = await http.ws_connect(url, headers={"Authorization": "Bearer sk-floor"}, compress=0,
                                                 decode_text=not FAST)
                await send(upstream, SESSION_UPDATE)
                await send(upstream, dumps({"type": "response.create"}))
                for append in held:
                    await send(upstream, append)
                pump = asyncio.create_task(from_openai(upstream))
            elif kind == "stop":
                break
    finally:
        if pump is not None:
            pump.cancel()
        if upstream is not None:
            await upstream.close()
    return phone


async def _http(app: web.Application):  # type: ignore[no-untyped-def]
    app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["http"].close()


def main() -> None:
    app = web.Application()
    app.cleanup_ctx.append(_http)
    app.router.add_post("/incoming-call", incoming_call)
    app.router.add_get("/media-stream", media_stream)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "5060")), print=None, access_log=None,
                loop=uvloop.new_event_loop() if FAST else None)


if __name__ == "__main__":
    main()

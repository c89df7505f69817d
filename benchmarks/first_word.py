"""Time to first word, and the relay's share of every later turn, through ``python relay.py``.

Run: python benchmarks/first_word.py [--calls 20] [--open-ms 250] [--updated-ms 150] [--first-audio-ms 450]
         [--say-s 3] [--concurrent 1,100] [--workers 1] [--voice-api realtime|live]

A Realtime stand-in (its own process) charges what the real service costs (the defaults: a websocket and
TLS open of 250 ms, ``session.updated`` 150 ms after ``session.update``, the first audio delta 450 ms after
``response.create``: OpenAI's own latency guide puts a TLS websocket to the API at a few hundred
milliseconds, and the first audio of a response at 300-600 ms), then streams one 100 ms delta every
100 ms, each stamped with its send time. Twilio callers (another process) POST the voice webhook, start
the stream ``--say-s`` later, as ``<Say>`` reading the welcome does, send 20 ms frames, and echo marks.

Printed, for ``PREWARM=off``, ``session`` and ``greeting`` in one run: the time from the phone's ``start``
to the first assistant audio frame the phone receives (p50, p95, max over ``--calls`` calls) and the
relay's CPU per call; then, with ``greeting``, the relay's own share of a later turn: from a delta leaving
the stand-in to its ``media`` frame reaching the phone, p50/p99 at each of ``--concurrent`` calls at once
(processes on one machine share ``CLOCK_MONOTONIC``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from load import TICKS, cpu_ticks, family, new_loop, pct, stop_processes, wait_port  # noqa: E402

STAMP = struct.Struct("<q")
DELTA_S = 0.100


def stamped_delta() -> str:
    """100 ms of µ-law (800 bytes, not silence) carrying its send time, base64."""
    return base64.b64encode(STAMP.pack(time.monotonic_ns()) + b"\x10" * (800 - STAMP.size)).decode()


# --- the costly Realtime stand-in --------------------------------------------------------------


class CostlyRealtime:
    """Answers like the Realtime service, charging its latencies (seconds)."""

    def __init__(self, open_s: float, updated_s: float, first_audio_s: float) -> None:
        self.open_s, self.updated_s, self.first_audio_s = open_s, updated_s, first_audio_s

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(self.open_s)  # TCP, TLS and the upgrade
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))
        tasks: list[asyncio.Task[None]] = []
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT or '"input_audio_buffer.append"' in msg.data[:40]:
                continue
            event = orjson.loads(msg.data)
            kind = event.get("type")
            if kind == "session.update":
                tasks.append(asyncio.create_task(self._later(ws, self.updated_s, {
                    "type": "session.updated", "session": event.get("session", {})})))
            elif kind == "response.create" and not any(t.get_name() == "stream" for t in tasks):
                tasks.append(asyncio.create_task(self._stream(ws), name="stream"))
        for task in tasks:
            task.cancel()
        return ws

    async def _later(self, ws: web.WebSocketResponse, delay_s: float, event: dict[str, Any]) -> None:
        await asyncio.sleep(delay_s)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(event))

    async def _stream(self, ws: web.WebSocketResponse) -> None:
        response_id, item_id = f"resp_{id(ws):x}", f"item_{id(ws):x}"
        await ws.send_str(json.dumps({"type": "response.created", "response": {
            "id": response_id, "object": "realtime.response", "status": "in_progress", "output": []}}))
        await asyncio.sleep(self.first_audio_s)
        next_at = time.monotonic()
        while not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"type": "response.output_audio.delta", "response_id": response_id,
                                              "item_id": item_id, "output_index": 0, "content_index": 0,
                                              "delta": stamped_delta()}))
            next_at += DELTA_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class CostlyLive(CostlyRealtime):
    """Answers like GPT-Live, charging the same latencies: ``session.started`` after ``session.start``, the first
    speech after the greeting's ``session.commentary.append``; the output a continuous 100 ms stream, silence
    until then."""

    async def live(self, request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(self.open_s)
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        speaking: list[float] = []  # when the speech starts
        tasks: list[asyncio.Task[None]] = []
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT or '"session.input_audio.append"' in msg.data[:40]:
                continue
            event = orjson.loads(msg.data)
            kind = event.get("type")
            if kind == "session.start":
                started = {"type": "session.started", "event_id": "sev_1", "session": {
                    "id": f"live_{id(ws):x}", "expires_at": int(time.time()) + 3600,
                    "model": event["session"]["model"], "status": "active"}}
                tasks.append(asyncio.create_task(self._later(ws, self.updated_s, started)))
                tasks.append(asyncio.create_task(self._stream_live(ws, speaking)))
            elif kind == "session.commentary.append" and not speaking:
                speaking.append(time.monotonic() + self.first_audio_s)
            elif kind == "session.close":
                closed = {"type": "session.closed", "event_id": "sev_2", "reason": "close_requested", "usage": {
                    "seconds": 1.0}, "session": {"id": f"live_{id(ws):x}", "expires_at": 0, "model": "m",
                                                 "status": "active"}}
                await ws.send_str(json.dumps(closed))
                await ws.close()
        for task in tasks:
            task.cancel()
        return ws

    async def _stream_live(self, ws: web.WebSocketResponse, speaking: list[float]) -> None:
        await asyncio.sleep(self.updated_s)
        silence = base64.b64encode(b"\xff" * 800).decode()
        next_at = time.monotonic()
        while not ws.closed:
            speech = bool(speaking) and time.monotonic() >= speaking[0]
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"type": "session.output_audio.delta",
                                              "delta": stamped_delta() if speech else silence}))
            next_at += DELTA_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def run_upstream(port: int, open_s: float, updated_s: float, first_audio_s: float) -> None:
    app = web.Application()
    app.router.add_get("/v1/realtime", CostlyRealtime(open_s, updated_s, first_audio_s).realtime)
    app.router.add_get("/v1/live/sessions", CostlyLive(open_s, updated_s, first_audio_s).live)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_loop())


# --- the callers -------------------------------------------------------------------------------


async def one_call(http: aiohttp.ClientSession, relay: str, say_s: float, listen_s: float) -> dict[str, Any]:
    """A whole call: webhook, ``say_s`` of welcome, the stream; the first word's delay and each later delta's
    relay latency (ms)."""
    from standins.phone_dialects import Twilio

    twilio = Twilio()
    async with http.post(relay + "/incoming-call", data=twilio.webhook("+14155550100")) as resp:
        answer = twilio.read_answer(await resp.text())
    await asyncio.sleep(say_s)
    ws = await http.ws_connect(answer.stream_url, autoping=True, max_msg_size=1 << 20)
    opening = twilio.opening(answer)
    for message in opening[:-1]:
        await ws.send_str(message)
    started, started_ns = time.monotonic(), time.monotonic_ns()
    await ws.send_str(opening[-1])  # the start
    first: float | None = None
    latencies: list[float] = []
    sid = twilio.messages.stream_sid
    silence = base64.b64encode(b"\xff" * 160).decode()

    async def speak() -> None:
        while True:
            await ws.send_str(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": silence}}))
            await asyncio.sleep(0.02)

    speaker = asyncio.create_task(speak())
    end = started + listen_s
    try:
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            event = orjson.loads(msg.data)
            if event.get("event") == "media":
                now = time.monotonic()
                if first is None:
                    first = now - started
                sent = STAMP.unpack(base64.b64decode(event["media"]["payload"][:12])[:8])[0]
                if sent >= started_ns:  # the greeting's deltas from before the stream waited for it: not the relay's
                    latencies.append((time.monotonic_ns() - sent) / 1e6)
            elif event.get("event") == "mark":
                await ws.send_str(json.dumps({"event": "mark", "streamSid": sid, "mark": event["mark"]}))
    finally:
        speaker.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"event": "stop", "streamSid": sid}))
        await ws.close()
    return {"first_ms": None if first is None else first * 1000, "latencies": latencies}


async def run_callers(relay: str, calls: int, say_s: float, listen_s: float, stagger_s: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def staggered(n: int) -> dict[str, Any]:
            await asyncio.sleep(n * stagger_s)
            return await one_call(http, relay, say_s, listen_s)

        results = await asyncio.gather(*(staggered(n) for n in range(calls)))
    return {"first_ms": [r["first_ms"] for r in results],
            "latencies": [ms for r in results for ms in r["latencies"]]}


# --- the orchestration -------------------------------------------------------------------------


async def measure(mode: str, calls: int, args: argparse.Namespace, listen_s: float, stagger_s: float
                  ) -> dict[str, Any]:
    from simulate import free_port

    up_port, relay_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--role", "upstream", "--port", str(up_port),  # noqa: ASYNC220
                                 "--open-ms", str(args.open_ms), "--updated-ms", str(args.updated_ms),
                                 "--first-audio-ms", str(args.first_audio_ms)])
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PORT=str(relay_port), OPENAI_REALTIME_URL=f"ws://127.0.0.1:{up_port}/v1/realtime",
               OPENAI_API_KEY="sk-first-word-benchmark", PRIMARY_USER_PHONE_NUMBERS="+14155550100",
               PRIMARY_USER_FIRST_NAME="Jordan", MAX_CALLS=str(calls + 50), LOG_LEVEL="WARNING",
               TRANSCRIPTION_MODEL="off", LOG_TRANSCRIPTS="false", ALLOW_UNSIGNED_WEBHOOKS="true", PREWARM=mode,
               TOOLS="none", WORKERS=str(args.workers), VOICE_API=args.voice_api,
               OPENAI_LIVE_URL=f"ws://127.0.0.1:{up_port}/v1/live/sessions")
    relay = subprocess.Popen([sys.executable, str(HERE.parent / "relay.py")], env=env,  # noqa: ASYNC220
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = Path(tempfile.gettempdir()) / f"first-word-{os.getpid()}.json"
    try:
        await wait_port(up_port)
        await wait_port(relay_port)
        await asyncio.sleep(0.5 if args.workers == 1 else 2.0)  # every worker up
        pids = family(relay.pid)
        c0 = cpu_ticks(pids)
        callers = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "callers", "--relay", f"http://127.0.0.1:{relay_port}",
            "--calls", str(calls), "--say-s", str(args.say_s), "--listen-s", str(listen_s),
            "--stagger-s", str(stagger_s), "--out", str(out))
        if await callers.wait() != 0:
            raise RuntimeError(f"the callers' process failed (exit {callers.returncode})")
        c1 = cpu_ticks(family(relay.pid))
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
        stop_processes(relay, upstream)
    result["cpu_ms_per_call"] = (sum(c1) - sum(c0)) / TICKS * 1000 / calls
    return result


async def orchestrate(args: argparse.Namespace) -> None:
    costs = args.open_ms + args.updated_ms + args.first_audio_ms
    print(f"VOICE_API={args.voice_api}; stand-in costs: open {args.open_ms} ms, session.updated {args.updated_ms} "
          f"ms, first audio {args.first_audio_ms} ms (sum {costs} ms); the stream starts {args.say_s:g} s after the "
          "webhook\n")
    print(f"{'PREWARM':<10}{'calls':>6}{'first word p50 ms':>19}{'p95':>8}{'max':>8}{'over 100 ms':>13}"
          f"{'relay CPU ms/call':>19}")
    for mode in ("off", "session", "greeting"):
        result = await measure(mode, args.calls, args, listen_s=2.5, stagger_s=0.05)
        firsts = [ms for ms in result["first_ms"] if ms is not None]
        if len(firsts) < args.calls:
            print(f"  {args.calls - len(firsts)} call(s) heard no assistant audio")
        print(f"{mode:<10}{args.calls:>6}{pct(firsts, 0.5):>19.0f}{pct(firsts, 0.95):>8.0f}"
              f"{max(firsts, default=float('nan')):>8.0f}{sum(1 for ms in firsts if ms > 100):>13}"
              f"{result['cpu_ms_per_call']:>19.1f}")
    print(f"\nthe relay's share of a later turn (a delta leaving the stand-in to its media frame at the phone), "
          f"PREWARM=greeting:\n{'calls at once':<15}{'p50 ms':>8}{'p99 ms':>8}{'deltas':>8}")
    for concurrent in (int(n) for n in args.concurrent.split(",")):
        result = await measure("greeting", concurrent, args, listen_s=6.0, stagger_s=0.01)
        latencies = result["latencies"]
        print(f"{concurrent:<15}{pct(latencies, 0.5):>8.2f}{pct(latencies, 0.99):>8.2f}{len(latencies):>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per PREWARM mode (at least 20)")
    parser.add_argument("--open-ms", type=int, default=250, help="the stand-in's websocket and TLS open")
    parser.add_argument("--updated-ms", type=int, default=150, help="session.update to session.updated")
    parser.add_argument("--first-audio-ms", type=int, default=450, help="response.create to the first audio delta")
    parser.add_argument("--say-s", type=float, default=3.0, help="the welcome: webhook to the stream's start")
    parser.add_argument("--concurrent", default="1,100", help="calls at once for the later-turn latency")
    parser.add_argument("--voice-api", choices=["realtime", "live"], default="realtime",
                        help="the relay's VOICE_API (the stand-in charges GPT-Live the same costs)")
    parser.add_argument("--workers", type=int, default=1, help="WORKERS of the relay: a stream may land on another "
                        "worker than its webhook, and find no pre-warmed session there")
    parser.add_argument("--role", choices=["upstream", "callers"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--listen-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stagger-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port, args.open_ms / 1000, args.updated_ms / 1000, args.first_audio_ms / 1000)
    elif args.role == "callers":
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(run_callers(args.relay, args.calls, args.say_s, args.listen_s, args.stagger_s))
        Path(args.out).write_text(json.dumps(result))
    else:
        if args.calls < 20:
            parser.error("--calls: at least 20, for a p95")
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()

"""Capacity: CPU, memory and latency per call of ``python relay.py`` against a floor relay, under N calls.

Run: python benchmarks/load.py [--calls 50,100,150,200,300] [--seconds 10]
         [--relays relay.py,floor,floor-fast,relay.py:2,relay.py@REV,relay.py+live,relay.py+norecords] [--compress]

For each relay (this project's ``relay.py``, started as a user starts it, ``relay.py:W`` with
``WORKERS=W``, ``relay.py@REV``, an earlier commit's relay from a git worktree, for a before and after in one
run, ``relay.py+live`` with ``VOICE_API=live`` (the stand-in then speaks GPT-Live's events), ``relay.py+norecords``
with ``RECORDS=off`` (every other relay keeps its call records in a SQLite file of the run's own),
and ``benchmarks/floor_relay.py``, the least a relay can do: ``floor`` on asyncio's
loop and stdlib JSON, ``floor-fast`` on uvloop and orjson as ``relay.py`` is) and each N, in
interleaved order:

- a fast Realtime stand-in (``--role upstream``, its own process) answers ``session.update`` and
  ``response.create``, then streams one 20 ms ``response.output_audio.delta`` per call every 20 ms;
- N Twilio callers (``--role callers``, their own process) POST the voice webhook, open the media
  stream, send a 20 ms ``media`` frame per call on a monotonic clock and echo each ``mark`` when
  the audio before it has played, as Twilio does. With ``--compress`` they offer permessage-deflate
  (a relay that accepts it pays for a compressor per socket).

Every payload carries its send time (CLOCK_MONOTONIC, shared by the processes) and a sequence
number, so the one-way latency relay-in to relay-out is measured both ways and every lost frame is
counted. Printed per relay and N: the relay's CPU (% of one core per call, user + kernel), RSS per
call, latency p50/p99 each way, frames lost; a point passes with p99 <= 20 ms both ways and no
frame lost. The ratios to the floor relay measured in the same run survive a noisy machine; the
run warns when the callers fell behind their schedule or other processes used the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import functools
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FRAME_S = 0.020
STAMP = struct.Struct("<qI")
"""The first 12 bytes of every payload: send time (monotonic ns) and sequence number."""
FILL = b"\xff" * (160 - STAMP.size)
TICKS = os.sysconf("SC_CLK_TCK")


def new_loop() -> asyncio.AbstractEventLoop:
    """The load generator's event loop: uvloop where installed, so the callers and the stand-in cost
    less of the machine the relay is measured on."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def stamped(seq: int) -> str:
    """A 20 ms µ-law payload (160 bytes) carrying the time now and ``seq``, base64."""
    return base64.b64encode(STAMP.pack(time.monotonic_ns(), seq) + FILL).decode()


def read_stamp(payload: str) -> tuple[int, int]:
    """(sent at ns, seq) from a payload made by ``stamped``: only its first 16 base64 characters."""
    sent, seq = STAMP.unpack(base64.b64decode(payload[:16]))
    return sent, seq


class Gaps:
    """Sequence numbers seen on one stream; ``lost`` counts those missing below the highest."""

    def __init__(self) -> None:
        self.seen = 0
        self.high = -1

    def add(self, seq: int) -> None:
        self.seen += 1
        self.high = max(self.high, seq)

    @property
    def lost(self) -> int:
        return self.high + 1 - self.seen


# --- the Realtime stand-in -------------------------------------------------------------------


class Upstream:
    """Answers the relay like the Realtime service, streaming one stamped delta per session per 20 ms."""

    def __init__(self) -> None:
        self.streaming: list[tuple[web.WebSocketResponse, str, list[int]]] = []
        self.latencies: list[tuple[int, float]] = []
        self.gaps: list[Gaps] = []

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        gaps = Gaps()
        self.gaps.append(gaps)
        entry: tuple[web.WebSocketResponse, str, list[int]] | None = None
        await ws.send_str(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.data
            if data.startswith('{"type": "input_audio_buffer.append"') or data.startswith(
                    '{"type":"input_audio_buffer.append"'):
                sent, seq = read_stamp(orjson.loads(data)["audio"])
                self.latencies.append((sent, (time.monotonic_ns() - sent) / 1e6))
                gaps.add(seq)
                continue
            event = orjson.loads(data)
            kind = event.get("type")
            if kind == "session.update":
                session = event.get("session", {})
                await ws.send_str(json.dumps({"type": "session.updated", "session": session}))
            elif kind == "response.create" and entry is None:
                response_id = f"resp_{id(ws):x}"
                await ws.send_str(json.dumps({"type": "response.created", "response": {
                    "id": response_id, "object": "realtime.response", "status": "in_progress", "output": []}}))
                template = json.dumps({"type": "response.output_audio.delta", "response_id": response_id,
                                       "item_id": f"item_{id(ws):x}", "output_index": 0, "content_index": 0,
                                       "delta": "@@"})
                entry = (ws, template, [0])
                self.streaming.append(entry)
        if entry is not None:
            self.streaming.remove(entry)
        return ws

    async def live(self, request: web.Request) -> web.WebSocketResponse:
        """The same as ``realtime``, over GPT-Live's events: ``session.start`` answered with ``session.started``,
        the greeting's ``session.commentary.append`` starting the 20 ms stream of stamped speech."""
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        gaps = Gaps()
        self.gaps.append(gaps)
        entry: tuple[web.WebSocketResponse, str, list[int]] | None = None
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.data
            if '"session.input_audio.append"' in data[:40]:
                payload = orjson.loads(data)["audio"]
                if payload.startswith("////"):  # the line's silence a pre-warmed session hears: not a caller frame
                    continue
                sent, seq = read_stamp(payload)
                self.latencies.append((sent, (time.monotonic_ns() - sent) / 1e6))
                gaps.add(seq)
                continue
            kind = orjson.loads(data).get("type")
            if kind == "session.start":
                await ws.send_str(json.dumps({"type": "session.started", "event_id": "sev_1", "session": {
                    "id": f"live_{id(ws):x}", "expires_at": 0, "model": "gpt-live-1.1", "status": "active"}}))
            elif kind == "session.commentary.append" and entry is None:
                entry = (ws, json.dumps({"type": "session.output_audio.delta", "delta": "@@"}), [0])
                self.streaming.append(entry)
        if entry is not None:
            self.streaming.remove(entry)
        return ws

    async def stream(self) -> None:
        """One delta per streaming session every 20 ms, on the monotonic clock."""
        next_at = time.monotonic()
        while True:
            next_at += FRAME_S
            for ws, template, seq in list(self.streaming):
                if not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_str(template.replace("@@", stamped(seq[0])))
                    seq[0] += 1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def stats(self, request: web.Request) -> web.Response:
        t0, t1 = int(request.query["t0"]), int(request.query["t1"])
        window = [ms for sent, ms in self.latencies if t0 <= sent < t1]
        lost = sum(g.lost for g in self.gaps)
        body = {"latencies": window, "lost": lost, "sessions": len(self.gaps)}
        self.latencies, self.gaps = [], []
        return web.json_response(body)


def run_upstream(port: int) -> None:
    upstream = Upstream()
    app = web.Application()
    app.router.add_get("/v1/realtime", upstream.realtime)
    app.router.add_get("/v1/live/sessions", upstream.live)
    app.router.add_get("/stats", upstream.stats)

    async def start_stream(app: web.Application) -> Any:
        task = asyncio.create_task(upstream.stream())
        yield
        task.cancel()

    app.cleanup_ctx.append(start_stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_loop())


# --- the callers ---------------------------------------------------------------------------------


@dataclass
class Call:
    ws: aiohttp.ClientWebSocketResponse
    stream_sid: str
    seq: int = 0
    play_end: float = 0.0
    gaps: Gaps = field(default_factory=Gaps)
    marks: deque[tuple[float, str]] = field(default_factory=deque)
    """Marks to echo: (when the audio before it has played, name)."""


async def place_call(http: aiohttp.ClientSession, relay: str, compress: bool) -> Call:
    from standins.phone_dialects import Twilio

    twilio = Twilio()
    form = twilio.webhook("+14155550100")
    async with http.post(relay + "/incoming-call", data=form) as resp:
        answer = twilio.read_answer(await resp.text())
    ws = await http.ws_connect(answer.stream_url, compress=15 if compress else 0, autoping=True,
                               max_msg_size=1 << 20)
    for message in twilio.opening(answer):
        await ws.send_str(message)
    return Call(ws, twilio.messages.stream_sid)


async def run_callers(relay: str, calls: int, seconds: float, warmup: float, compress: bool) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        live: list[Call] = []
        for _ in range(calls):  # a ramp: 4 ms apart
            live.append(await place_call(http, relay, compress))
            await asyncio.sleep(0.004)
        t0 = time.monotonic() + warmup
        t1 = t0 + seconds
        print(json.dumps({"window": [t0, t1]}), flush=True)
        latencies: list[tuple[int, float]] = []
        lag: list[float] = []
        stop = asyncio.Event()

        async def receive(call: Call) -> None:
            async for msg in call.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.monotonic()
                event = orjson.loads(msg.data)
                kind = event.get("event")
                if kind == "media":
                    sent, seq = read_stamp(event["media"]["payload"])
                    latencies.append((sent, (time.monotonic_ns() - sent) / 1e6))
                    call.gaps.add(seq)
                    call.play_end = max(now, call.play_end) + FRAME_S
                elif kind == "mark":
                    call.marks.append((max(now, call.play_end), event["mark"]["name"]))
                elif kind == "clear":
                    call.play_end = now

        async def tick() -> None:
            """Every 5 ms: media from a quarter of the calls (each call every 20 ms), and due mark echoes."""
            start = time.monotonic()
            k = 0
            while not stop.is_set():
                k += 1
                due = start + k * FRAME_S / 4
                now = time.monotonic()
                lag.append(now - due)
                for i in range(k % 4, len(live), 4):
                    call = live[i]
                    media = ('{"event": "media", "streamSid": "' + call.stream_sid + '", "media": {"payload": "'
                             + stamped(call.seq) + '"}}')
                    call.seq += 1
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await call.ws.send_str(media)
                for call in live:
                    marks = call.marks
                    while marks and marks[0][0] <= now:
                        name = marks.popleft()[1]
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await call.ws.send_str('{"event": "mark", "streamSid": "' + call.stream_sid
                                                   + '", "mark": {"name": "' + name + '"}}')
                await asyncio.sleep(max(0.0, due + FRAME_S / 4 - time.monotonic()))

        readers = [asyncio.create_task(receive(call)) for call in live]
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(max(0.0, t1 - time.monotonic()) + 0.5)
        stop.set()
        await ticker
        for call in live:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await call.ws.send_str(json.dumps({"event": "stop", "streamSid": call.stream_sid}))
        await asyncio.sleep(0.3)
        for call in live:
            await call.ws.close()
        for reader in readers:
            reader.cancel()
        t0_ns, t1_ns = int(t0 * 1e9), int(t1 * 1e9)
        window_lag = sorted(lag[len(lag) // 4:])
        return {
            "latencies": [ms for sent, ms in latencies if t0_ns <= sent < t1_ns],
            "lost": sum(c.gaps.lost for c in live),
            "received": sum(c.gaps.seen for c in live),
            "sent": sum(c.seq for c in live),
            "lag_p99_ms": window_lag[int(len(window_lag) * 0.99)] * 1000 if window_lag else 0.0,
            "compressed": sum(1 for c in live if c.ws.compress),
            "t0_ns": t0_ns, "t1_ns": t1_ns,
        }


# --- measuring a process ------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants (a ``WORKERS`` supervisor's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return out


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(user, system) clock ticks used so far by ``pids``."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) if match else 0
    return total


def busy_ticks() -> int:
    """Ticks the whole machine spent not idle."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s") from None
            await asyncio.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


@dataclass
class Point:
    relay: str
    calls: int
    cpu_pct_per_call: float
    user_share: float
    rss_kib_per_call: float
    up_p50: float
    up_p99: float
    down_p50: float
    down_p99: float
    lost: int
    lag_p99_ms: float
    others_pct: float
    compressed: int
    """Calls whose media stream the relay accepted with permessage-deflate."""

    @property
    def passed(self) -> bool:
        return self.up_p99 <= 20 and self.down_p99 <= 20 and self.lost == 0


def relay_script(kind: str) -> Path:
    """The script a relay kind runs: this checkout's ``relay.py``, an earlier commit's (``relay.py@REV``, from a
    git worktree made for the run), or the floor relay."""
    if kind.startswith("relay.py@"):
        return worktree(kind.partition("@")[2]) / "relay.py"
    return ROOT / ("relay.py" if kind.startswith("relay.py") else "benchmarks/floor_relay.py")


@functools.cache
def worktree(rev: str) -> Path:
    """A detached git worktree of ``rev`` for this run, removed when the run ends."""
    path = Path(tempfile.mkdtemp(prefix="load-relay-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), rev], check=True,
                   capture_output=True)
    atexit.register(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                    capture_output=True)
    return path


def stop_processes(*procs: subprocess.Popen[bytes]) -> None:
    """SIGINT each (a relay drains and exits), then wait up to 10 s each before killing it."""
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def measure(kind: str, calls: int, seconds: float, compress: bool) -> Point:
    """One point: a fresh upstream, relay and callers; the relay's CPU and RSS over the window (a
    ``WORKERS`` supervisor and its workers together)."""
    from simulate import free_port  # the orchestrator only: the callers and the stand-in stay light

    up_port, relay_port = free_port(), free_port()
    out = Path(tempfile.gettempdir()) / f"load-callers-{os.getpid()}.json"
    upstream = subprocess.Popen([sys.executable, __file__, "--role", "upstream", "--port", str(up_port)])  # noqa: ASYNC220
    ours = kind.startswith("relay.py")
    workers = int(kind.partition(":")[2] or 1) if ours else 1
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(WORKERS=str(workers), PORT=str(relay_port), PUBLIC_URL=f"http://127.0.0.1:{relay_port}", OPENAI_REALTIME_URL=f"ws://127.0.0.1:{up_port}/v1/realtime",
               OPENAI_API_KEY="sk-load-benchmark", OPENAI_BASE_URL=f"http://127.0.0.1:{up_port}/v1",
               PRIMARY_USER_PHONE_NUMBERS="+14155550100", PRIMARY_USER_FIRST_NAME="Load",
               MAX_CALLS=str(calls + 50), LOG_LEVEL="WARNING", TRANSCRIPTION_MODEL="off",
               LOG_TRANSCRIPTS="false", ALLOW_UNSIGNED_WEBHOOKS="true", FLOOR_FAST="1" if kind == "floor-fast" else "",
               VOICE_API="live" if kind.endswith("+live") else "realtime",
               OPENAI_LIVE_URL=f"ws://127.0.0.1:{up_port}/v1/live/sessions",
               # The records on, as by default, in a file of this run's own (a relay that has none ignores it), or
               # off for a kind ending in +norecords.
               RECORDS="off" if kind.endswith("+norecords") else "on",
               DATABASE_URL=f"sqlite:///{Path(tempfile.gettempdir()) / f'load-records-{os.getpid()}-{relay_port}.db'}")
    script = relay_script(kind)
    relay = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT / "benchmarks",  # noqa: ASYNC220
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    callers = None
    try:
        await wait_port(up_port)
        await wait_port(relay_port)
        await asyncio.sleep(0.5 if workers == 1 else 2.0)  # every worker up before the RSS baseline
        pids = family(relay.pid)
        rss0 = rss_kib(pids)
        callers = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "callers", "--relay", f"http://127.0.0.1:{relay_port}",
            "--calls", str(calls), "--seconds", str(seconds), *(["--compress"] if compress else []),
            "--out", str(out), stdout=subprocess.PIPE)
        assert callers.stdout is not None
        t0, t1 = json.loads(await callers.stdout.readline())["window"]
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        pids = family(relay.pid)
        side = [upstream.pid, callers.pid]
        c0, s0, b0 = cpu_ticks(pids), cpu_ticks(side), busy_ticks()
        await asyncio.sleep(max(0.0, t1 - time.monotonic()))
        c1, s1, b1 = cpu_ticks(pids), cpu_ticks(side), busy_ticks()
        rss1 = rss_kib(family(relay.pid))
        if await callers.wait() != 0:
            raise RuntimeError(f"the callers' process failed (exit {callers.returncode})")
        result = json.loads(out.read_text())
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{up_port}/stats", params={"t0": result["t0_ns"], "t1": result["t1_ns"]}) as resp:
            up = await resp.json()
    finally:
        out.unlink(missing_ok=True)
        stop_processes(relay, upstream)
    window = t1 - t0
    user, system = c1[0] - c0[0], c1[1] - c0[1]
    relay_ticks = user + system
    others = (b1 - b0) - relay_ticks - sum(s1) + sum(s0)
    return Point(
        relay=kind, calls=calls,
        cpu_pct_per_call=relay_ticks / TICKS / window / calls * 100,
        user_share=user / relay_ticks if relay_ticks else 0.0,
        rss_kib_per_call=(rss1 - rss0) / calls,
        up_p50=pct(up["latencies"], 0.5), up_p99=pct(up["latencies"], 0.99),
        down_p50=pct(result["latencies"], 0.5), down_p99=pct(result["latencies"], 0.99),
        lost=int(up["lost"]) + int(result["lost"]),
        lag_p99_ms=result["lag_p99_ms"],
        others_pct=max(0.0, others / TICKS / window * 100),
        compressed=int(result["compressed"]),
    )


def report(points: list[Point]) -> None:
    print(f"\n{'relay':<16}{'calls':>6}{'CPU %/call':>12}{'(user)':>8}{'RSS KiB/call':>14}"
          f"{'up p50/p99 ms':>16}{'down p50/p99 ms':>18}{'lost':>6}  pass")
    for p in points:
        print(f"{p.relay:<16}{p.calls:>6}{p.cpu_pct_per_call:>12.3f}{p.user_share:>8.0%}{p.rss_kib_per_call:>14.0f}"
              f"{p.up_p50:>8.1f}/{p.up_p99:<7.1f}{p.down_p50:>9.1f}/{p.down_p99:<8.1f}{p.lost:>6}  "
              f"{'yes' if p.passed else 'NO'}")
        if p.lag_p99_ms > 5:
            print(f"  warning: the callers fell behind their schedule (p99 {p.lag_p99_ms:.1f} ms late)")
        if p.others_pct > 15:
            print(f"  warning: other processes used {p.others_pct:.0f}% of a core during this point")
        if p.compressed:
            print(f"  note: {p.compressed} of {p.calls} media streams were accepted with permessage-deflate")
    kinds = list(dict.fromkeys(p.relay for p in points))
    best = {k: max((p.calls for p in points if p.relay == k and p.passed), default=0) for k in kinds}
    print()
    for k in kinds:
        print(f"largest passing N ({k}): {best[k]}")
    if "relay.py" not in best:
        return
    ours = {p.calls: p for p in points if p.relay == "relay.py"}
    # Where it held its latency: a saturated relay's buffers grow with its backlog.
    held = [p.rss_kib_per_call for p in ours.values() if p.passed]
    if held:
        print(f"RSS per call, relay.py: {statistics.median(held):.0f} KiB (median over the N it passed; "
              "target <= 64)")
    for kind in kinds:
        if kind == "relay.py":
            continue
        if kind == "relay.py+live":
            shared = [n for n in ours if any(p.relay == kind and p.calls == n and p.passed for p in points)]
            live = {p.calls: p for p in points if p.relay == kind}
            ratios = [live[n].cpu_pct_per_call / ours[n].cpu_pct_per_call for n in shared if ours[n].passed]
            if ratios:
                print(f"CPU per call, GPT-Live / Realtime: {statistics.median(ratios):.2f} (median over the N both "
                      "passed)")
            continue
        if kind.startswith("relay.py:"):
            if best["relay.py"]:
                print(f"largest passing N, {kind} / relay.py: {best[kind] / best['relay.py']:.2f}")
            continue
        before = kind.startswith("relay.py@")  # an earlier commit: no drop allowed, rather than the floor's targets
        floor = {p.calls: p for p in points if p.relay == kind}
        shared = sorted(set(ours) & set(floor))
        # Only where both held their latency: a saturated relay's CPU per call is one core / N, not its cost.
        ratios = [ours[n].cpu_pct_per_call / floor[n].cpu_pct_per_call for n in shared
                  if ours[n].passed and floor[n].passed and floor[n].cpu_pct_per_call > 0]
        if ratios:
            print(f"CPU per call, relay.py / {kind}: {statistics.median(ratios):.2f} (median over the N both "
                  f"passed; target <= {'1.10' if before else '1.25'})")
        else:
            print(f"CPU per call, relay.py / {kind}: no N at which both passed")
        if best[kind]:
            print(f"largest passing N, relay.py / {kind}: {best['relay.py'] / best[kind]:.2f} "
                  f"(target >= {'1.0' if before else '0.8'})")


async def orchestrate(calls: list[int], seconds: float, relays: list[str], compress: bool) -> None:
    print(f"load benchmark: {seconds:g} s per point, N = {', '.join(map(str, calls))}, "
          f"relays: {', '.join(relays)}, {os.cpu_count()} CPUs"
          f"{', callers offer permessage-deflate' if compress else ''}", flush=True)
    points = []
    for n in calls:
        for kind in relays:
            point = await measure(kind, n, seconds, compress)
            points.append(point)
            print(f"  {kind:<10} N={n:<4} CPU {point.cpu_pct_per_call:.3f} %/call, p99 up {point.up_p99:.1f} ms "
                  f"down {point.down_p99:.1f} ms, lost {point.lost}", flush=True)
    report(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="50,100,150,200,300", help="comma-separated numbers of calls")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--relays", default="relay.py,floor", help="which relays to measure: relay.py, relay.py:W "
                        "(WORKERS=W), relay.py@REV (an earlier commit's, from a git worktree), relay.py+live "
                        "(VOICE_API=live), relay.py+norecords (RECORDS=off), floor, floor-fast (the floor on uvloop "
                        "and orjson)")
    parser.add_argument("--compress", action="store_true", help="callers offer permessage-deflate")
    parser.add_argument("--role", choices=["upstream", "callers"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
    elif args.role == "callers":
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(run_callers(args.relay, int(args.calls), args.seconds, warmup=2.0,
                                            compress=args.compress))
        Path(args.out).write_text(json.dumps(result))  # megabytes: a file, not the pipe
    else:
        relays = [r.strip() for r in args.relays.split(",")]
        unknown = [r for r in relays if r not in ("relay.py", "relay.py+live", "relay.py+norecords", "floor",
                                                  "floor-fast")
                   and not re.fullmatch(r"relay\.py(:[1-9]\d?|@[\w./^~-]+)", r)]
        if unknown:
            parser.error(f"unknown relay {', '.join(unknown)}")
        asyncio.run(orchestrate([int(n) for n in args.calls.split(",")], args.seconds, relays, args.compress))


if __name__ == "__main__":
    main()

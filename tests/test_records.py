"""Call records, on SQLite and on PostgreSQL alike (``database_url``): a whole call recorded as the caller heard
it, with its tools, barge-in, usage, cost and latency; the records' API and ``relay.py calls``; records surviving a
restart; a stream token spent on one worker refused on another; a database that is down or locked costing no call;
texts; retention; the daily budget; the callers' memory."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from support import (
    ROOT,
    SECRET_KEY,
    RawLeg,
    health,
    make_config,
    process_env,
    relay_process,
    start_relay,
    start_standin,
    until,
)
from test_console import GREETING_TEXT, LONG_TEXT, cut_in, start_console_call

import simulate
import store.records
from config import Config, ConfigError
from model.prices import PriceTable, TokenUsage, usage_of
from ops.tokens import StreamTokens
from standins.phone_dialects import Twilio
from store.database import Database
from store.memory import render
from store.records import Records
from store.writer import RecordWriter

TOKEN = "a-console-token-of-some-length"
ANSWER_TEXT = "Done: I have switched to the speakerphone setting."
CALLER_TEXTS = ("Tell me about the history of Paris.", "Sorry, I'm on speakerphone.")
AUTH = {"Authorization": aiohttp.encode_basic_auth("ops", TOKEN)}


async def api(http: aiohttp.ClientSession, base: str, path: str) -> tuple[int, Any]:
    async with http.get(base + path, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def ended_record(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """The newest call's whole record once its end is written (the writer runs after the call)."""
    async def ended() -> dict[str, Any] | None:
        status, body = await api(http, base, "/api/calls?limit=1")
        return body["calls"][0] if status == 200 and body["calls"] and body["calls"][0]["ended_at"] else None
    listed = await until(ended, what="the call's record completed")
    status, record = await api(http, base, f"/api/calls/{listed['call_sid']}")
    assert status == 200
    return record


async def test_a_call_is_recorded_as_the_caller_heard_it(database_url: str, stack: contextlib.AsyncExitStack,
                                                        http: aiohttp.ClientSession) -> None:
    """A call with a barge-in and a tool call: the turns as heard (the cut one with its audio_end_ms), the tool, the
    barge-in, the usage the stand-in reported and its cost from the price table, the latencies; then the list, a
    search by number and by time, and the API's refusals."""
    standin, base = await start_console_call(stack, TOKEN, LONG_TEXT, ANSWER_TEXT, list(CALLER_TEXTS),
                                             database_url=database_url)
    leg = await cut_in(http, base, standin, LONG_TEXT)
    await until(lambda: {ANSWER_TEXT, CALLER_TEXTS[1]} <= {e.get("transcript") for e in standin.sessions[0].sent},
                what="the answer after the tool, and the caller's words transcribed")
    await leg.stop()
    record = await ended_record(http, base)
    assert (record["network"], record["direction"], record["caller"], record["group"], record["call_sid"]) == (
        "twilio", "inbound", "+*******0100", "primary", leg.call_sid)
    assert record["end_reason"] == "twilio stop" and record["duration_s"] > 2
    turns = record["turns"]
    assert [(t["role"], t["cut"]) for t in turns] == [("assistant", False), ("user", False), ("assistant", True),
                                                      ("user", False), ("assistant", False)]
    assert [turns[0]["text"], turns[1]["text"], turns[3]["text"], turns[4]["text"]] == [
        GREETING_TEXT, CALLER_TEXTS[0], CALLER_TEXTS[1], ANSWER_TEXT]
    cut = turns[2]
    assert LONG_TEXT.startswith(cut["text"].removesuffix("…")) and len(cut["text"]) < len(LONG_TEXT)
    [barge_in] = record["barge_ins"]
    assert cut["audio_end_ms"] == barge_in["truncations"][0]["audio_end_ms"] > 0
    [tool] = record["tools"]
    assert (tool["name"], tool["ok"], tool["error"]) == ("update_mic_distance", True, None)
    assert "far_field" in tool["arguments"] and tool["duration_ms"] >= 0
    total = TokenUsage()
    for event in standin.sessions[0].sent:
        if event["type"] == "response.done" and "usage" in event["response"]:
            found = usage_of(event["response"]["usage"])
            assert found is not None
            total.add(found)
    assert record["usage"] == {kind: getattr(total, kind) for kind in record["usage"]} and total.tokens > 0
    assert record["cost_usd"] == pytest.approx(PriceTable.load().cost("gpt-realtime-2.1", total, 0.0), abs=1e-9)
    latency = record["latency_ms"]
    assert latency["first_word"] > 0 and latency["p95"] >= latency["p50"] > 0
    assert len(record["latency"]["turns_ms"]) == 2 and record["model"] == "gpt-realtime-2.1"
    [listed] = (await api(http, base, "/api/calls?limit=5"))[1]["calls"]
    assert listed == {key: record[key] for key in listed}
    assert (await api(http, base, "/api/calls?caller=%2B1%20415%20555%200100"))[1]["calls"] == [listed]
    assert (await api(http, base, "/api/calls?caller=%2B14155550111"))[1]["calls"] == []
    assert (await api(http, base, "/api/calls?before=2020-01-01"))[1]["calls"] == []
    assert (await api(http, base, "/api/calls?since=2020-01-01T00:00:00Z"))[1]["calls"] == [listed]
    for path in ("/api/calls?before=yesterday", "/api/calls?limit=0", "/api/calls?caller=x"):
        assert (await api(http, base, path))[0] == 400, path
    assert (await api(http, base, "/api/calls/CA-none"))[0] == 404
    async with http.get(base + f"/api/calls/{leg.call_sid}") as resp:
        assert resp.status == 401
    async with http.get(base + "/api/calls", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200


async def test_records_survive_a_restart_and_relay_py_calls_prints_them(
        database_url: str, tmp_path: Path, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """A call taken by one relay is listed by the next one on the same database, and by ``relay.py calls``."""
    _, realtime_url = await start_standin(stack)
    config = make_config(realtime_url, database_url=database_url, console_token=TOKEN, record_numbers_full=True)
    async with contextlib.AsyncExitStack() as first:
        base = await start_relay(first, config)
        sid = await short_call(http, base)
        assert (await ended_record(http, base))["call_sid"] == sid
    async with contextlib.AsyncExitStack() as second:
        base = await start_relay(second, config)
        status, body = await api(http, base, "/api/calls")
        assert status == 200 and [call["call_sid"] for call in body["calls"]] == [sid]
        assert body["calls"][0]["caller"] == "+14155550100"  # RECORD_NUMBERS=full
    env = process_env(OPENAI_API_KEY=SECRET_KEY, RECORDS="on", DATABASE_URL=database_url)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, str(ROOT / "relay.py"), "calls", "--limit", "5"],
                                   env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header, line = done.stdout.splitlines()
    assert header.startswith("started (UTC)") and sid in line and "+14155550100" in line and "twilio" in line


async def short_call(http: aiohttp.ClientSession, base: str, caller: str = "+14155550100") -> str:
    """A call that starts and hangs up at once: its call_sid."""
    phone = await RawLeg.open(http, base)
    await phone.start(caller)
    await phone.stop()
    await phone.closed()
    return phone.call_sid


async def test_a_stream_token_spent_on_one_worker_is_refused_on_another(
        database_url: str, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """Two relays sharing one database (two workers, or two hosts): a start replayed on the second is closed 1008,
    since its nonce was spent on the first. A relay without the records cannot tell, and takes it."""
    _, realtime_url = await start_standin(stack)
    first = await start_relay(stack, make_config(realtime_url, database_url=database_url))
    second = await start_relay(stack, make_config(realtime_url, database_url=database_url))
    apart = await start_relay(stack, make_config(realtime_url))
    network = Twilio()
    parameters = StreamTokens(SECRET_KEY.encode()).issue("+14155550100", network.messages.call_sid)
    taken = await RawLeg.open(http, first, network=network)
    await taken.start(parameters=parameters)
    await taken.hear(800)  # the greeting: the call is under way
    replayed = await RawLeg.open(http, second, network=network)
    await replayed.start(parameters=parameters)
    assert await replayed.closed() == 1008
    unchecked = await RawLeg.open(http, apart, network=network)
    await unchecked.start(parameters=parameters)
    await unchecked.hear(800)
    for leg in (taken, unchecked):
        await leg.stop()


async def test_a_database_that_is_down_costs_no_call(stack: contextlib.AsyncExitStack,
                                                     http: aiohttp.ClientSession,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Unreachable at startup: the relay serves without records, says so once, and calls go on."""
    _, realtime_url = await start_standin(stack)
    closed_port = f"postgresql://relay:secret@127.0.0.1:{simulate.free_port()}/relay"
    base = await start_relay(stack, make_config(realtime_url, database_url=closed_port, console_token=TOKEN))
    status, body = await health(http, base)
    assert status == 200 and body["records"] == {"ready": False, "written": 0, "dropped": 0}
    assert caplog.text.count("records are off until the database can be used") == 1 and "secret" not in caplog.text
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.hear(800)
    await leg.stop()
    assert (await api(http, base, "/api/calls"))[0] == 503


async def test_the_records_come_on_once_the_database_can_be_used(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite file in a folder that does not exist yet: calls go on unrecorded; once the folder is there, the
    next try migrates, and the next call is recorded."""
    monkeypatch.setattr(store.records, "RETRY_S", 0.1)
    folder = tmp_path / "later"
    _, realtime_url = await start_standin(stack)
    base = await start_relay(stack, make_config(realtime_url, database_url=f"sqlite:///{folder / 'relay.db'}",
                                                console_token=TOKEN))
    assert (await health(http, base))[1]["records"]["ready"] is False
    await short_call(http, base)
    folder.mkdir()
    await until(lambda: _ready(http, base), what="the records on")
    sid = await short_call(http, base)
    assert (await ended_record(http, base))["call_sid"] == sid
    assert [call["call_sid"] for call in (await api(http, base, "/api/calls"))[1]["calls"]] == [sid]


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    return bool((await health(http, base))[1]["records"]["ready"])


async def test_a_locked_database_costs_no_call(database_url: str, stack: contextlib.AsyncExitStack,
                                               http: aiohttp.ClientSession) -> None:
    """Another client holds the records' tables locked through a whole call: the call starts (its token checked by
    its own worker after a short wait), is heard and ends as usual; the record is written once the lock goes."""
    _, realtime_url = await start_standin(stack)
    base = await start_relay(stack, make_config(realtime_url, database_url=database_url, console_token=TOKEN))
    async with locked(database_url):
        leg = await RawLeg.open(http, base)
        await leg.start()
        await leg.hear(800)
        await leg.stop()
        assert await leg.closed() == 1000
    record = await ended_record(http, base)
    assert record["call_sid"] == leg.call_sid and record["end_reason"] == "twilio stop"


@contextlib.asynccontextmanager
async def locked(database_url: str) -> AsyncIterator[None]:
    """The records' tables locked against writes by another client, until the block ends."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None,
                                 check_same_thread=False)
        # In a thread: the relay on this event loop may be finishing a write of its own (the startup's deletion).
        await asyncio.to_thread(holder.execute, "BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    holder = await psycopg.AsyncConnection.connect(database_url)
    try:
        await holder.execute("LOCK TABLE calls, stream_nonces IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await holder.rollback()
        await holder.close()


async def test_the_writer_drops_what_does_not_fit_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """A stalled database: the queue holds its bound, the rest is dropped, counted and warned about once."""
    release = asyncio.Event()
    done: list[int] = []
    counted: list[int] = []

    async def write(n: int) -> None:
        await release.wait()
        done.append(n)

    writer = RecordWriter(lambda: counted.append(1), max_queued=2)
    writer.start()
    for n in range(6):
        writer.put("call start", lambda n=n: write(n))  # type: ignore[misc]
        await asyncio.sleep(0)
    assert writer.dropped == len(counted) == 3
    assert caplog.text.count("record dropped (call start): 2 writes already queued") == 1
    release.set()
    await writer.close()
    assert done == [0, 1, 2] and writer.written == 3


async def test_texts_retention_and_the_callers_memory(database_url: str, stack: contextlib.AsyncExitStack,
                                                     http: aiohttp.ClientSession) -> None:
    """Texts in and out are stored; records past RECORDS_RETENTION_DAYS go; with CALLER_MEMORY the next call's
    sessions (the one the webhook pre-warms, and the call's own) are told the caller's last call and texts, newest
    first, and another caller's are not."""
    db = Database(database_url, SECRET_KEY.encode())
    await db.migrate()
    stack.push_async_callback(db.close)
    now = dt.datetime.now(dt.UTC)
    caller = db.key_of("+14155550100")
    for days, said in ((40, "an old call about the boiler"), (1, "please remind me to call the dentist")):
        row = {"record_id": f"r{days}", "call_sid": f"CA{days}", "stream_sid": "MZ", "network": "twilio",
               "direction": "inbound", "caller": "+*******0100", "caller_key": caller, "caller_group": "primary",
               "voice_api": "realtime", "model": "gpt-realtime-2.1", "started_at": now - dt.timedelta(days=days),
               "turns_count": 0}
        if days == 40:  # the other's start was never written: its end writes it whole
            await db.insert_call(row)
        await db.finish_call(row["record_id"], {"ended_at": row["started_at"], "turns_count": 1, "detail": {
            "turns": [{"role": "user", "text": said, "cut": False, "audio_end_ms": None}]}}, row)
    standin, realtime_url = await start_standin(stack)
    config = make_config(realtime_url, database_url=database_url, caller_memory=True, records_retention_days=30)
    base = await start_relay(stack, config)
    async def kept() -> bool:
        return [call["call_sid"] for call in await db.list_calls(10)] == ["CA1"]
    await until(kept, what="the 40-day-old record deleted at startup")
    records = Records(config, SECRET_KEY.encode())  # as phones.sms.SmsReplies tells the relay's own
    assert await records.start()
    stack.push_async_callback(records.close)
    records.on_text("in", "+14155550100", "Is the dentist open on Saturday?")
    records.on_text("out", "+14155550100", "Yes, from 9 to 12.")
    await until(lambda: records.writer.written >= 2, what="texts written")
    texts = await db.recent_texts(caller, 5)
    assert [(t["direction"], t["body"]) for t in texts] == [("out", "Yes, from 9 to 12."),
                                                           ("in", "Is the dentist open on Saturday?")]
    assert "<Stream" in await webhook(http, base, "CA-memory")
    await until(lambda: standin.sessions and "dentist" in standin.sessions[0].session.get("instructions", ""),
                what="the pre-warmed session told the caller's past")
    told = standin.sessions[0].session["instructions"]
    assert told.index("You texted") < told.index("Caller texted")  # newest first
    assert "remind me to call the dentist" in told and "boiler" not in told
    leg = await RawLeg.open(http, base)
    await leg.start()
    await until(lambda: len(standin.sessions) == 2
                and "remind me to call the dentist" in standin.sessions[1].session.get("instructions", ""),
                what="the call's own session told the caller's past")
    await leg.stop()
    stranger = render(await db.recent_details(db.key_of("+14155550111"), 3), [])
    assert stranger == ""


async def test_the_daily_budget_turns_new_calls_away_once_reached(
        database_url: str, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    """DAILY_BUDGET_USD: the first call's cost reaches it; the next webhook hears that the assistant is unavailable
    today and is hung up on, /health says so, the log says it once; a relay started later on the same records knows
    today's spend at once."""
    standin, realtime_url = await start_standin(stack)
    config = make_config(realtime_url, database_url=database_url, console_token=TOKEN, daily_budget_usd=0.000001)
    async with contextlib.AsyncExitStack() as first:
        base = await start_relay(first, config)
        assert (await health(http, base))[1]["budget"] == {"daily_usd": 0.000001, "spent_today_usd": 0.0,
                                                           "exhausted": False}
        leg = await RawLeg.open(http, base)
        await leg.start()
        await until(lambda: standin.sessions and any(event["type"] == "response.done"
                                                     for event in standin.sessions[0].sent), what="the greeting done")
        await leg.stop()
        assert (await ended_record(http, base))["cost_usd"] > 0
        for sid in ("CA-over-1", "CA-over-2"):
            answer = await webhook(http, base, sid)
            assert "unavailable today" in answer and "<Hangup" in answer and "<Stream" not in answer
        status, body = await health(http, base)
        assert status == 200 and body["budget"]["exhausted"] is True
        assert caplog.text.count("DAILY_BUDGET_USD=0.00 reached") == 1
    async with contextlib.AsyncExitStack() as second:
        base = await start_relay(second, config)
        await until(lambda: health(http, base), what="health")
        assert "unavailable today" in await until(lambda: _refused(http, base), what="the budget read at startup")


async def _refused(http: aiohttp.ClientSession, base: str) -> str | None:
    answer = await webhook(http, base, "CA-next-day")
    return answer if "unavailable today" in answer else None


async def webhook(http: aiohttp.ClientSession, base: str, call_sid: str) -> str:
    """Twilio's voice webhook for a call from the primary caller (the test relay takes it unsigned)."""
    async with http.post(base + "/incoming-call", data={"From": "+14155550100", "CallSid": call_sid}) as resp:
        assert resp.status == 200
        return await resp.text()


def test_the_records_settings() -> None:
    """Records are on by default in a SQLite file; RECORDS=off turns them off; a URL of neither engine, a SQLite
    database in memory (workers could not share it) and an unknown RECORD_NUMBERS stop startup."""
    base = {"OPENAI_API_KEY": SECRET_KEY}
    config = Config.from_env(base)
    assert (config.database_url, config.record_numbers_full, config.records_retention_days) == (
        "sqlite:///relay.db", False, 30)
    assert config.daily_budget_usd is None and not config.caller_memory
    assert Config.from_env({**base, "RECORDS": "off"}).database_url is None
    on = Config.from_env({**base, "DATABASE_URL": "postgres://u:p@db:5432/relay", "RECORD_NUMBERS": "full",
                          "DAILY_BUDGET_USD": "12.5", "CALLER_MEMORY": "true"})
    assert (on.database_url, on.record_numbers_full, on.daily_budget_usd, on.caller_memory) == (
        "postgres://u:p@db:5432/relay", True, 12.5, True)
    for name, value in (("DATABASE_URL", "mysql://db/relay"), ("DATABASE_URL", "sqlite:///:memory:"),
                        ("RECORD_NUMBERS", "partly"), ("RECORDS_RETENTION_DAYS", "0")):
        with pytest.raises(ConfigError, match=name):
            Config.from_env({**base, name: value})


async def test_two_workers_write_to_one_database(database_url: str, stack: contextlib.AsyncExitStack,
                                                 http: aiohttp.ClientSession) -> None:
    """WORKERS=2 (two processes on one port; the supervisor migrates first): calls land on both workers, both
    write their records to the one file (or server), and either worker lists every call."""
    _, realtime_url = await start_standin(stack)
    env = process_env(OPENAI_API_KEY=SECRET_KEY, OPENAI_REALTIME_URL=realtime_url, PORT=str(simulate.free_port()),
                      ALLOW_ALL_CALLERS="true", ALLOW_UNSIGNED_WEBHOOKS="true", WORKERS="2", RECORDS="on",
                      DATABASE_URL=database_url, CONSOLE_TOKEN=TOKEN, PREWARM="off")
    async with relay_process(http, env) as relay, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        written: dict[int, int] = {}  # each worker's own count of records written, by pid

        async def counted(total: int | None) -> bool:  # whichever worker answers tells its own
            body = (await health(fresh, relay.base_url))[1]
            written[body["pid"]] = body["records"]["written"]
            return len(written) == 2 and (total is None or sum(written.values()) == total)

        await until(lambda: counted(None), timeout=15, what="both workers answering")  # the second may be starting
        calls = 16
        sids = await asyncio.gather(*(short_call(http, relay.base_url) for _ in range(calls)))
        await until(lambda: counted(2 * calls), timeout=20, what="both workers' records written")
        assert all(count > 0 for count in written.values()), written
        status, body = await api(http, relay.base_url, f"/api/calls?limit={calls}")
        assert status == 200 and sorted(call["call_sid"] for call in body["calls"]) == sorted(sids)
        assert all(call["ended_at"] for call in body["calls"])
        relay.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.process.wait(), 15) == 0
    assert "Traceback" not in relay.output and "record dropped" not in relay.output

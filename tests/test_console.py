"""The live call console: ``/console`` and its feed ``/console/ws`` behind ``CONSOLE_TOKEN``, fed by the bridge's
call-event hook during real calls on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import socket
from typing import Any

import aiohttp
import pytest
from support import RawLeg, make_config, speech, start_relay, start_standin, until

import simulate
from ops import console
from ops.tokens import feed_ticket
from simulate import Scenario
from standins.openai_service import AssistantTurn, RealtimeStandIn
from standins.phone_network import CallerTurn

TOKEN = "console-" + "t" * 24
GREETING = bytes(range(0x10, 0x60)) * 30
LONG = bytes(range(0x20, 0x70)) * 400  # 4 s: long enough to be interrupted
ANSWER = bytes(range(0x30, 0x78)) * 20
LONG_TEXT = "Paris began as a Celtic village on an island in the Seine river."
GREETING_TEXT = "Hello Jordan, how can I help?"


async def start_console_call(stack: contextlib.AsyncExitStack, token: str, long_text: str, answer_text: str,
                             caller_texts: list[str], **overrides: Any) -> tuple[RealtimeStandIn, str]:
    """A relay with the console on (``token``) and the console tests' call script: the greeting (``GREETING``,
    ``GREETING_TEXT``), a long answer for the caller to cut in on (``LONG``, ``long_text``), a microphone switch
    (``update_mic_distance``) and the answer after it (``ANSWER``, ``answer_text``); the stand-in transcribes the
    caller's two utterances as ``caller_texts``; ``overrides`` replace config fields. Returns the stand-in and the
    relay's base URL."""
    standin, url = await start_standin(stack, [
        AssistantTurn(ulaw=GREETING, transcript=GREETING_TEXT),
        AssistantTurn(ulaw=LONG, transcript=long_text),
        AssistantTurn(function_calls=[("update_mic_distance", {"mode": "far_field"})]),
        AssistantTurn(ulaw=ANSWER, transcript=answer_text),
    ])
    standin.caller_transcripts = caller_texts
    base = await start_relay(stack, make_config(url, console_token=token, tools=("update_mic_distance",), **overrides))
    return standin, base


async def cut_in(http: aiohttp.ClientSession, base: str, standin: RealtimeStandIn, long_text: str) -> RawLeg:
    """The console call's first part (``start_console_call``): a caller hears the greeting, asks, hears 1.2 s of the
    long answer (``long_text``) in real time and cuts in. Returns the caller's leg."""
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await leg.say("caller_question")
    await until(lambda: any(e.get("transcript") == long_text for e in standin.sessions[0].sent),
                what="the long answer generated (8x faster than it plays)")
    await leg.hear(9600)
    await leg.say("caller_interrupt")
    return leg


def _auth(password: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()}






async def _feed(http: aiohttp.ClientSession, base: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(base.replace("http", "ws") + "/console/ws", headers=_auth())


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    """The next feed message of type ``kind`` whose fields include ``match``."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.receive_str())
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message


async def test_the_console_needs_its_token(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """Off (404) without CONSOLE_TOKEN; with it, 401 without credentials or with a wrong password, for the page and
    the feed; the page with the right one, self-contained, carrying a feed ticket that opens the feed."""
    off = await start_relay(stack, make_config())
    for path in ("/console", "/console/ws"):
        async with http.get(off + path, headers=_auth()) as resp:
            assert resp.status == 404
    base = await start_relay(stack, make_config(console_token=TOKEN))
    for path in ("/console", "/console/ws"):
        for headers in ({}, _auth("wrong"), {"Authorization": "Bearer " + TOKEN}):
            async with http.get(base + path, headers=headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    async with http.get(base + "/console", headers=_auth()) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert not re.search(r"""(src|href)=["']?https?://""", page)  # nothing from a CDN: it works offline
    ticket = re.search(r'const TICKET = "([^"]+)"', page)
    assert ticket is not None and TOKEN not in page
    ws = await http.ws_connect(base.replace("http", "ws") + "/console/ws?ticket=" + ticket.group(1))
    assert (await _next(ws, "snapshot"))["calls"] == []
    await ws.close()
    for bad in (feed_ticket("another token"), feed_ticket(TOKEN, now=0), "1.2", ""):
        async with http.get(base + "/console/ws?ticket=" + bad) as resp:
            assert resp.status == 401


async def test_the_feed_follows_a_call(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """During a call: started, both sides' transcripts (deltas, then the finished text), the barge-in with the heard
    and unheard parts of the cut answer, a tool call, the end with its reason; a watcher that connects mid-call
    gets the call's state first; each finished turn is one INFO log line."""
    _standin, base = await start_console_call(stack, TOKEN, LONG_TEXT, "Done, I switched to the speakerphone setting.",
                                              ["Tell me about Paris.", "Sorry, I am on speakerphone."])
    feed = await _feed(http, base)
    assert (await _next(feed, "snapshot"))["calls"] == []
    leg = await RawLeg.open(http, base)
    await leg.start()
    started = await _next(feed, "call.started")
    sid = started["stream_sid"]
    assert (started["network"], started["group"], started["caller"]) == ("twilio", "primary", "+*******0100")
    greeting = await _next(feed, "transcript", role="assistant")
    assert (greeting["text"], greeting["cut"], greeting["unheard"]) == ("Hello Jordan, how can I help?", False, "")
    await leg.listen(len(GREETING))
    await leg.say("caller_question")
    asked = await _next(feed, "transcript.delta", role="user")
    assert asked["delta"] == "Tell me about Paris."
    said = await _next(feed, "transcript", role="user")
    assert (said["text"], said["stream_sid"]) == ("Tell me about Paris.", sid)
    await _next(feed, "transcript", role="assistant", text=LONG_TEXT)  # generated 8x faster than it plays
    await leg.hear(8000)  # a second of it, played in real time (no mark echoed), then the caller interrupts
    await leg.say("caller_interrupt")
    heard = await _next(feed, "transcript", role="assistant", cut=True)  # what was heard, then the barge-in
    barge_in = await _next(feed, "barge_in")
    [cut] = barge_in["truncations"]
    assert 500 < cut["audio_end_ms"] < cut["sent_ms"] == len(LONG) // 8
    assert heard["text"].startswith("Paris") and heard["text"].endswith("…")
    assert heard["text"].removesuffix("…").split() + heard["unheard"].split() == LONG_TEXT.split()

    late = await _feed(http, base)  # a watcher that comes now sees the whole call so far
    [state] = (await _next(late, "snapshot"))["calls"]
    kinds = [event["type"] for event in state["events"]]
    assert state["live"] and kinds[0] == "call.started" and "barge_in" in kinds
    assert "transcript.delta" not in kinds  # the finished text stands for them
    tool = await _next(feed, "tool.finished")
    assert (tool["name"], tool["ok"]) == ("update_mic_distance", True)
    answer = await _next(late, "transcript", role="assistant", cut=False, text="Done, I switched to the speakerphone "
                                                                                "setting.")
    assert answer["stream_sid"] == sid
    await leg.stop()
    ended = await _next(feed, "call.ended")
    assert ended["reason"] == "twilio stop" and ended["counts"]["barge_ins"] == 1
    lines = [r.message for r in caplog.records if " said: " in r.message]
    assert lines[0].startswith("assistant said: Hello Jordan, how can I help?")
    assert any(line.startswith("caller said: Tell me about Paris.") for line in lines)
    assert any(line.startswith(f"assistant said: {LONG_TEXT}") for line in lines)  # as generated,
    assert [r.message for r in caplog.records if r.message.startswith(  # then what was heard of it
        f"assistant cut off by the caller; heard: {heard['text']} ")]
    assert len(lines) >= 4 and len(lines) == len({line.split(" stream_sid=")[0] for line in lines})  # one per turn


async def test_transcripts_stay_out_of_the_log_when_asked(stack: contextlib.AsyncExitStack,
                                                          http: aiohttp.ClientSession,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING, transcript="Hello Jordan.")])
    base = await start_relay(stack, make_config(url, log_transcripts=False))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await until(lambda: standin.sessions[0].done_at, what="the greeting done")
    await leg.stop()
    await leg.closed()
    assert "Hello Jordan" not in caplog.text and "said:" not in caplog.text


async def test_a_stalled_console_is_dropped_and_the_call_goes_on(stack: contextlib.AsyncExitStack,
                                                                 http: aiohttp.ClientSession,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser that stops reading fills its queue and is dropped (its socket cut); the call's audio arrives whole
    and the caller hears no gap longer than the stand-in's own delta spacing."""
    monkeypatch.setattr(console, "WATCHER_QUEUE", 20)
    words = " ".join(f"w{i}" + "x" * 30_000 for i in range(400))  # 12 MB of transcript deltas for the feed
    _, url = await start_standin(stack, [AssistantTurn(ulaw=LONG, transcript=words, speed=4.0, delta_ms=(20, 20))])
    base = await start_relay(stack, make_config(url, console_token=TOKEN))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a browser that reads nothing, with little room
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
    reader, writer = await asyncio.open_connection(sock=raw)
    key = base64.b64encode(b"0123456789abcdef").decode()
    writer.write((f"GET /console/ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: {_auth()['Authorization']}\r\n\r\n").encode())
    await writer.drain()
    leg = await RawLeg.open(http, base)
    await leg.start()
    loop = asyncio.get_running_loop()
    heard, arrivals = bytearray(), []
    while len(heard) < len(LONG):
        event = await leg.recv(timeout=10)
        assert event is not None
        kind, value = leg.network.read(event)
        if kind == "media":
            heard += base64.b64decode(value)
            arrivals.append(loop.time())
        elif kind == "mark":
            await leg.mark(value)
    assert bytes(heard) == LONG
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.5  # 20 ms deltas generated at 4x: a stalled browser adds nothing to that
    async with asyncio.timeout(5):  # the relay cut the stalled feed: what was buffered, then the end
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(1 << 20):
                pass
    writer.close()


async def test_a_simulated_call_in_the_console(http: aiohttp.ClientSession) -> None:
    """``simulate_call`` with a console token (what ``python simulate.py --console`` runs): once the call is over,
    the relay is still up and its console holds the ended call, the caller's words and the cut answer included."""
    scenario = Scenario(
        assistant=[AssistantTurn(speech("assistant_greeting"), "Hi Jordan, it's your assistant. How can I help?"),
                   AssistantTurn(speech("assistant_long"), "Paris has a long and fascinating history."),
                   AssistantTurn(speech("assistant_short"), "Of course. In short: Paris started as a Celtic village.")],
        caller=[CallerTurn(speech("caller_question"), "Can you tell me about the history of Paris?",
                           {"after": "assistant_done", "delay_ms": 300}),
                CallerTurn(speech("caller_interrupt"), "Sorry, wait. Can you make that shorter?",
                           {"after": "assistant_audio", "ms": 1500})],
        hangup={"after": "assistant_done", "delay_ms": 300},
        expect_barge_ins=1,
    )
    seen: dict[str, Any] = {}

    async def read_console(result: simulate.CallResult, relay_url: str) -> None:
        feed = await _feed(http, relay_url)
        if (await _next(feed, "snapshot"))["calls"][0]["live"]:  # the hang-up is still reaching the relay
            await _next(feed, "call.ended")
        await feed.close()
        feed = await _feed(http, relay_url)
        seen.update(await _next(feed, "snapshot"))
        await feed.close()

    result = await simulate.simulate_call(scenario, seed=4, console_token=TOKEN, after_call=read_console)
    assert result.ok, result.problems
    [call] = seen["calls"]
    assert not call["live"] and call["events"][-1]["type"] == "call.ended"
    final = [e for e in call["events"] if e["type"] == "transcript"]
    callers = [e["text"] for e in final if e["role"] == "user"]
    assert callers == ["Can you tell me about the history of Paris?", "Sorry, wait. Can you make that shorter?"]
    [cut] = [e for e in final if e["cut"] and e["unheard"]][-1:]
    said = cut["text"].removesuffix("…").split() + cut["unheard"].split()  # as far as it was generated
    assert cut["text"].startswith("Paris") and said == "Paris has a long and fascinating history.".split()[:len(said)]

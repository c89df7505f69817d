"""The call bridge end to end: the real relay on loopback between a Twilio leg and the Realtime stand-in."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import signal
import time

import aiohttp
import pytest
from support import RawLeg, make_config, process_env, relay_process, start_relay, start_standin, until

import simulate
from config import VadType
from standins.openai_service import AssistantTurn, RealtimeSession, RealtimeStandIn, client_event_problems


def _noise(n: int, seed: int) -> bytes:
    """Random µ-law bytes avoiding 0xFF/0x7F (silence), so every payload is unique."""
    rng = random.Random(seed)
    return bytes(rng.randrange(0, 0x7F) for _ in range(n))


async def _collect_audio(leg: RawLeg, nbytes: int, echo_marks: bool = True) -> tuple[bytes, list[str]]:
    """Read relay messages until ``nbytes`` of media and the mark after it arrived; returns audio and the
    event order."""
    audio, order = bytearray(), []
    while len(audio) < nbytes or order[-1] != "mark":
        event = await leg.recv()
        assert event is not None, "relay closed the call early"
        assert event["streamSid"] == leg.stream_sid
        order.append(event["event"])
        if event["event"] == "media":
            audio += base64.b64decode(event["media"]["payload"])
        elif event["event"] == "mark" and echo_marks:
            await leg.mark(event["mark"]["name"])
    return bytes(audio), order


async def _greeted_call(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                        seed: int) -> tuple[RealtimeStandIn, str, RawLeg]:
    """A call in progress: stand-in, relay and Twilio leg, with a 100 ms greeting heard and marked."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=_noise(800, seed))])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await _collect_audio(leg, 800)
    return standin, base, leg


async def test_whole_call_protocol(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """session.update goes first; every event the relay sends is a valid GA client event; caller audio
    held during setup reaches upstream byte for byte; the greeting follows session.updated."""
    greeting = _noise(4000, seed=1)
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=greeting, transcript="Hello Jordan")])
    standin.session_updated_delay_s = 0.3
    base = await start_relay(stack, make_config(url, vad_type=VadType.NONE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    sent = _noise(160 * 40, seed=2)
    for i in range(0, len(sent), 160):  # 800 ms of audio, most of it before session.updated
        await leg.media(sent[i : i + 160])
        await asyncio.sleep(0.02)
    heard, order = await _collect_audio(leg, len(greeting))
    assert heard == greeting
    assert order[:2] == ["media", "mark"] and order.count("media") == order.count("mark")
    session = standin.sessions[0]
    await until(lambda: bytes(standin.input_audio.get(id(session), b"")) == sent, what="caller audio upstream")
    received = [event for _, event in session.received]
    assert received[0]["type"] == "session.update"
    assert received[0]["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert received[0]["session"]["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
    assert session.invalid == [] and session.errors == []
    for event in received:
        assert client_event_problems(event) == [], event["type"]
    assert session.updated_at is not None
    assert len(session.append_times) == 40
    assert all(t >= session.updated_at for t in session.append_times)  # held until the session was ready
    after_update = [(t, e["type"]) for t, e in session.received if e["type"] != "session.update"]
    assert all(t >= session.updated_at for t, _ in after_update)
    assert [kind for _, kind in after_update] == ["conversation.item.create", "response.create"]
    system_text = received[[e["type"] for e in received].index("conversation.item.create")]["item"]["content"][0]
    assert "Jordan" in system_text["text"]
    headers = standin.handshake_headers[0]
    assert headers["Authorization"] == "Bearer " + make_config().openai_api_key
    assert "OpenAI-Beta" not in headers
    assert "Sec-WebSocket-Extensions" not in headers  # no permessage-deflate offered upstream
    await leg.stop()
    await leg.closed()


async def test_assistant_audio_in_order_with_marks(stack: contextlib.AsyncExitStack,
                                                   http: aiohttp.ClientSession) -> None:
    """Each audio delta reaches Twilio unchanged as one media message followed by its mark."""
    answer = _noise(8000 * 2, seed=3)
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=answer, delta_ms=(20, 300))])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    heard, order = await _collect_audio(leg, len(answer), echo_marks=False)
    assert heard == answer
    assert order == ["media", "mark"] * (len(order) // 2)
    await leg.ws.close()


async def test_realtime_error_keeps_the_call(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A Realtime error event is logged with type, code and message; the call goes on."""
    standin, _, leg = await _greeted_call(stack, http, seed=4)
    session = standin.sessions[0]
    await session.error("rate_limit_exceeded", "Slow down.", kind="rate_limit_error")
    await until(lambda: "code=rate_limit_exceeded message=Slow down." in caplog.text, what="error log")
    before = session.input_bytes
    await leg.media(_noise(160, 5))
    await until(lambda: session.input_bytes == before + 160, what="audio after the error")
    assert not leg.ws.closed
    assert "type=rate_limit_error" in caplog.text


async def test_twilio_stop_closes_upstream(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """Twilio's stop closes the Realtime socket."""
    standin, _, leg = await _greeted_call(stack, http, seed=7)
    await leg.stop()
    await until(lambda: standin.sessions[0].ws.closed, what="upstream closed")
    assert await leg.closed() == 1000


async def test_malformed_frames_are_dropped(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Non-JSON, binary and payload-less frames are logged once each and the call goes on."""
    standin, _, leg = await _greeted_call(stack, http, seed=8)
    for _ in range(3):
        await leg.ws.send_str("{not json")
        await leg.ws.send_bytes(b"\x00\x01")
        await leg.send({"event": "media", "streamSid": leg.stream_sid, "media": {}})
    session = standin.sessions[0]
    before = session.input_bytes
    await leg.media(_noise(160, 9))
    await until(lambda: session.input_bytes == before + 160, what="audio after bad frames")
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if w.startswith("non-JSON frame")]) == 1
    assert len([w for w in warnings if w.startswith("binary frame")]) == 1
    assert len([w for w in warnings if w.startswith("twilio media without a payload")]) == 1


async def test_concurrent_calls_are_isolated(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """Two calls at once: each hears only its own session's audio, each session gets only its caller's."""
    answers: dict[int, bytes] = {}

    def script(session: RealtimeSession) -> AssistantTurn:
        answers[id(session)] = _noise(4000, seed=len(answers) + 20)
        return AssistantTurn(ulaw=answers[id(session)])

    standin, url = await start_standin(stack, script)
    config = make_config(url, secondary_numbers=("+14155550111",), vad_type=VadType.NONE)
    base = await start_relay(stack, config)
    legs = [await RawLeg.open(http, base), await RawLeg.open(http, base)]
    await legs[0].start()
    await legs[1].start(caller="+14155550111")
    await until(lambda: len(standin.sessions) == 2 and all(s.updated_at for s in standin.sessions))
    spoken = [_noise(1600, 30), _noise(1600, 31)]
    for i in range(0, 1600, 160):
        for leg, audio in zip(legs, spoken, strict=True):
            await leg.media(audio[i : i + 160])
    heard = await asyncio.gather(*(_collect_audio(leg, 4000) for leg in legs))
    by_caller = {}
    for session in standin.sessions:
        text = next(e for _, e in session.received if e["type"] == "conversation.item.create")
        name = "primary" if "Jordan" in text["item"]["content"][0]["text"] else "secondary"
        by_caller[name] = session
    assert {heard[0][0], heard[1][0]} == set(answers.values())
    for leg_index, name in enumerate(["primary", "secondary"]):
        session = by_caller[name]
        assert heard[leg_index][0] == answers[id(session)]
        assert bytes(standin.input_audio[id(session)]) == spoken[leg_index]


async def test_relay_process_serves_a_call_and_drains_on_sigterm(stack: contextlib.AsyncExitStack,
                                                                  http: aiohttp.ClientSession) -> None:
    """`python relay.py` serves a whole call from a Twilio-like client; SIGTERM with no drain time left
    ends it with its closing line and 1001, and exits 0 (the drain itself: test_operations)."""
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=_noise(1600, 40))])
    env = process_env(OPENAI_API_KEY="sk-sub", OPENAI_REALTIME_URL=url, PORT=str(simulate.free_port()),
                      ALLOW_ALL_CALLERS="true", VAD_TYPE="server_vad", DRAIN_TIMEOUT_S="0",
                      ALLOW_UNSIGNED_WEBHOOKS="true")
    async with relay_process(http, env) as relay:
        leg = await RawLeg.open(http, relay.base_url)
        await leg.start(key="sk-sub")
        heard, _ = await _collect_audio(leg, 1600)
        assert heard == _noise(1600, 40)
        started = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        assert await leg.closed(timeout=10) == 1001
        assert await asyncio.wait_for(relay.process.wait(), 10) == 0
        assert time.monotonic() - started < 7
    assert "call ended" in relay.output and "reason=server restarting" in relay.output
    assert "sk-sub" not in relay.output

"""Hostile and broken peers: a stalled or mute upstream, a caller gone mid-send, bad frames, oversized deltas."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

import aiohttp
import pytest
from support import RawLeg, health, make_config, start_relay, start_standin, until
from test_bridge_memory import MemoryLeg

from bridge import call, output, watchdog
from bridge.call import Call
from bridge.events import Stats
from model import realtime
from model import websocket as realtime_ws
from phones.leg import PhoneStart
from standins.openai_service import AssistantTurn


async def test_a_stalled_realtime_socket_ends_the_call_as_a_failure(stack: contextlib.AsyncExitStack,
                                                                    http: aiohttp.ClientSession,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that stops reading (pings unanswered) is detected by ping timeout instead of leaving the caller on a
    silent line for ~50 s; the reconnect stalls too, so the caller hears the apology and the call ends 1011, counted
    as an error."""
    monkeypatch.setattr(realtime_ws, "HEARTBEAT_S", 0.5)  # a ping after 0.5 s of silence, a pong within 0.25 s
    monkeypatch.setattr(realtime_ws, "CLOSE_TIMEOUT_S", 0.5)  # a stalled service answers no close either
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    standin.stall = True
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    started = time.monotonic()
    heard, code = await leg.until_closed(timeout=10)
    assert code == 1011 and heard.endswith(output.APOLOGY_FILE.read_bytes()) and len(standin.sessions) == 2
    assert time.monotonic() - started < 5
    assert (await health(http, base))[1]["errors"] == 1


async def test_a_service_that_streams_but_no_longer_reads_is_found_within_10_s(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """A service that keeps streaming its answer but stops reading (no pong, the relay's frames unread) is
    found by the relay's own pings within 10 s, whatever it sends, and handled like a dropped session: the
    call moves to a new one."""
    caplog.set_level(logging.INFO)
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 8000 * 30)])  # a 30 s answer
    standin.deaf = True
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    first = await until(lambda: standin.sessions and standin.sessions[0], what="the first session")
    await until(lambda: first.active is not None, what="the greeting streaming")
    deaf_at = time.monotonic()
    await until(lambda: len(standin.sessions) == 2, timeout=12, what="a second session")
    assert time.monotonic() - deaf_at < 10
    assert "closed the session code=1006 reason=no pong within 2.5 s; reconnecting" in caplog.text
    await leg.ws.close()


async def test_a_response_create_never_answered_ends_the_call(stack: contextlib.AsyncExitStack,
                                                              http: aiohttp.ClientSession,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A greeting that never comes (no response.created after response.create) ends the call with 1011."""
    monkeypatch.setattr(realtime, "RESPONSE_CREATED_TIMEOUT_S", 1.0)
    standin, url = await start_standin(stack)
    standin.ignore_response_create = True
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    assert await leg.closed(timeout=10) == 1011
    assert "no response.created within 1s of response.create" in caplog.text
    assert (await health(http, base))[1]["errors"] == 1


class GoneLeg(MemoryLeg):
    """A caller whose socket resets after a few messages, as aiohttp reports it."""

    def __init__(self, sends_before_reset: int) -> None:
        super().__init__()
        self.left = sends_before_reset

    async def send_audio(self, payload: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await super().send_audio(payload)


async def test_a_caller_gone_mid_audio_is_a_normal_end(stack: contextlib.AsyncExitStack,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A hang-up while assistant audio is being sent ends the call as a hang-up: no traceback, no error counted."""
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 16000, delta_ms=(40, 40))])
    leg, stats = GoneLeg(sends_before_reset=3), Stats()
    running = asyncio.create_task(Call(leg, make_config(url), stats, None).run())
    leg.inbox.put_nowait(PhoneStart("MEM-9", "", {"caller_number": "+14155550100"}))
    end = await asyncio.wait_for(running, 10)
    assert (end.reason, end.failed, stats.errors) == ("memory hung up", False, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_bad_frames_both_ways_leave_the_call_alive(stack: contextlib.AsyncExitStack,
                                                         http: aiohttp.ClientSession,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Media that is not base64, and JSON nested too deep for the parser, from either peer: dropped with one warning
    per kind, nothing forwarded, the call goes on."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await until(lambda: standin.sessions and standin.sessions[0].updated_at, what="session")
    session = standin.sessions[0]
    nested = "[" * 5_000 + "]" * 5_000  # 10 KB, under the phone's 64 KB message limit, too deep for json
    for bad in ("@@@@", "AAA", "AAA=A===", "€€€€"):
        await leg.send({"event": "media", "streamSid": leg.stream_sid, "media": {"payload": bad}})
    await leg.ws.send_str(nested)
    await session.ws.send_str(nested)
    before = session.input_bytes
    await leg.media(b"\x20" * 160)
    await until(lambda: session.input_bytes == before + 160, what="good audio after the bad")
    assert session.errors == [] and session.invalid == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if w.startswith("twilio media that is not base64 dropped")]) == 1
    assert len([w for w in warnings if w.startswith("non-JSON frame from twilio ignored")]) == 1
    assert len([w for w in warnings if w.startswith("malformed realtime event ignored (json: non-JSON frame)")]) == 1
    assert not leg.ws.closed


async def test_an_oversized_delta_reaches_the_phone_in_pieces(stack: contextlib.AsyncExitStack,
                                                              http: aiohttp.ClientSession) -> None:
    """A 3 s delta (32,000 base64 characters) is sent as media messages of at most 16,000 characters, each with its
    mark, the audio unchanged."""
    answer = bytes(range(0, 0x7F)) * 189  # 24,003 bytes, one delta
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=answer, delta_ms=(4000, 4000))])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    kinds, audio = [], b""
    while len(audio) < len(answer):
        message = await leg.recv_kind()
        assert message is not None
        kinds.append(message[0])
        if message[0] == "media":
            assert len(message[1]) <= output.MAX_PAYLOAD_CHARS
            audio += base64.b64decode(message[1])
    assert audio == answer
    assert kinds == ["media", "mark"] * 2 + ["media"]
    await leg.stop()


async def test_a_flood_of_assistant_audio_queues_at_most_the_bound_at_the_phone(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """A service that sends five minutes of audio in a fraction of a second: the phone is sent what fits in
    MAX_QUEUED_AUDIO_S ahead of real time (here 10 s), the rest is dropped with one warning, every message sent
    still has its mark, and the call goes on."""
    flood = b"\x10" * 8000 * 300
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=flood, delta_ms=(1000, 1000), speed=1000.0)])
    base = await start_relay(stack, make_config(url, max_queued_audio_s=10.0))
    leg = await RawLeg.open(http, base)
    await leg.start()
    heard, marks = 0, 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # the whole flood has come and gone upstream by then
        with contextlib.suppress(TimeoutError):
            message = await leg.recv_kind(timeout=0.2)
            assert message is not None
            if message[0] == "media":
                heard += len(base64.b64decode(message[1]))
            elif message[0] == "mark":
                marks += 1
    assert 10 * 8000 <= heard <= 12 * 8000 and marks == heard // 8000  # one mark per 1 s message
    dropped = [r for r in caplog.records if "ahead of the phone dropped" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
    assert not leg.ws.closed
    await leg.stop()


async def test_a_silent_phone_is_hung_up(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A phone that sends no frame at all (a half-open socket: a live one sends 50 a second) is hung up, not held."""
    monkeypatch.setattr(watchdog, "PHONE_SILENCE_S", 1.5)
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.start()
    assert await leg.closed(timeout=10) == 1000
    assert "no frame from the phone for 2s; hanging up" in caplog.text
    await until(lambda: "reason=twilio silent" in caplog.text, what="the call's end logged")
    assert (await health(http, base))[1]["errors"] == 0


@pytest.mark.parametrize("stream_sid", ["MZ1\ncall started call_sid=CAforged", "MZ" + "7" * 30_000],
                         ids=["newline", "30-kb"])
async def test_identifiers_from_peers_are_bounded_before_any_log(stack: contextlib.AsyncExitStack,
                                                                 http: aiohttp.ClientSession,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 stream_sid: str) -> None:
    """A streamSid with a line break (a forged log line) or of 30 KB is refused with one warning; it is never logged
    or echoed, and OpenAI is not contacted."""
    monkeypatch.setattr(call, "START_TIMEOUT_S", 1.0)
    standin, url = await start_standin(stack)
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base)
    await leg.send({"event": "start", "streamSid": stream_sid, "start": {"streamSid": stream_sid, "callSid": "CA1",
                                                                        "customParameters": {}}})
    assert await leg.closed(timeout=10) == 1000
    assert standin.sessions == []
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "start without a usable start.streamSid dropped" in m]) == 1
    assert not any(stream_sid[:20] in m for m in messages)


async def test_slowloris_connections_are_closed_and_calls_still_served(stack: contextlib.AsyncExitStack,
                                                                       http: aiohttp.ClientSession,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """100 clients that never finish their headers are closed after the idle timeout, and the relay answers real
    requests meanwhile (they were held for minutes before)."""
    import relay

    monkeypatch.setattr(relay, "IDLE_TIMEOUT_S", 1.0)
    base = await start_relay(stack, make_config())
    host, port = base.removeprefix("http://").split(":")
    slow = []
    for _ in range(100):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\nX-Slow: ")  # and never the rest
        slow.append((reader, writer))
    async with http.get(base + "/healthz") as resp:
        assert resp.status == 200
    started = time.monotonic()
    closed = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in slow)), 10)
    assert closed == [b""] * 100 and time.monotonic() - started < 5
    for _, writer in slow:
        writer.close()


async def test_a_caller_that_stops_reading_is_dropped_with_bounded_memory(stack: contextlib.AsyncExitStack,
                                                                          http: aiohttp.ClientSession,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A caller that keeps sending but never reads: the relay's sends wait on a full buffer (so its
    memory stays bounded while the service keeps streaming 10 minutes of audio), then the call is
    dropped with one log line, and the process serves the next call."""
    monkeypatch.setattr(watchdog, "PHONE_WRITE_TIMEOUT_S", 2)
    ten_minutes = AssistantTurn(ulaw=b"\xff" * 8 * 600_000, delta_ms=(200, 200), speed=2000.0)
    _standin, url = await start_standin(stack, [ten_minutes, AssistantTurn(ulaw=b"\x10" * 800)])
    # All ten minutes may be sent (MAX_QUEUED_AUDIO_S's own bound is tested above): the socket's buffer is the limit.
    base = await start_relay(stack, make_config(url, max_queued_audio_s=3600.0))
    leg = await RawLeg.open(http, base)  # aiohttp's client stops reading its socket once 64 KiB wait unread
    await leg.start()
    frame = b"\xff" * 160

    async def keep_talking() -> None:
        while True:
            await leg.media(frame)
            await asyncio.sleep(0.02)

    talking = asyncio.create_task(keep_talking())
    try:
        await until(lambda: "not read" in caplog.text, timeout=20, what="the stalled caller dropped")
    finally:
        talking.cancel()
        with contextlib.suppress(BaseException):
            await talking
    lines = [r for r in caplog.records if "has not read" in r.getMessage()]
    assert len(lines) == 1
    unsent = int(lines[0].getMessage().split("(")[1].split()[0])
    assert unsent < 1_000_000  # bytes held for this caller when it was dropped, of ~6.4 MB the service sent
    await until(lambda: "reason=twilio not reading" in caplog.text, what="the call's end logged")
    other = await RawLeg.open(http, base)
    await other.start()
    assert await other.recv_kind() is not None


async def test_a_caller_offering_compression_gets_plain_frames(stack: contextlib.AsyncExitStack,
                                                               http: aiohttp.ClientSession) -> None:
    """A media-stream client that offers permessage-deflate is answered without it (accepting would cost a
    compressor per call: ~250 KiB and a fifth more CPU in the capacity issue's measurement), and the call runs.
    (Both networks' streams are accepted by the same ``relay._bridge``.)"""
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 1600)])
    base = await start_relay(stack, make_config(url))
    leg = await RawLeg.open(http, base, compress=15)
    assert leg.ws.compress == 0
    await leg.start()
    assert len(await leg.listen(1600)) == 1600
    await leg.stop()
    assert await leg.closed() is not None

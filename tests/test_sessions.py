"""Calls outlive their Realtime session: the 60-minute expiry, a planned rollover, a dropped socket, and the
apology when no session can be had. The relay runs on loopback against the Realtime stand-in, which can expire,
drop and refuse sessions."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import RawLeg, health, make_config, start_relay, start_standin, until

import audio
import simulate
from bridge import output, prompts, upstream
from bridge.prompts import replay_intro
from config import VadType
from standins.openai_service import AssistantTurn, RealtimeSession, RealtimeStandIn, WebSearchScript

GREETING = bytes(range(0x10, 0x60)) * 20  # 200 ms, no byte of silence
ANSWER = bytes(range(0x20, 0x70)) * 40
LATER = bytes(range(0x30, 0x78)) * 30
APOLOGY = output.APOLOGY_FILE.read_bytes()


def _script(*turns: AssistantTurn) -> Callable[[RealtimeSession], AssistantTurn]:
    """One script for the whole call, whichever session plays the next turn."""
    queue = deque(turns)
    return lambda session: queue.popleft() if queue else AssistantTurn(ulaw=audio.ULAW_SILENCE * 800)




async def _hear_until(leg: RawLeg, ending: bytes) -> bytes:
    """Everything heard (marks echoed) until the audio ends with ``ending``."""
    heard = b""
    while not heard.endswith(ending):
        heard += await leg.listen(1)
    return heard


async def _greeted_call(stack: contextlib.AsyncExitStack,
                        http: aiohttp.ClientSession) -> tuple[RealtimeStandIn, str, RawLeg]:
    """A call without VAD whose greeting has been heard and whose response is done."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING)])
    base = await start_relay(stack, make_config(url, vad_type=VadType.NONE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await until(lambda: standin.sessions[0].done_at, what="the greeting's response.done")
    return standin, base, leg


def _transcribed(session: RealtimeSession) -> int:
    return sum(event["type"] == "conversation.item.input_audio_transcription.completed" for event in session.sent)


async def test_an_expired_session_is_replaced_and_the_conversation_replayed(stack: contextlib.AsyncExitStack,
                                                                            http: aiohttp.ClientSession) -> None:
    """At the service's 60-minute limit (``session_expired``, close 1001) the call moves to a new session: the
    same session.update, the conversation as text (caller transcripts, assistant transcripts), no second
    greeting, and the caller's next turn is answered there. Counted, and not as an error."""
    standin, url = await start_standin(stack, _script(
        AssistantTurn(ulaw=GREETING, transcript="Hello Jordan, how can I help?"),
        AssistantTurn(ulaw=ANSWER, transcript="Paris began as a Celtic village."),
        AssistantTurn(ulaw=LATER, transcript="It was called Lutetia."),
    ))
    standin.caller_transcripts = ["Tell me about Paris.", "What was its Roman name?"]
    base = await start_relay(stack, make_config(url, metrics=True))
    leg = await RawLeg.open(http, base)
    await leg.start()
    assert await leg.listen(len(GREETING)) == GREETING
    await leg.say("caller_question")
    assert await leg.listen(len(ANSWER)) == ANSWER
    first = standin.sessions[0]
    await until(lambda: _transcribed(first) == 1, what="the caller's transcript")
    await asyncio.sleep(0.05)

    await first.expire()
    await until(lambda: len(standin.sessions) == 2 and len(standin.sessions[1].replayed()) == 3,
                what="a new session with the replay")
    second = standin.sessions[1]
    assert second.received[0][1] == first.received[0][1]  # the same session.update
    assert second.system_texts() == [replay_intro("Jordan")]
    assert second.replayed() == [("assistant", "Hello Jordan, how can I help?"), ("user", "Tell me about Paris."),
                                 ("assistant", "Paris began as a Celtic village.")]
    await leg.say("caller_search")
    assert await leg.listen(len(LATER)) == LATER
    assert second.invalid == [] and second.errors == []
    assert not [e for _, e in second.received if e["type"] == "response.create"]  # VAD answered; no greeting
    _, body = await health(http, base)
    assert (body["session_replacements"], body["errors"], body["connections"]["active"]) == (1, 0, 1)
    async with http.get(base + "/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    rollovers = {s.labels["cause"]: s.value for s in families["relay_session_rollovers"].samples
                 if s.name == "relay_session_rollovers_total"}
    assert rollovers == {"expired": 1.0}


async def test_a_planned_rollover_waits_for_a_quiet_moment(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """With ``SESSION_ROLLOVER_S`` passed mid-answer, the new session opens only once the answer has played and the
    line has been quiet; caller audio is held for well under a second; the old session is closed 1000 by the relay;
    key presses go on to be answered in the new one."""
    monkeypatch.setattr(upstream, "ROLLOVER_QUIET_S", 0.3)
    monkeypatch.setattr(prompts, "DTMF_SEQUENCE_GAP_S", 0.1)
    long_answer = bytes(range(0x20, 0x70)) * 200  # 2 s: the rollover falls due while it plays
    standin, url = await start_standin(stack, _script(
        AssistantTurn(ulaw=GREETING, transcript="Hello Jordan."),
        AssistantTurn(ulaw=long_answer, transcript="One two three four five six seven eight.", speed=1.0),
        AssistantTurn(ulaw=LATER, transcript="Noted."),
    ))
    base = await start_relay(stack, make_config(url, vad_type=VadType.NONE, session_rollover_s=1.0))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await leg.dtmf("1")
    heard = await leg.listen(len(long_answer))
    answered_at = asyncio.get_running_loop().time()
    assert heard == long_answer and len(standin.sessions) == 1  # due at 1 s, but the answer was playing
    await until(lambda: len(standin.sessions) == 2 and standin.sessions[1].replayed(), timeout=5,
                what="the rollover")
    assert asyncio.get_running_loop().time() - answered_at >= 0.25  # the quiet moment was awaited
    first, second = standin.sessions
    assert second.replayed() == [("assistant", "Hello Jordan."),
                                 ("assistant", "One two three four five six seven eight.")]
    await until(lambda: first.ws.closed, what="the old session closed")
    assert first.ws.close_code == 1000
    await leg.dtmf("2")
    assert await leg.listen(len(LATER)) == LATER
    assert any(text == "The caller pressed 2." for text in second.system_texts())
    assert (await health(http, base))[1]["session_replacements"] == 1
    [gap_ms] = [int(r.message.split(" in ")[1].split(" ms")[0]) for r in caplog.records
                if r.message.startswith("realtime session replaced (rollover)")]
    assert gap_ms < 1000


async def test_a_drop_mid_answer_reconnects_and_the_answer_resumes(stack: contextlib.AsyncExitStack,
                                                                   http: aiohttp.ClientSession) -> None:
    """A session lost mid-answer (no close frame) is reconnected once: the replay holds what had been said, the
    new session is asked to answer, and the caller hears that answer; the call is not counted as an error."""
    slow = bytes(range(0x20, 0x70)) * 400  # 4 s, generated in real time: the drop comes in the middle
    standin, url = await start_standin(stack, _script(
        AssistantTurn(ulaw=GREETING, transcript="Hello Jordan."),
        AssistantTurn(ulaw=slow, transcript="Paris began as a Celtic village on the Seine.", speed=1.0),
        AssistantTurn(ulaw=LATER, transcript="As I was saying, the Parisii lived there."),
    ))
    base = await start_relay(stack, make_config(url, vad_type=VadType.NONE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await leg.dtmf("1")
    await leg.listen(len(slow) // 4)
    standin.sessions[0].drop()
    await until(lambda: len(standin.sessions) == 2, what="the reconnect")
    second = standin.sessions[1]
    await _hear_until(leg, LATER)  # what was sent before the drop plays out, then the new answer
    roles = [role for role, _ in second.replayed()]
    assert roles == ["assistant", "assistant"] and second.replayed()[1][1].startswith("Paris")
    assert [e["type"] for _, e in second.received][-1] == "response.create"
    _, body = await health(http, base)
    assert (body["session_replacements"], body["errors"], body["upstream_lost"]) == (1, 0, 0)


async def test_with_the_service_gone_the_caller_hears_the_apology(stack: contextlib.AsyncExitStack,
                                                                  http: aiohttp.ClientSession,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A drop, and the service refuses the reconnect: the caller hears the bundled apology, whole, then the stream
    closes 1011; /health counts the call as lost."""
    standin, base, leg = await _greeted_call(stack, http)
    standin.refuse = True
    standin.sessions[0].drop()
    heard, code = await leg.until_closed()
    assert heard == APOLOGY and code == 1011
    assert "no new realtime session after it dropped: realtime connect failed" in caplog.text
    _, body = await health(http, base)
    assert (body["upstream_lost"], body["errors"], body["connections"]["active"]) == (1, 1, 0)


async def test_a_second_drop_soon_after_a_reconnect_ends_with_the_apology(stack: contextlib.AsyncExitStack,
                                                                          http: aiohttp.ClientSession) -> None:
    """A service that keeps failing is not retried over and over: a drop within RECONNECT_WINDOW_S of the last
    reconnect ends the call with the apology."""
    standin, _, leg = await _greeted_call(stack, http)
    standin.sessions[0].drop()
    await until(lambda: len(standin.sessions) == 2 and standin.sessions[1].updated_at, what="the reconnect")
    await asyncio.sleep(0.1)
    standin.sessions[1].drop()
    heard, code = await leg.until_closed()
    assert heard == APOLOGY and code == 1011 and len(standin.sessions) == 2


async def test_unreachable_at_the_start_the_caller_hears_the_apology(stack: contextlib.AsyncExitStack,
                                                                     http: aiohttp.ClientSession,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """When the service cannot be reached for a new call, the caller hears the apology instead of silence, the
    failure is logged once, and the stream closes 1011."""
    base = await start_relay(stack, make_config(f"ws://127.0.0.1:{simulate.free_port()}/v1/realtime"))
    leg = await RawLeg.open(http, base)
    await leg.start()
    heard, code = await leg.until_closed()
    assert heard == APOLOGY and code == 1011
    assert len([r for r in caplog.records if r.message.startswith("realtime connect failed")]) == 1
    _, body = await health(http, base)
    assert (body["errors"], body["upstream_lost"]) == (1, 1)


async def test_a_tool_answer_after_a_reconnect_goes_to_the_new_session(stack: contextlib.AsyncExitStack,
                                                                       http: aiohttp.ClientSession) -> None:
    """A tool still running when its session drops is answered in the new session as a system message (the new
    session knows no call_id), and the answer that follows is heard."""
    standin, url = await start_standin(stack, _script(
        AssistantTurn(ulaw=GREETING),
        AssistantTurn(function_calls=[("gpt_web_search", {"query": "weather in Paris"})]),
        AssistantTurn(ulaw=LATER, transcript="Sunny."),
    ))
    standin.web_search = WebSearchScript(delay_ms=800)
    base = await start_relay(stack, make_config(url, vad_type=VadType.NONE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await leg.listen(len(GREETING))
    await leg.dtmf("1")
    await until(lambda: len(standin.sessions[0].done_at) == 2, timeout=5, what="the tool call")
    standin.sessions[0].drop()
    await _hear_until(leg, LATER)  # waiting music, perhaps, then the answer
    assert len(standin.responses_requests) == 1
    second = standin.sessions[1]
    assert second.function_outputs == []
    assert any(text.startswith('Your gpt_web_search call returned: {"ok": true')
               for text in second.system_texts())

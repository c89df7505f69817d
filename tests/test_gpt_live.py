"""GPT-Live end to end: the real relay on loopback between a phone leg and the GPT-Live stand-in (every event
validated with ``openai.types.live``), its wire module and its sans-I/O state, and the main calls over both
voice APIs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ROOT, RawLeg, make_config, process_env, speech, start_relay, start_standin, until

import audio
import simulate
from bridge.events import CallEvent, CallEventKind
from config import Config, ConfigError, VoiceApi
from model import live_wire as wire
from model.factory import startup_warnings
from model.live_state import BACKEND_BUDGET, MAX_OUTPUT_CHARS, PLACEHOLDER, LiveTurns, ToolLedger
from model.session import (
    AssistantAudioDone,
    AssistantTranscriptDelta,
    AssistantTranscriptDone,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTranscriptDelta,
    CallerTranscriptDone,
    CallerTurn,
    FunctionCall,
    ResponseDone,
    ResponseStarted,
)
from ops.metrics import Metrics
from standins.live_service import LiveSession as LiveStandInSession
from standins.openai_service import AssistantTurn, RealtimeStandIn
from standins.phone_network import CallerTurn as ScriptedCaller
from standins.scenario import Scenario, default_scenario
from standins.validation import live_client_event_problems, live_server_event_problems

LIVE = {"voice_api": VoiceApi.LIVE}


def _noise(n: int, seed: int) -> bytes:
    """Random µ-law bytes avoiding 0xFF/0x7F (silence)."""
    rng = random.Random(seed)
    return bytes(rng.randrange(0, 0x7F) for _ in range(n))


def received(session: LiveStandInSession, kind: str) -> list[dict[str, Any]]:
    return [event for _, event in session.received if event.get("type") == kind]


async def _live_call(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, script: list[AssistantTurn],
                     **overrides: Any) -> tuple[RealtimeStandIn, RawLeg]:
    standin, url = await start_standin(stack, script)
    base = await start_relay(stack, make_config(url, **{**LIVE, **overrides}))
    leg = await RawLeg.open(http, base)
    await leg.start()
    return standin, leg


async def _heard(leg: RawLeg, nbytes: int) -> bytes:
    """Read the relay's messages, echoing marks, until ``nbytes`` of media have come."""
    heard = bytearray()
    while len(heard) < nbytes:
        message = await leg.recv()
        assert message is not None, "the relay closed the call"
        if message["event"] == "media":
            heard += base64.b64decode(message["media"]["payload"])
        elif message["event"] == "mark":
            await leg.mark(message["mark"]["name"])
    return bytes(heard)


# --- The main calls, over both voice APIs -------------------------------------------------------


def test_the_simulator_command_over_gpt_live(tmp_path: Path) -> None:
    """`python simulate.py --voice-api live` holds the default call over GPT-Live and says how the barge-in went;
    the relay's log at DEBUG has a few lines a second, never a payload, and the billed seconds at the end."""
    out = tmp_path / "call.wav"
    proc = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--voice-api", "live", "--out", str(out),
                           "--verbose"], cwd=tmp_path, env=process_env(LOG_LEVEL="DEBUG", COLUMNS="120"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "(GPT-Live; no account, no network)" in lines[0] + lines[1]
    assert "call completed as scripted" in lines and "barge-ins: 1, marks echoed: " in proc.stdout
    assert any(line.startswith("  barge-in: GPT-Live yielded after saying") for line in lines)
    assert any("live     delegates gpt_web_search" in line for line in lines)
    assert any("caller   hears waiting music" in line for line in lines)
    assert any("session.closed close_requested" in line for line in lines)
    ended = [line for line in proc.stderr.splitlines() if "call ended" in line]
    assert len(ended) == 1 and " billed_s=" in ended[0]
    assert len(proc.stderr.splitlines()) <= 20 * 45
    assert audio.load_wav(out).duration_ms > 15000


@pytest.mark.parametrize("phone", ["plivo", "telnyx"])
async def test_the_default_call_over_gpt_live(phone: str) -> None:
    """The default scenario (greeting, a barge-in, a web search with waiting music, the goodbye and the hang-up)
    holds over GPT-Live on either network, as it does over Realtime (``test_simulator.py``: the same call through
    the command line): every event the relay sent was valid, each tool call was answered once, the goodbye was
    heard in full before the line closed."""
    result = await simulate.simulate_call(default_scenario(), seed=11, phone=phone, voice_api=VoiceApi.LIVE)
    assert result.ok, result.problems
    assert result.standin is not None
    [session] = result.standin.live_sessions
    assert not result.standin.sessions
    names = [json.loads(o["output"]).get("ok") for o in session.function_outputs]
    assert names == [True, True]  # the search and end_call, once each
    assert len(received(session, "response.create")) == 2  # one per batch of outputs
    [(_, said, heard, lag)] = result.live_barge_ins()
    assert heard == said  # nothing the model said was dropped; nothing more was played
    assert 0 <= lag < 150  # the phone stopped within one delta of the model
    assert session.closed_reason == "close_requested"


async def test_a_gpt_live_session_is_configured_for_the_phone(stack: contextlib.AsyncExitStack,
                                                             http: aiohttp.ClientSession) -> None:
    """session.start goes first, once: µ-law 8 kHz both ways, the voice, the tools on a Responses backend
    (update_mic_distance left out); the caller's audio held until session.started reaches the model unchanged;
    the greeting is a speakable context append naming the caller; the model's speech reaches the phone
    byte for byte and its silence does not."""
    greeting = _noise(2400, 1)
    standin, leg = await _live_call(stack, http, [AssistantTurn(greeting, "Hello Jordan.")])
    await leg.media(_noise(160, 2))
    heard = await _heard(leg, len(greeting))
    assert heard[:len(greeting)] == greeting
    [session] = standin.live_sessions
    kinds = [event["type"] for _, event in session.received]
    assert kinds[:2] == ["session.start", "session.commentary.append"] and kinds.count("session.start") == 1
    config = received(session, "session.start")[0]["session"]
    assert config["model"] == "gpt-live-1.1" and config["audio"] == {"format": {"type": "audio/pcmu", "rate": 8000},
                                                                      "output": {"voice": "cedar"}}
    backend = config["delegation"]["responses"]
    assert backend["model"] == "gpt-5.6-luna"
    assert [tool["name"] for tool in backend["tools"]] == ["end_call", "send_email", "gpt_web_search"]
    [greet] = received(session, "session.commentary.append")
    assert "Jordan" in greet["content"] and greet["delegation_id"] is None
    assert session.invalid == [] and session.errors == []
    assert await _silent_for(leg, 0.5)  # the model streams silence now: none of it reaches the phone
    await leg.stop()
    await until(lambda: session.closed_reason == "close_requested", what="session.close on the phone's stop")
    assert await leg.closed() == 1000


async def _silent_for(leg: RawLeg, seconds: float) -> bool:
    """No media message comes within ``seconds``."""
    try:
        message = await leg.recv(timeout=seconds)
    except TimeoutError:
        return True
    return message is None or message.get("event") != "media"


async def test_a_refused_session_start_is_one_log_line_and_the_apology(stack: contextlib.AsyncExitStack,
                                                                       http: aiohttp.ClientSession,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A model the service refuses: one error line naming its error, the caller hears the apology, the call
    closes 1011."""
    _, leg = await _live_call(stack, http, [], live_model="gpt-live-nonexistent")
    apology = bytearray()
    while (message := await leg.recv()) is not None:
        if message["event"] == "media":
            apology += base64.b64decode(message["media"]["payload"])
        elif message["event"] == "mark":
            await leg.mark(message["mark"]["name"])
    assert len(apology) > 8000 and await leg.closed() == 1011
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "model_not_found" in errors[0] and "apology" in errors[0]


async def test_unknown_and_malformed_events_leave_the_call_alone(stack: contextlib.AsyncExitStack,
                                                                 http: aiohttp.ClientSession,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An event type the relay does not know is logged at DEBUG only; a malformed one is warned about once;
    the call goes on."""
    standin, leg = await _live_call(stack, http, [AssistantTurn(_noise(800, 3), "Hi.")] * 2)
    await _heard(leg, 800)
    [session] = standin.live_sessions
    for _ in range(3):
        await session.send_raw(json.dumps({"type": "session.future_event", "event_id": "x"}))
        await session.send_raw(json.dumps({"type": "session.output_transcript.delta", "delta": 5}))
        await session.send_raw("{not json")
    await session.send({"type": "session.commentary.appended", "start_ms": 0, "end_ms": 0})
    await leg.dtmf("5")  # the call still works: the key press reaches the model and it answers
    await until(lambda: any("pressed 5" in e["content"] for e in received(session, "session.commentary.append")),
                what="the key press as a speakable append")
    await _heard(leg, 800)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "malformed live event" in w and "transcript" in w]) == 1
    assert len([w for w in warnings if "malformed live event" in w and "json" in w]) == 1
    assert not [w for w in warnings if "future_event" in w]


async def test_bad_tool_calls_get_error_outputs_and_the_call_goes_on(stack: contextlib.AsyncExitStack,
                                                                      http: aiohttp.ClientSession) -> None:
    """Bad JSON arguments, an unknown tool and a failing tool each get an error output, all in one batch
    before one response.create; the voice then speaks on."""
    answer = _noise(800, 5)
    script = [AssistantTurn(function_calls=[("gpt_web_search", "{not json"), ("no_such_tool", {}),
                                            ("send_email", {"subject": "x", "body": "y"})]),
              AssistantTurn(answer, "Sorry, that did not work.")]
    standin, leg = await _live_call(stack, http, script)
    heard = await _heard(leg, len(answer))
    assert heard[-len(answer):] == answer
    [session] = standin.live_sessions
    outputs = [json.loads(o["output"]) for o in session.function_outputs]
    assert [o["ok"] for o in outputs] == [False, False, False]
    kinds = [e["type"] for _, e in session.received]
    assert kinds.count("response.create") == 1 and kinds.index("response.create") > max(
        i for i, kind in enumerate(kinds) if kind == "response.item.create")


async def test_function_call_outputs_required_is_answered_with_a_placeholder(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """A call the backend cut short is not run; when the service says it still waits for its output, the relay
    answers it with a short placeholder and asks again, and the conversation goes on."""
    answer = _noise(800, 6)
    script = [AssistantTurn(function_calls=[("end_call", {"reason": "x"}), ("send_email", {})]),
              AssistantTurn(answer, "Goodbye.")]
    standin, url = await start_standin(stack, script)
    standin.live_cut_short = {"send_email"}
    base = await start_relay(stack, make_config(url, **LIVE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await _heard(leg, len(answer))
    [session] = standin.live_sessions
    [error] = session.errors
    assert error["code"] == "function_call_outputs_required"
    outputs = [o["output"] for o in session.function_outputs]
    assert outputs[-1] == PLACEHOLDER and len(outputs) == 2
    assert len(received(session, "response.create")) == 2


async def test_expiry_moves_the_call_to_a_new_session_with_the_conversation(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """session.closed with reason expired: a new session opens with the conversation so far in its input (no
    second greeting), the caller's audio goes on to it, and the call goes on."""
    first = _noise(1600, 7)
    standin, leg = await _live_call(stack, http, [AssistantTurn(first, "Hello Jordan, how can I help?")])
    await _heard(leg, len(first))
    [old] = standin.live_sessions
    await asyncio.sleep(1.0)  # the greeting's turn closes (its quiet gap)
    await old.expire()
    await until(lambda: len(standin.live_sessions) == 2 and standin.live_sessions[1].started_at, what="a new one")
    new = standin.live_sessions[1]
    history = received(new, "session.start")[0]["session"]["input"]
    assert history[0]["role"] == "developer" and "already under way" in history[0]["content"][0]["text"]
    assert history[1:] == [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": "Hello Jordan, how can I help?"}]}]
    assert not received(new, "session.commentary.append")  # no second greeting
    await leg.media(_noise(160, 8))
    await until(lambda: new._vad.pos_ms >= 20, what="caller audio on the new session")
    assert "live session replaced (expired)" in caplog.text


async def test_a_session_at_its_expires_at_is_replaced(stack: contextlib.AsyncExitStack,
                                                       http: aiohttp.ClientSession) -> None:
    """The service ends a session at the expires_at it announced: the call moves to a new one, and a second
    expiry is no more a failure than the first (no apology)."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800, 12), "Hi.")])
    standin.live_expires_in_s = 1.5
    base = await start_relay(stack, make_config(url, **LIVE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await _heard(leg, 800)
    await until(lambda: len(standin.live_sessions) >= 3, timeout=8, what="two expiries, two replacements")
    assert [s.closed_reason for s in standin.live_sessions[:2]] == ["expired", "expired"]
    assert not leg.ws.closed


async def test_a_session_is_rolled_over_at_a_quiet_moment_before_its_expires_at(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """A session that announced its end 2 minutes and 3 seconds away is moved at the first quiet moment after
    ROLLOVER_BEFORE_EXPIRY_S: the relay closes it itself, before the service would."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800, 13), "Hi.")])
    standin.live_expires_in_s = 123
    base = await start_relay(stack, make_config(url, **LIVE))
    leg = await RawLeg.open(http, base)
    await leg.start()
    await _heard(leg, 800)
    echo = asyncio.create_task(_heard(leg, 10**9))  # the phone reports the greeting's last mark played
    await until(lambda: len(standin.live_sessions) == 2 and standin.live_sessions[1].started_at, timeout=10,
                what="a planned rollover")
    await until(lambda: standin.live_sessions[0].closed_reason is not None, what="the old session closed")
    echo.cancel()
    assert standin.live_sessions[0].closed_reason == "close_requested"  # by the relay, not expired
    assert "live session replaced (rollover)" in caplog.text


async def test_session_closed_ends_the_session_even_if_the_socket_stays_open(
        stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """A session.closed (here for a safety filter, ``content``) that the service does not follow with a close:
    the relay closes the socket itself and reconnects once, the conversation replayed."""
    standin, leg = await _live_call(stack, http, [AssistantTurn(_noise(800, 14), "Hi.")])
    await _heard(leg, 800)
    old = standin.live_sessions[0]
    await old.send({"type": "session.closed", "reason": "content", "session": old.session, "usage": {"seconds": 2.0}})
    await until(lambda: len(standin.live_sessions) == 2 and standin.live_sessions[1].started_at, what="reconnect")
    assert old.ws.closed and not leg.ws.closed


async def test_a_drop_reconnects_once_then_apologises(stack: contextlib.AsyncExitStack,
                                                      http: aiohttp.ClientSession) -> None:
    """A dropped session is replaced once with the same replay; a second drop within the window ends the call
    with the apology (1011)."""
    standin, leg = await _live_call(stack, http, [AssistantTurn(_noise(800, 9), "Hi.")])
    await _heard(leg, 800)
    standin.live_sessions[0].drop()
    await until(lambda: len(standin.live_sessions) == 2 and standin.live_sessions[1].started_at, what="reconnect")
    assert received(standin.live_sessions[1], "session.start")[0]["session"]["input"][0]["role"] == "developer"
    standin.live_sessions[1].drop()
    while (message := await leg.recv()) is not None:
        if message["event"] == "mark":
            await leg.mark(message["mark"]["name"])
    assert await leg.closed() == 1011 and len(standin.live_sessions) == 2


async def test_billed_seconds_are_logged_at_the_end_and_counted(stack: contextlib.AsyncExitStack,
                                                                http: aiohttp.ClientSession,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The billed seconds of session.closed are on the call's last line."""
    _, leg = await _live_call(stack, http, [AssistantTurn(_noise(800, 10), "Hi.")])
    await _heard(leg, 800)
    await asyncio.sleep(0.5)
    await leg.stop()
    await until(lambda: "call ended" in caplog.text, what="the end of the call")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call ended")]
    billed = float(line.split("billed_s=")[1].split()[0])
    assert 0.5 <= billed <= 5


def test_billed_seconds_metric() -> None:
    metrics = Metrics(lambda: 0)
    metrics.on_event(CallEvent(CallEventKind.ENDED, "MZ1", 0.0, {"kind": "phone stop", "counts": {"billed_s": 42.5}}))
    assert "relay_model_billed_seconds_total 42.5" in metrics.render().decode()


# --- The wire module: every client event valid, every server event parsed ---------------------


def test_every_client_event_is_valid() -> None:
    tools = [{"type": "function", "name": "lookup", "description": "d",
              "parameters": {"type": "object", "properties": {}}}]
    session = wire.live_session(model="gpt-live-1.1", instructions="Be brief.", voice="marin",
                                backend_model="gpt-5.6-luna", tools=tools,
                                history=wire.history("intro", [("user", "hi"), ("assistant", "hello")]))
    events = [wire.session_start(session), json.loads(wire.input_audio_append("//8=")),
              wire.context_append("commentary", "Greet them."), wire.context_append("thinking", "x" * 5000),
              wire.context_append("instructions", "Be kind."), wire.function_call_output("call_1", "{}"),
              wire.response_create(), wire.session_close()]
    assert [live_client_event_problems(event) for event in events] == [[]] * len(events)
    assert len(events[3]["content"]) == wire.MAX_APPEND_CHARS


def test_history_keeps_the_newest_turns_within_its_limits() -> None:
    turns = [("user" if n % 2 else "assistant", f"turn {n}") for n in range(300)] + [("user", "")]
    items = wire.history("intro", turns)
    assert len(items) == wire.MAX_HISTORY_MESSAGES and items[-1]["content"][0]["text"] == "turn 299"
    long = [("user", "x" * 10_000)] * 5
    assert len(wire.history("intro", long)) == 3  # the budget holds two of them after the intro


@pytest.mark.parametrize(("event", "parsed"), [
    ({"type": "session.output_audio.delta", "delta": "AAAA"}, wire.OutputAudio("AAAA")),
    ({"type": "session.input_transcript.delta", "event_id": "e", "delta": " hi", "start_ms": 1, "end_ms": 2},
     wire.Transcript(True, " hi", 1, 2)),
    ({"type": "session.closed", "event_id": "e", "reason": "expired", "usage": {"seconds": 3.5},
      "session": {"id": "live_1", "expires_at": 1, "model": "gpt-live-1.1", "status": "active"}},
     wire.Closed("expired", 3.5)),
    ({"type": "response.event", "event_id": "e", "delegation_id": "d1", "event": {
        "type": "response.output_item.done", "output_index": 0, "item": {
            "type": "function_call", "status": "completed", "call_id": "c1", "name": "f", "arguments": "{}"}}},
     wire.Backend("d1", "response.output_item.done", FunctionCall("c1", "f", "{}"), "completed")),
    ({"type": "response.event", "event_id": "e", "delegation_id": "d1",
      "event": {"type": "response.failed", "response": {"id": "r"}}},
     wire.Backend("d1", "response.failed", status="failed")),
    ({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "c", "message": "m"}},
     wire.LiveError("invalid_request_error", "c", "m", None)),
])
def test_server_events_parse(event: dict[str, Any], parsed: object) -> None:
    assert live_server_event_problems(event) == []  # the shapes are the service's
    assert wire.parse_server_event(json.dumps(event)) == parsed


def test_silence_is_told_from_speech() -> None:
    assert wire.is_silence(base64.b64encode(b"\xff" * 800).decode())
    assert wire.is_silence(base64.b64encode(b"\x7f\xff" * 80).decode())
    assert not wire.is_silence(base64.b64encode(b"\xff" * 799 + b"\x10").decode())


# --- The sans-I/O state -----------------------------------------------------------------------


def test_turns_close_after_their_quiet_gap() -> None:
    events: Any = __import__("collections").deque()
    turns = LiveTurns(events)
    turns.asked_at = 0.0
    turn = turns.assistant_speech(0.1)
    turns.transcript(False, "Hello", 0.2)
    turns.transcript(True, " Hi", 0.5)
    turns.close_quiet(0.9)  # 0.7 s after the assistant's last: still open
    assert turns.speaking
    turns.close_quiet(1.0)
    assert list(events) == [
        ResponseStarted(turn, True), AssistantTranscriptDelta(turn, "Hello"), CallerSpeechStarted(),
        CallerTurn("live_caller_2"), CallerTranscriptDelta("live_caller_2", " Hi"), AssistantAudioDone(turn),
        AssistantTranscriptDone(turn, "Hello"), ResponseDone(turn, "completed", (), True),
    ]
    events.clear()
    turns.close_quiet(2.0)
    assert list(events) == [CallerTranscriptDone("live_caller_2", "Hi"), CallerSpeechStopped()]
    assert turns.assistant_speech(20.0) != turn and events[-1] == ResponseStarted("live_turn_3", False)


def test_a_request_mid_turn_makes_the_next_speech_its_answer() -> None:
    """A closing line asked for while the voice speaks (a restart's drain): the turn under way ends, the next
    speech is a new turn that answers the request, and the caller's turn is left as it was."""
    events: Any = __import__("collections").deque()
    turns = LiveTurns(events)
    first = turns.assistant_speech(0.0)
    turns.transcript(True, " wait", 0.1)
    turns.asked_at = 0.2
    turns.end_assistant_turn()
    assert events[-1] == ResponseDone(first, "completed", (), True) and not turns.speaking
    second = turns.assistant_speech(0.3)
    assert events[-1] == ResponseStarted(second, True)
    turns.close_quiet(1.0)
    assert CallerSpeechStopped() not in events  # the caller's turn is still open (1.5 s gap)


def test_the_ledger_hands_calls_over_once_and_keeps_the_budget() -> None:
    events: Any = __import__("collections").deque()
    ledger = ToolLedger(events)
    call = FunctionCall("c1", "f", "{}")
    ledger.on_backend("d1", call, "completed", None)
    ledger.on_backend("d1", FunctionCall("c2", "g", ""), "incomplete", None)
    ledger.voice_spoke()
    ledger.on_backend("d1", None, None, "completed")
    [done] = events
    assert done.function_calls == (call,) and done.spoke and not ledger.all_answered
    assert ledger.answer("c1", "x" * 10_000) == "x" * MAX_OUTPUT_CHARS + " [cut]" and ledger.all_answered
    assert ledger.strays() == ["c2"] and ledger.strays() == []
    for n in range(BACKEND_BUDGET[0]):
        ledger.answer(f"n{n}", "{}")
    assert ledger.answer("late", "{}") == PLACEHOLDER
    ledger.on_backend("d2", FunctionCall("c3", "f", "{}"), "completed", None)
    ledger.on_backend("d2", None, None, "failed")
    assert events[-1].function_calls == ()  # a failed response's calls are refused by the service


def test_a_flooding_service_is_held_to_bounds() -> None:
    """An endless transcript keeps MAX_TURN_CHARS; a response with a thousand calls runs
    MAX_CALLS_PER_RESPONSE; delegations never finished are forgotten past MAX_DELEGATIONS."""
    from model.live_state import MAX_CALLS_PER_RESPONSE, MAX_DELEGATIONS, MAX_TURN_CHARS

    events: Any = __import__("collections").deque()
    turns = LiveTurns(events)
    for n in range(5000):
        turns.transcript(False, "word ", n * 0.001)
    turns.close_quiet(100.0)
    done = [e for e in events if isinstance(e, AssistantTranscriptDone)]
    assert len(done[0].transcript) <= MAX_TURN_CHARS
    ledger = ToolLedger(events)
    for n in range(1000):
        ledger.on_backend("d1", FunctionCall(f"c{n}", "end_call", "{}"), "completed", None)
    ledger.on_backend("d1", None, None, "completed")
    assert len(events[-1].function_calls) == MAX_CALLS_PER_RESPONSE
    for n in range(1000):
        ledger.on_backend(f"unfinished{n}", None, None, None)
    assert ledger.running and len(ledger._delegations) == MAX_DELEGATIONS


# --- Configuration ------------------------------------------------------------------------------


def _env(**values: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test", **values}


def test_voice_api_settings_and_what_live_ignores() -> None:
    config = Config.from_env(_env(VOICE_API="live", VOICE="marin", VAD_TYPE="server_vad", NOISE_REDUCTION="off",
                                  OPENAI_LIVE_URL="ws://127.0.0.1:9/v1/live/sessions"))
    assert config.voice_api is VoiceApi.LIVE and config.live_model == "gpt-live-1.1"
    assert config.ignored_settings == ("VAD_TYPE", "NOISE_REDUCTION")
    [warning] = startup_warnings(config)
    assert warning.startswith("VOICE_API=live: VAD_TYPE, NOISE_REDUCTION ignored")
    assert startup_warnings(Config.from_env(_env(VOICE_API="live"))) == []
    assert Config.from_env(_env(VAD_TYPE="server_vad")).ignored_settings == ()  # Realtime uses them
    with pytest.raises(ConfigError) as refused:
        Config.from_env(_env(VOICE_API="gpt-live", OPENAI_LIVE_URL="https://x", VOICE="nobody"))
    message = str(refused.value)
    assert "VOICE_API must be one of realtime, live" in message and "OPENAI_LIVE_URL must be a ws://" in message


def test_live_voices_are_checked_against_the_live_list() -> None:
    assert Config.from_env(_env(VOICE_API="live", VOICE="vesper")).voice == "vesper"
    with pytest.raises(ConfigError, match="VOICE must be one of"):
        Config.from_env(_env(VOICE="vesper"))  # not a Realtime voice


async def test_the_conversation_turns_reach_the_log_over_gpt_live(caplog: pytest.LogCaptureFixture) -> None:
    """The caller's and the assistant's turns, grouped from the transcript deltas, are logged as for Realtime."""
    scenario = Scenario(
        assistant=[AssistantTurn(speech("assistant_greeting"), "Hi Jordan, how can I help?"),
                   AssistantTurn(speech("assistant_short"), "Paris began as a Celtic village.")],
        caller=[ScriptedCaller(speech("caller_question"), "Can you tell me something interesting about Paris?",
                               {"after": "assistant_done", "delay_ms": 600})],
        hangup={"after": "assistant_done", "delay_ms": 1200},
    )
    caplog.set_level(logging.INFO)
    result = await simulate.simulate_call(scenario, seed=2, voice_api=VoiceApi.LIVE)
    assert result.ok, result.problems
    said = [r.getMessage() for r in caplog.records if " said: " in r.getMessage()]
    assert [line.split(" stream_sid=")[0] for line in said] == [
        "assistant said: Hi Jordan, how can I help?", "caller said: Can you tell me something interesting about Paris?",
        "assistant said: Paris began as a Celtic village."]


def test_a_custom_config_builds_live_sessions() -> None:
    from model.factory import live_options

    options = live_options(make_config(tools=("end_call", "update_mic_distance"), **LIVE))
    assert [tool["name"] for tool in options.tools] == ["end_call"]
    assert options.url.endswith("/v1/live/sessions")

"""Tool calls end to end: simulated calls through the real relay, the Realtime and Responses stand-ins,
and a real SMTP server, judged by what the caller heard and what the stand-ins received."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from support import smtp_server, smtp_settings, speech

import simulate
from audio import SAMPLE_RATE_HZ
from simulate import CallResult, Scenario
from standins.openai_service import AssistantTurn, WebSearchScript, client_event_problems
from standins.phone_network import CallerTurn, PlayedChunk


def music_chunks(result: CallResult) -> list[PlayedChunk]:
    """What the caller heard that no assistant item carried: the waiting music."""
    end = result.caller.ended_at or 0.0
    return [c for c in result.caller.playback.chunks if c.music and c.played_bytes(end) > 0]


def heard_until(chunk: PlayedChunk, end: float) -> float:
    return chunk.start + chunk.played_bytes(end) / SAMPLE_RATE_HZ


def longest_gap_s(chunks: list[PlayedChunk], end: float) -> float:
    """The longest silence between consecutive chunks as the caller heard them."""
    return max(b.start - heard_until(a, end) for a, b in itertools.pairwise(chunks))


def item_chunks(result: CallResult, item_id: str) -> list[PlayedChunk]:
    return [c for c in result.caller.playback.chunks if c.tag is not None and c.tag[0] == item_id]


def outputs_by_name(result: CallResult) -> dict[str, list[dict[str, Any]]]:
    """Each function call's name -> the outputs the relay sent for its call_id."""
    assert result.standin is not None
    [session] = result.standin.sessions
    calls = {e["item"]["call_id"]: e["item"]["name"] for e in session.sent
             if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"}
    found: dict[str, list[dict[str, Any]]] = {}
    for item in session.function_outputs:
        found.setdefault(calls[item["call_id"]], []).append(json.loads(item["output"]))
    return found


def client_events(result: CallResult, kind: str) -> list[tuple[float, dict[str, Any]]]:
    assert result.standin is not None
    [session] = result.standin.sessions
    return [(at, e) for at, e in session.received if e.get("type") == kind]


@pytest.mark.parametrize("phone", ["twilio", "plivo"])
async def test_one_moment_then_search_with_music_then_goodbye_heard_in_full(phone: str) -> None:
    """'One moment' and a search in one response, on either network: the search is answered, music starts at the
    threshold and stops at the first assistant audio, and the line closes only after the whole goodbye was heard."""
    scenario = Scenario(
        assistant=[
            AssistantTurn(speech("assistant_one_moment"), "One moment, let me look that up.",
                          [("gpt_web_search", {"query": "What is the weather in Paris today?"})]),
            AssistantTurn(speech("assistant_weather"), "It's sunny in Paris today."),
            AssistantTurn(function_calls=[("end_call", {"reason": "the caller said goodbye"})]),
            AssistantTurn(speech("assistant_goodbye"), "You're welcome, Jordan. Goodbye!"),
        ],
        caller=[CallerTurn(speech("caller_goodbye"), "That's all, thanks. Goodbye!",
                           {"after": "assistant_done", "delay_ms": 600})],
        hangup={"by": "assistant"},
        expect_barge_ins=0,
        expect_wait_music=True,
        web_search=WebSearchScript(delay_ms=4000),
    )
    result = await simulate.simulate_call(scenario, seed=3, phone=phone, wait_music_threshold_ms=2000)
    assert result.ok, result.problems
    assert result.standin is not None
    end = result.caller.ended_at or 0.0
    outputs = outputs_by_name(result)
    assert outputs["gpt_web_search"] == [{"ok": True, "answer": "It is sunny in Paris today, around 18 degrees "
                                          "(Météo-France).", "source": "meteofrance.com"}]
    assert outputs["end_call"] == [{"ok": True, "status": "ending", "instruction": "Say one brief goodbye now; the "
                                    "line closes when it has played."}]

    [session] = result.standin.sessions
    tool_call_at = next(iter(session.done_at.values()))  # the response.done carrying the search call
    one_moment, weather = (item_chunks(result, item) for item in _spoken_items(result)[:2])
    music = music_chunks(result)
    music_start, music_end = music[0].start, max(heard_until(c, end) for c in music)
    # Starts at the threshold after the tool call, never over the assistant's "one moment" ...
    assert 2.0 <= music_start - tool_call_at <= 2.1
    assert music_start >= heard_until(one_moment[-1], end) - 0.001
    # ... plays without a gap while the search runs ...
    assert longest_gap_s(music, end) < 0.03 and music_end - music_start > 1.5
    # ... and stops exactly where the answer starts: nothing of it is heard after.
    assert abs(weather[0].start - music_end) < 0.005
    assert all(c.start < weather[0].start for c in music)
    assert result.caller.music_clears == 1
    # The goodbye (its last byte) was heard before the line closed, and the close followed promptly.
    goodbye = item_chunks(result, _spoken_items(result)[-1])
    assert 0 <= end - heard_until(goodbye[-1], end) < 0.5


def _spoken_items(result: CallResult) -> list[str]:
    """Assistant item ids in the order the caller heard them."""
    seen: list[str] = []
    for chunk in result.caller.playback.chunks:
        if chunk.tag is not None and chunk.tag[0] not in seen:
            seen.append(chunk.tag[0])
    return seen


@pytest.mark.parametrize("phone", ["twilio", "plivo"])
async def test_barge_in_during_the_goodbye_hangs_up_at_once(phone: str) -> None:
    """The caller talking over the goodbye clears it, and the line closes right away instead of hanging (on Plivo
    no checkpoint is answered after clearAudio, so nothing may wait for one)."""
    scenario = Scenario(
        assistant=[AssistantTurn(function_calls=[("end_call", {})]),
                   AssistantTurn(speech("assistant_long"), "A long goodbye...")],
        caller=[CallerTurn(speech("caller_interrupt"), "Sorry, wait.", {"after": "assistant_audio", "ms": 1000})],
        hangup={"by": "assistant"},
        expect_barge_ins=1,
    )
    result = await simulate.simulate_call(scenario, seed=5, phone=phone)
    assert result.ok, result.problems
    [barge_in] = result.caller.barge_ins
    assert 900 <= barge_in.heard_ms <= 1300
    assert (result.caller.ended_at or 0.0) - barge_in.at < 0.5


async def test_mic_switch_is_a_valid_partial_session_update_and_debounced() -> None:
    """update_mic_distance sends one partial session.update (with session.type) that the openai types accept;
    the repeat in the same response is ignored; one response.create follows both outputs; an end_call
    spoken with its goodbye closes the line after it."""
    scenario = Scenario(
        assistant=[
            AssistantTurn(speech("assistant_greeting"), "Hello!",
                          [("update_mic_distance", {"mode": "far_field", "reason": "caller is on speaker"}),
                           ("update_mic_distance", {"mode": "far_field"})]),
            AssistantTurn(speech("assistant_goodbye"), "Switched. Goodbye!", [("end_call", {})]),
        ],
        hangup={"by": "assistant"},
        expect_barge_ins=0,
    )
    result = await simulate.simulate_call(scenario, seed=7)
    assert result.ok, result.problems  # includes: no invalid client event, no Realtime error
    assert result.standin is not None
    [session] = result.standin.sessions
    updates = [e for _, e in client_events(result, "session.update")]
    assert len(updates) == 2
    assert updates[1]["session"] == {"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "far_field"}}}}
    assert client_event_problems(updates[1]) == []
    assert session.session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert session.session["audio"]["output"]["voice"] == "cedar"  # the partial update left the rest alone
    applied, ignored = outputs_by_name(result)["update_mic_distance"]
    assert (applied["status"], applied["mode"], applied["counters"]) == ("applied", "far_field",
                                                                         {"applied": 1, "noop": 0, "ignored": 0})
    assert (ignored["status"], ignored["counters"]) == ("noop", {"applied": 1, "noop": 0, "ignored": 1})
    creates = client_events(result, "response.create")
    outputs = [at for at, e in client_events(result, "conversation.item.create")
               if e["item"]["type"] == "function_call_output"]
    assert len(creates) == 2  # the greeting, then one after both mic outputs; none after the spoken goodbye
    assert creates[1][0] >= max(outputs[:2])


async def test_every_function_call_in_a_response_is_answered_once() -> None:
    """Unknown tool, bad JSON, unconfigured email: each call_id gets one error output, then one response.create."""
    scenario = Scenario(
        assistant=[
            AssistantTurn(speech("assistant_one_moment"), "One moment.",
                          [("launch_rocket", {}), ("gpt_web_search", "{not json"),
                           ("send_email", {"subject": "Notes", "body_html": "<p>Notes</p>"})]),
            AssistantTurn(speech("assistant_goodbye"), "Sorry, I could not do that."),
        ],
        hangup={"after": "assistant_done", "delay_ms": 200},
        expect_barge_ins=0,
    )
    result = await simulate.simulate_call(scenario, seed=11)
    assert result.ok, result.problems
    assert result.standin is not None
    outputs = outputs_by_name(result)
    assert outputs == {
        "launch_rocket": [{"ok": False, "error": "unknown tool 'launch_rocket'"}],
        "gpt_web_search": [{"ok": False, "error": "arguments are not valid JSON (Expecting property name enclosed "
                            "in double quotes)"}],
        "send_email": [{"ok": False, "sent": False, "error": "email is not configured for this caller"}],
    }
    [session] = result.standin.sessions
    kinds = [e["type"] if e["type"] != "conversation.item.create" else e["item"]["type"]
             for _, e in session.received]
    after_greeting = kinds[kinds.index("response.create") + 1:]
    assert [k for k in after_greeting if k in ("function_call_output", "response.create")] == [
        "function_call_output", "function_call_output", "function_call_output", "response.create"]


async def test_email_per_caller_group_without_blocking_the_audio() -> None:
    """Primary and secondary callers' emails go to their group's address; a caller of no group is told email
    is not configured; a slow SMTP server does not stall the call (waiting music plays on without a gap)."""
    def scenario(number: str) -> Scenario:
        return Scenario(
            caller_number=number,
            assistant=[
                AssistantTurn(function_calls=[("send_email", {"subject": f"Notes for {number}",
                                                              "body_html": "<p>Paris</p>"})]),
                AssistantTurn(speech("assistant_goodbye"), "Sent. Goodbye!"),
            ],
            hangup={"after": "assistant_done", "delay_ms": 200},
            expect_barge_ins=0,
        )

    primary, secondary, stranger = "+14155550100", "+442079460958", "+33142685300"
    with smtp_server(delay_s=1.5) as (mailbox, port):
        common: dict[str, Any] = {
            "smtp": smtp_settings(port),
            "primary_to_email": "jordan@example.com",
            "secondary_to_email": "taylor@example.com",
            "wait_music_threshold_ms": 200,
        }
        results = await asyncio.gather(
            simulate.simulate_call(scenario(primary), seed=1, **common),
            simulate.simulate_call(scenario(secondary), seed=2, primary_numbers=(), secondary_numbers=(secondary,),
                                   **common),
            simulate.simulate_call(scenario(stranger), seed=3, primary_numbers=(), allow_all_callers=True, **common),
        )
    for result in results:
        assert result.ok, result.problems
    sent = sorted((message["Subject"], rcpt) for _, rcpt, message in mailbox.messages)
    assert sent == [(f"Notes for {primary}", ["jordan@example.com"]), (f"Notes for {secondary}",
                                                                         ["taylor@example.com"])]
    assert outputs_by_name(results[2])["send_email"] == [
        {"ok": False, "sent": False, "error": "email is not configured for this caller"}]
    for result in results[:2]:
        assert outputs_by_name(result)["send_email"][0]["sent"] is True
        end = result.caller.ended_at or 0.0
        music = music_chunks(result)
        assert music, "no waiting music was heard while the email was being sent"
        assert heard_until(music[-1], end) - music[0].start > 1.0 and longest_gap_s(music, end) < 0.03

"""Outbound calls end to end: ``POST /calls`` on the real relay, the Twilio and Plivo REST stand-ins placing the
call, a scripted callee (a person or an answering machine) on the stream, answering machine detection's verdict
and the networks' signed callbacks; and who may call whom, how often, and what a bad request gets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from support import ROOT, SECRET_KEY, RawLeg, process_env, until

import simulate_outbound
from bridge.handoff import callee_replied
from bridge.transcript import Turn
from config import VadType, VoiceApi, VoicemailMode
from ops.tokens import StreamTokens
from standins.callee import CalleeScript
from standins.phone_dialects import twilio_signature
from standins.scenario import Scenario, load_scenario

CALLEE = "+14155550100"


def scenario(kind: str) -> Scenario:
    return load_scenario(simulate_outbound.SCENARIOS[kind])


def callee(kind: str, answered_by: str | None = None, delay_ms: int = 300) -> CalleeScript:
    found = scenario(kind)
    return CalleeScript(found.caller, found.hangup, answered_by or simulate_outbound.VERDICTS[kind], delay_ms)


@contextlib.asynccontextmanager
async def rig(kind: str = "human", phone: str = "twilio", script: CalleeScript | None = None,
              **overrides: Any) -> Any:
    async with simulate_outbound.outbound_rig(scenario(kind), script or callee(kind), phone, seed=5,
                                              **{"metrics": True, **overrides}) as found:
        yield found


async def placed_call(found: simulate_outbound.OutboundRig, timeout: float = 40.0) -> Any:
    """Place a call to CALLEE and wait for it to end; the callee's phone."""
    status, body = await found.place(CALLEE)
    assert status == 202, body
    assert body["status"] == "queued" and body["call_sid"]
    async with asyncio.timeout(timeout):
        await found.callees.ended.wait()
    assert found.callees.failures == []
    [caller] = found.callees.callers.values()
    return caller


def received(found: simulate_outbound.OutboundRig, kind: str) -> list[dict[str, Any]]:
    [session] = found.standin.sessions
    return [event for _, event in session.received if event.get("type") == kind]


async def metrics_text(found: simulate_outbound.OutboundRig) -> str:
    headers = {"Authorization": aiohttp.encode_basic_auth("ops", found.config.console_token or "")}
    async with found.http.get(found.relay_url + "/metrics", headers=headers) as resp:
        return await resp.text()


async def test_a_person_answers_speaks_first_and_the_assistant_keeps_to_the_purpose() -> None:
    """Twilio: calls.create from TWILIO_PHONE_NUMBER with the TwiML that connects the stream (no <Say>, its
    single-use token bound to the order), DetectMessageEnd with async detection and every status at the relay;
    the session is told whom it calls and why and does not greet: its first turn follows the callee's hello."""
    async with rig("human") as found:
        caller = await placed_call(found)
        [call] = found.rest.calls.values()
        form = call["_form"]
        assert (form["To"], form["From"]) == (CALLEE, simulate_outbound.OUR_NUMBER)
        assert form["MachineDetection"] == "DetectMessageEnd" and form["AsyncAmd"] == "true"
        assert form["AsyncAmdStatusCallback"].startswith(found.relay_url + "/outbound/twilio/detection?order=")
        assert form["StatusCallback"].startswith(found.relay_url + "/outbound/twilio/status?order=")
        assert form["StatusCallbackEvent"].split() == ["initiated", "ringing", "answered", "completed"]
        assert "<Say" not in form["Twiml"] and 'name="stream_order"' in form["Twiml"]
        [update] = received(found, "session.update")
        instructions = update["session"]["instructions"]
        assert simulate_outbound.PURPOSE in instructions and "placed to Jordan" in instructions
        assert not any(t["name"] == "transfer_call" for t in update["session"]["tools"])  # no TRANSFER_TO
        [session] = found.standin.sessions
        kinds = [event["type"] for event in session.sent]
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")  # hello first
        assert simulate_outbound.spoke_first(caller) == []
        assert caller.hung_up_by == "relay" and caller.close_code == 1000
        assert [status for _, _, status in found.callees.callbacks] == [200] * 5  # 3 progress, detection, end
        outcome = await until(lambda: call_status(found, call["sid"]), what="the outcome")
        assert outcome["answered_by"] == "human" and outcome["to"] == "+*******0100"
        text = await metrics_text(found)
        assert 'relay_call_outcomes_total{direction="outbound",outcome="answered"} 1.0' in text
        assert 'relay_call_outcomes_total{direction="inbound"' not in text


async def call_status(found: simulate_outbound.OutboundRig, call_sid: str) -> dict[str, Any] | None:
    """``GET /calls/<call_sid>`` once the call has its outcome (None before)."""
    headers = {"Authorization": f"Bearer {found.config.console_token}"}
    async with found.http.get(f"{found.relay_url}/calls/{call_sid}", headers=headers) as resp:
        body = await resp.json()
    return body if body.get("outcome") else None


async def test_an_answering_machine_hears_one_message_after_its_greeting_then_the_call_ends() -> None:
    """A machine (its greeting, a beep, then machine_end_beep): the assistant's turn after the greeting is the one
    message, nothing before the greeting ended, and the relay hangs up once it has played: end reason voicemail."""
    async with rig("machine") as found:
        caller = await placed_call(found)
        assert simulate_outbound.spoke_first(caller) == []
        assert caller.hung_up_by == "relay" and caller.close_code == 1000 and caller.barge_ins == []
        [session] = found.standin.sessions
        assert found.standin.turns_used(session) == 1  # one message
        outcome = await until(lambda: call_status(found, next(iter(found.rest.calls))), what="the outcome")
        assert outcome["answered_by"] == "machine_end_beep"
        text = await metrics_text(found)
        assert 'relay_call_outcomes_total{direction="outbound",outcome="machine"} 1.0' in text
        assert 'relay_calls_ended_total{reason="voicemail"} 1.0' in text


async def test_a_quiet_line_after_the_greeting_gets_the_message_asked_for() -> None:
    """Without the service's VAD no turn answers the greeting: once the verdict comes the relay asks for the
    message itself, naming the purpose, and hangs up after it."""
    async with rig("machine", vad_type=VadType.NONE) as found:
        caller = await placed_call(found)
        assert len(received(found, "response.create")) == 1
        [session] = found.standin.sessions
        [instruction] = [text for text in session.system_texts() if "answering machine" in text]
        assert simulate_outbound.PURPOSE in instruction
        assert caller.hung_up_by == "relay" and caller.close_code == 1000
        assert simulate_outbound.spoke_first(caller) == []


@pytest.mark.parametrize(("voicemail", "answered_by"), [(VoicemailMode.HANGUP, "machine_end_silence"),
                                                         (VoicemailMode.LEAVE, "fax")])
async def test_hangup_mode_and_a_fax_hang_up_at_once(voicemail: VoicemailMode, answered_by: str) -> None:
    """VOICEMAIL=hangup, or a fax whatever VOICEMAIL says: the line closes on the verdict, with nothing said."""
    async with rig("machine", script=callee("machine", answered_by), voicemail=voicemail,
                   vad_type=VadType.NONE) as found:
        caller = await placed_call(found)
        assert caller.hung_up_by == "relay" and caller.close_code == 1000
        assert not any(not chunk.music for chunk in caller.playback.chunks)  # nothing said
        assert received(found, "response.create") == []


async def test_a_machine_verdict_after_the_callee_answered_is_ignored() -> None:
    """Detection that says machine after the callee already answered the assistant: the conversation goes on to
    its own goodbye (end_call), not a voicemail."""
    script = callee("human", "machine_end_other", delay_ms=9000)  # after "thanks for the reminder"
    async with rig("human", script=script) as found:
        caller = await placed_call(found)
        assert caller.hung_up_by == "relay"
        [session] = found.standin.sessions
        assert found.standin.turns_used(session) == 3  # the reminder, end_call, the goodbye: as scripted
        text = await metrics_text(found)
        assert 'relay_calls_ended_total{reason="end_call"} 1.0' in text


async def test_plivo_places_the_call_with_machine_detection_and_answers_its_answer_url() -> None:
    """Plivo: calls.create from PLIVO_PHONE_NUMBER (digits, no +) with machine_detection and its URL; the answer
    URL on the relay answers the <Stream> (no <Speak>) with the token; the call goes as on Twilio."""
    async with rig("human", phone="plivo") as found:
        caller = await placed_call(found)
        [body] = found.rest.created  # type: ignore[union-attr]
        assert (body["from"], body["to"]) == (simulate_outbound.OUR_NUMBER.lstrip("+"), CALLEE.lstrip("+"))
        assert body["machine_detection"] == "true"
        assert body["machine_detection_url"].startswith(found.relay_url + "/outbound/plivo/detection?order=")
        assert body["answer_url"].startswith(found.relay_url + "/outbound/plivo/answer?order=")
        answer = next(form for url, form, _ in found.callees.callbacks if "/answer?" in url)
        assert answer["Direction"] == "outbound"
        assert caller.hung_up_by == "relay" and simulate_outbound.spoke_first(caller) == []
        assert [status for _, _, status in found.callees.callbacks] == [200] * 3  # answer, detection, hangup


async def test_on_gpt_live_too() -> None:
    """GPT-Live: no greeting is appended; the session starts with the purpose in its instructions."""
    async with rig("machine", voice_api=VoiceApi.LIVE) as found:
        caller = await placed_call(found)
        [session] = found.standin.live_sessions
        start = next(e for _, e in session.received if e["type"] == "session.start")
        assert simulate_outbound.PURPOSE in start["session"]["instructions"]
        assert simulate_outbound.spoke_first(caller) == [] and caller.hung_up_by == "relay"


# --- who may call whom, how often, and bad requests ------------------------------------------------------


async def post(found: simulate_outbound.OutboundRig, body: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {found.config.console_token}"} if headers is None else headers
    data = raw if raw is not None else json.dumps(body).encode()
    async with found.http.post(found.relay_url + "/calls", data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_placing_a_call_needs_the_operator_token_as_basic_or_bearer() -> None:
    """401 without CONSOLE_TOKEN (as the Basic password or a Bearer token), 404 while it is unset."""
    async with rig("human") as found:
        body = {"to": CALLEE, "purpose": "hello"}
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": aiohttp.encode_basic_auth("ops", "wrong-token-xxxxxx")}):
            status, answer = await post(found, body, headers)
            assert status == 401 and answer == {"error": "unauthorized"}
        assert found.rest.calls == {}  # type: ignore[union-attr]
        basic = {"Authorization": aiohttp.encode_basic_auth("ops", found.config.console_token or "")}
        status, answer = await post(found, body, basic)
        assert status == 202 and answer["call_sid"] in found.rest.calls  # type: ignore[union-attr]
    async with rig("human", console_token=None) as off:
        async with off.http.post(off.relay_url + "/calls", json={"to": CALLEE, "purpose": "x"}) as resp:
            assert resp.status == 404


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "the body is not JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'{"to": "4155550100", "purpose": "x"}', "'to' must be a phone number in E.164"),
    (b'{"to": "+1415555", "purpose": "x"}', "'to' must be a phone number in E.164"),
    (b'{"to": "+14155550100", "purpose": "  "}', "'purpose' must be a non-empty string"),
    (b'{"to": "+14155550100"}', "'purpose' must be a non-empty string"),
    (json.dumps({"to": CALLEE, "purpose": "x" * 1001}).encode(), "'purpose' is longer than 1000 characters"),
    (b'{"to": "+14155550100", "purpose": "x", "network": "telnyx"}', "'network' must be one that can place"),
], ids=["not-json", "not-object", "national", "short", "blank-purpose", "no-purpose", "long-purpose", "network"])
async def test_bad_requests_are_400_with_the_reason_and_place_nothing(body: bytes, reason: str) -> None:
    async with rig("human") as found:
        status, answer = await post(found, None, raw=body)
        assert status == 400 and answer["error"].startswith(reason), answer
        assert found.rest.calls == {}  # type: ignore[union-attr]


async def test_no_open_dialer_and_an_hourly_cap() -> None:
    """Only the allowlists' numbers and OUTBOUND_ALLOWED_NUMBERS (403 for any other, whatever ALLOW_ALL_CALLERS
    says); OUTBOUND_MAX_PER_HOUR caps the calls placed (429)."""
    async with rig("human", allow_all_callers=True, outbound_allowed_numbers=("+14155550123",),
                   outbound_max_per_hour=2) as found:
        status, answer = await post(found, {"to": "+14155550188", "purpose": "x"})
        assert status == 403 and "OUTBOUND_ALLOWED_NUMBERS" in answer["error"]
        assert (await post(found, {"to": "+14155550123", "purpose": "x"}))[0] == 202
        assert (await post(found, {"to": CALLEE, "purpose": "x"}))[0] == 202
        status, answer = await post(found, {"to": CALLEE, "purpose": "x"})
        assert status == 429 and "OUTBOUND_MAX_PER_HOUR=2" in answer["error"]
        assert len(found.rest.calls) == 2  # type: ignore[union-attr]


async def test_a_refusal_by_the_network_is_502_with_its_message() -> None:
    async with rig("human") as found:
        found.rest.fail_calls = 400
        status, answer = await post(found, {"to": CALLEE, "purpose": "x"})
        assert status == 502 and "not yet verified" in answer["error"], answer


async def test_placed_calls_count_against_max_calls_and_a_drain() -> None:
    """A call being placed holds a place in MAX_CALLS until its stream starts (503 beyond)."""
    async with rig("human", max_calls=1) as found:
        found.rest.on_call = None  # the calls ring and ring
        assert (await post(found, {"to": CALLEE, "purpose": "x"}))[0] == 202
        status, answer = await post(found, {"to": CALLEE, "purpose": "x"})
        assert status == 503 and "MAX_CALLS=1" in answer["error"]
        async with found.http.get(found.relay_url + "/health") as resp:
            health = await resp.json()
        assert health["outbound"] == {"networks": ["twilio"], "placed_last_hour": 1, "max_per_hour": 20,
                                      "in_progress": 1}


async def test_callbacks_must_be_signed_and_unknown_orders_are_ignored() -> None:
    """A status or detection callback without a valid signature: 403, nothing changes. One for an order this
    relay does not know: 200, ignored. A stream whose token names no order here is refused (1008)."""
    async with rig("human") as found:
        found.rest.on_call = None  # it rings on
        _status, answer = await post(found, {"to": CALLEE, "purpose": "x"})
        order = answer["order"]
        for path in ("status", "detection"):
            url = f"{found.relay_url}/outbound/twilio/{path}?order={order}"
            form = {"CallSid": answer["call_sid"], "AnsweredBy": "fax", "CallStatus": "busy"}
            async with found.http.post(url, data=form) as resp:
                assert resp.status == 403
            unknown = url.replace(order, "0123456789abcdef")
            signed = {"X-Twilio-Signature": twilio_signature(found.callees.auth_token, unknown, form)}
            async with found.http.post(unknown, data=form, headers=signed) as resp:
                assert resp.status == 200
        headers = {"Authorization": f"Bearer {found.config.console_token}"}
        async with found.http.get(f"{found.relay_url}/calls/{answer['call_sid']}", headers=headers) as resp:
            call = await resp.json()
        assert (call["status"], call["answered_by"], call["outcome"]) == ("queued", "", "")
        params = StreamTokens(SECRET_KEY.encode()).issue_outbound(CALLEE, "0123456789abcdef", 60)
        leg = await RawLeg.open(found.http, found.relay_url, auth_token=found.callees.auth_token)
        await leg.start(parameters=params)
        assert await leg.closed() == 1008


async def relay_command(*args: str, **env: str) -> tuple[int | None, str]:
    """``python relay.py ARGS`` (working directory ``tests/``: no ``.env``) until it exits; its code and output."""
    process = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "relay.py"), *args,
                                                   env=process_env(OPENAI_API_KEY=SECRET_KEY, **env),
                                                   cwd=ROOT / "tests", stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode()


async def test_relay_call_places_a_call_and_follows_it_to_its_end() -> None:
    """``python relay.py call +1... --purpose ...`` against the running relay (its token from the environment):
    the call's id, its status as it goes, its outcome; a refusal prints the relay's reason and exits 1."""
    async with rig("human") as found:
        port = found.relay_url.rsplit(":", 1)[1]
        code, output = await relay_command("call", CALLEE, "--purpose", simulate_outbound.PURPOSE,
                                           CONSOLE_TOKEN=found.config.console_token or "", PORT=port)
        assert code == 0, output
        lines = output.splitlines()
        [call_sid] = found.rest.calls  # type: ignore[union-attr]
        assert lines[0].startswith(f"call {call_sid} queued (order ")
        assert f"call {call_sid}: in-progress answered by human" in lines
        assert lines[-1] == f"call {call_sid} ended: answered"
        code, output = await relay_command("call", "+14155550188", "--purpose", "x",
                                           CONSOLE_TOKEN=found.config.console_token or "", PORT=port)
        assert code == 1 and output.startswith("call: refused (403): that number is not on the allowlists")
        code, output = await relay_command("call", CALLEE, "--purpose", "x", PORT=port)
        assert code == 2 and "CONSOLE_TOKEN is not set" in output


def test_whether_the_callee_answered_the_assistant() -> None:
    """A caller turn after an assistant turn heard whole is an answer; a greeting before any assistant turn, or one
    that cut the assistant short, is not."""
    greeting = Turn("user", "u1", "Hi, you've reached Jordan.", final=True)
    cut = Turn("assistant", "a1", "Hi Jor…", final=True, cut=True)
    whole = Turn("assistant", "a2", "Hi Jordan, it's your assistant.", final=True)
    untranscribed = Turn("user", "u2")
    assert not callee_replied([greeting, cut, Turn("user", "u3", "Please leave a message.", final=True)])
    assert not callee_replied([greeting, whole])
    assert callee_replied([greeting, whole, untranscribed])


async def test_a_body_past_its_bound_is_refused_unread() -> None:
    async with rig("human") as found:
        status, answer = await post(found, None, raw=b'{"to": "' + b"1" * 9000 + b'"}')
        assert status == 400 and answer["error"] == "the body is larger than 8192 bytes"
        assert found.rest.calls == {}  # type: ignore[union-attr]

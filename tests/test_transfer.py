"""Transfer to a person, end to end: an inbound call through the real relay asks for a human, the model calls
``transfer_call``, says its line, and the relay has the network put the call through (Twilio's live-call update
with a ``<Dial>``, Plivo's A-leg transfer to a ``<Dial>`` on the relay), with a whisper for a warm transfer; and
what happens when the network refuses."""

from __future__ import annotations

import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from support import speech

import relay
import simulate
import simulate_outbound
from config import VoiceApi
from phones.outbound import dial_twiml, dial_xml
from simulate import CallResult, Scenario
from standins.callee import Callees
from standins.openai_service import AssistantTurn
from standins.phone_dialects import plivo_signature_headers, twilio_signature
from standins.phone_network import CallerTurn

DESK = "+14155550111"
OUR_NUMBER = "+14155550199"
REASON = "Jordan wants to dispute a charge on the March invoice."


def transfer_scenario(after_failure: bool = False) -> Scenario:
    assistant = [
        AssistantTurn(speech("assistant_greeting"), "Hi Jordan, it's your assistant. How can I help you today?"),
        AssistantTurn(function_calls=[("transfer_call", {"reason": REASON})]),
        AssistantTurn(speech("assistant_transfer"), "Of course. I'll put you through to a colleague now."),
    ]
    caller = [CallerTurn(speech("caller_person"), "Can I speak to a person, please?",
                         {"after": "assistant_done", "delay_ms": 600})]
    if after_failure:  # the redirect is refused: the assistant says so, and the call goes on to a goodbye
        assistant += [
            AssistantTurn(speech("assistant_not_connected"), "Sorry, I couldn't connect you. How else can I help?"),
            AssistantTurn(function_calls=[("end_call", {"reason": "the caller said goodbye"})]),
            AssistantTurn(speech("assistant_bye"), "You're welcome. Goodbye!"),
        ]
        caller.append(CallerTurn(speech("caller_goodbye"), "That's all, thanks. Goodbye!",
                                 {"after": "assistant_done", "delay_ms": 600}))
    return Scenario(assistant=assistant, caller=caller, hangup={"by": "assistant"}, expect_barge_ins=0)


@contextlib.asynccontextmanager
async def network(phone: str, register: bool = True) -> AsyncIterator[tuple[Any, Callees, dict[str, Any], str]]:
    async with simulate_outbound.rest_network(phone, register) as (rest, callees, settings):
        yield rest, callees, settings, settings["auth_token"]


async def transfer_call(phone: str = "twilio", register: bool = True, **overrides: Any) -> tuple[CallResult, Any,
                                                                                                   Callees]:
    async with network(phone, register) as (rest, callees, settings, _token):
        scenario = transfer_scenario(after_failure=not register)
        result = await simulate.simulate_call(scenario, seed=4, phone=phone, metrics=True,
                                              **{"transfer_to": DESK, **settings, **overrides})
        return result, rest, callees


def session_tools(result: CallResult) -> list[str]:
    assert result.standin is not None
    [session] = result.standin.sessions
    update = next(e for _, e in session.received if e["type"] == "session.update")
    return [tool["name"] for tool in update["session"]["tools"]]


async def test_a_caller_asking_for_a_person_is_put_through_after_one_line() -> None:
    """Twilio: the assistant's line plays in full, then the live call is updated with a <Dial> to TRANSFER_TO from
    TWILIO_PHONE_NUMBER; the stream ends, the model session is closed at once, and the call ends ``transferred``."""
    result, rest, _callees = await transfer_call()
    assert result.ok, result.problems
    assert "transfer_call" in session_tools(result)
    [(sid, form)] = rest.call_updates
    assert sid == result.caller.network.messages.call_sid
    dial = ET.fromstring(form["Twiml"]).find("./Dial")
    assert dial is not None and dial.get("callerId") == OUR_NUMBER
    number = dial.find("./Number")
    assert number is not None and number.text == DESK and number.get("url") is None  # no whisper by default
    assert result.caller.hung_up_by == "network"
    assert result.standin is not None
    [session] = result.standin.sessions
    assert session.ws.closed  # the model session is gone with the caller
    assert result.standin.turns_used(session) == 3
    line = max(result.caller.playback.chunks, key=lambda c: c.start)  # the transfer line, heard in full
    assert line.played_bytes(result.caller.ended_at or 0.0) == len(line.data)
    [updated_at] = [at for at, _, text in result.timeline.events if text.startswith("call updated: ")]
    assert updated_at >= line.start + len(line.data) / 8000  # the redirect came once the line had played


async def test_a_transfer_on_gpt_live() -> None:
    """GPT-Live: transfer_call is delegated to the backend like any tool; the voice's line plays, then the call is
    put through and the session closed."""
    result, rest, _callees = await transfer_call(voice_api=VoiceApi.LIVE)
    assert result.ok, result.problems
    assert len(rest.call_updates) == 1 and result.caller.hung_up_by == "network"
    assert result.standin is not None
    [session] = result.standin.live_sessions
    start = next(e for _, e in session.received if e["type"] == "session.start")
    tools = start["session"]["delegation"]["responses"]["tools"]
    assert "transfer_call" in [tool["name"] for tool in tools]


@contextlib.asynccontextmanager
async def bare_relay(token: str, **overrides: Any) -> AsyncIterator[str]:
    """A relay whose networks sign with ``token``, for requests made by hand."""
    async with contextlib.AsyncExitStack() as stack:
        _standin, realtime_url = await stack.enter_async_context(simulate.realtime_standin())
        port = simulate.free_port()
        config = simulate.relay_config(realtime_url, port=port, public_url=f"http://127.0.0.1:{port}",
                                       twilio_auth_token=token, plivo_auth_token=token, **overrides)
        yield await stack.enter_async_context(relay.serving(config, port=port))


async def test_a_warm_transfer_whispers_the_summary_to_the_person_who_answers() -> None:
    """TRANSFER_WHISPER=true: the <Number url> is the relay's whisper, which (signed) says the model's one-sentence
    summary; unsigned, 403."""
    async with network("twilio") as (rest, callees, settings, token):
        result = await simulate.simulate_call(transfer_scenario(), seed=4, transfer_to=DESK, transfer_whisper=True,
                                              **settings)
        assert result.ok, result.problems
        [(_sid, form)] = rest.call_updates
        number = ET.fromstring(form["Twiml"]).find("./Dial/Number")
        assert number is not None and number.get("method") == "POST"
        whisper = number.get("url") or ""
        assert "/outbound/twilio/whisper?" in whisper
        async with bare_relay(token) as base:
            url = base + "/outbound/twilio/whisper?" + whisper.partition("?")[2]
            async with callees.http.post(url, data={"CallSid": "CA1"}) as resp:
                assert resp.status == 403
            signed = {"X-Twilio-Signature": twilio_signature(token, url, {"CallSid": "CA1"})}
            async with callees.http.post(url, data={"CallSid": "CA1"}, headers=signed) as resp:
                assert resp.status == 200
                said = ET.fromstring(await resp.text()).find("./Say")
            assert said is not None and said.text == REASON


async def test_a_refused_transfer_is_told_to_the_caller_and_the_call_goes_on() -> None:
    """The network refuses the redirect (404: it does not know the call): the assistant tells the caller it could
    not connect them, and the conversation goes on to its goodbye."""
    result, rest, _callees = await transfer_call(register=False)
    assert result.ok, result.problems
    assert rest.call_updates == []
    assert result.standin is not None
    [session] = result.standin.sessions
    assert any("could not connect them" in text for text in session.system_texts())
    assert result.standin.turns_used(session) == 6
    assert result.caller.hung_up_by == "relay"


async def test_plivo_transfers_the_a_leg_to_a_dial_on_the_relay() -> None:
    """Plivo: calls.update(legs=aleg, aleg_url) to the relay's transfer URL, which (signed) answers the <Dial>;
    a transfer URL naming a destination the relay was not given answers a hang-up."""
    result, rest, callees = await transfer_call("plivo")
    assert result.ok, result.problems
    [(call_uuid, body)] = rest.updates
    assert call_uuid == result.caller.network.messages.call_id and body["legs"] == "aleg"
    [dial_document] = callees.dials
    dial = ET.fromstring(dial_document).find("./Dial")
    assert dial is not None and dial.get("callerId") == OUR_NUMBER.lstrip("+")
    number = dial.find("./Number")
    assert number is not None and number.text == DESK.lstrip("+")
    assert result.caller.hung_up_by == "network"


async def test_the_transfer_answer_dials_only_a_configured_destination() -> None:
    """The <Dial> the relay answers a transferred Plivo call with goes only to a destination it was given
    (TRANSFER_TO and the groups'): a transfer URL naming any other answers a hang-up."""
    token = secrets.token_hex(16)
    async with bare_relay(token, transfer_to=DESK, plivo_phone_number=OUR_NUMBER) as base, \
            aiohttp.ClientSession() as http:
        for destination, dials in ((DESK, True), ("+19005550100", False)):
            url = f"{base}/outbound/plivo/transfer?{urlencode({'to': destination})}"
            params = {"CallUUID": "6c4f3b2a-0000-4000-8000-000000000000"}
            async with http.post(url, data=params,
                                 headers=plivo_signature_headers(token, "POST", url, params)) as resp:
                assert resp.status == 200
                root = ET.fromstring(await resp.text())
            assert (root.find("./Dial/Number") is not None) is dials
            assert (root.find("./Hangup") is not None) is not dials


@pytest.mark.parametrize(("group_settings", "offered"), [
    ({}, False),
    ({"transfer_to": DESK}, True),
    ({"primary_transfer_to": DESK}, True),
    ({"secondary_transfer_to": DESK}, False),  # the caller is in the primary group
])
async def test_transfer_call_is_offered_only_with_a_destination_for_the_caller(group_settings: dict[str, str],
                                                                                offered: bool) -> None:
    async with network("twilio") as (_rest, _callees, settings, _token):
        scenario = Scenario(assistant=[AssistantTurn(speech("assistant_goodbye"), "Goodbye!")],
                            hangup={"after": "assistant_done", "delay_ms": 200})
        result = await simulate.simulate_call(scenario, seed=4, **{**settings, **group_settings})
        assert ("transfer_call" in session_tools(result)) is offered


def test_the_dial_documents() -> None:
    """A number is a <Number>, a sip: URI a <Sip> (Twilio) or <User> (Plivo); the whisper is the noun's url."""
    twiml = ET.fromstring(dial_twiml("sip:desk@pbx.example.com", OUR_NUMBER, "https://r.example/w?text=hi"))
    sip = twiml.find("./Dial/Sip")
    assert sip is not None and sip.text == "sip:desk@pbx.example.com" and sip.get("url") == "https://r.example/w?text=hi"
    xml = ET.fromstring(dial_xml("sip:desk@pbx.example.com", OUR_NUMBER, None))
    user = xml.find("./Dial/User")
    assert user is not None and user.text == "sip:desk@pbx.example.com"
    warm = ET.fromstring(dial_xml(DESK, OUR_NUMBER, "https://r.example/w"))
    dial = warm.find("./Dial")
    assert dial is not None and dial.get("confirmSound") == "https://r.example/w"


async def test_a_warm_transfer_on_plivo_plays_the_whisper_as_its_confirm_sound() -> None:
    """Plivo: with TRANSFER_WHISPER the <Dial> the relay answers carries confirmSound, the relay's whisper URL."""
    result, _rest, callees = await transfer_call("plivo", transfer_whisper=True)
    assert result.ok, result.problems
    [dial_document] = callees.dials
    dial = ET.fromstring(dial_document).find("./Dial")
    assert dial is not None and "/outbound/plivo/whisper?text=" in (dial.get("confirmSound") or "")

"""Single-use stream tokens: a captured handshake signature is no pass; the caller comes from the signed webhook."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest
from support import CALLER, SECRET_KEY, RawLeg, make_config, start_relay, start_standin

from ops.tokens import TOKEN_TTL_S, StreamTokens
from standins.openai_service import AssistantTurn
from standins.phone_dialects import Plivo, Twilio, twilio_signature

PUBLIC = "https://relay.example.com"


def test_a_token_is_good_once_for_its_call_caller_and_time() -> None:
    """The token checks out for its call and caller, once, before it expires; any other field refuses it."""
    clock = [1_000_000.0]
    tokens = StreamTokens(b"key", now=lambda: clock[0])
    issued = tokens.issue(CALLER, "CA1")
    assert tokens.check(issued, "CA2").reason == "stream token does not match this call"
    assert tokens.check({**issued, "caller_number": "+14155550111"}, "CA1").reason == (
        "stream token does not match this call")
    assert tokens.check({**issued, "stream_expires": str(int(clock[0]) + 999)}, "CA1").reason == (
        "stream token does not match this call")
    assert StreamTokens(b"other key").check(issued, "CA1").reason == "stream token does not match this call"
    assert tokens.check({"caller_number": CALLER}, "CA1").reason == "no stream token"
    assert tokens.check(issued, "CA1").caller_number == CALLER
    assert tokens.check(issued, "CA1").reason == "stream token already used"
    late = tokens.issue(CALLER, "CA3")
    clock[0] += TOKEN_TTL_S + 1
    assert tokens.check(late, "CA3").reason == "stream token expired"


@pytest.mark.parametrize("network", [Twilio, Plivo], ids=["twilio", "plivo"])
async def test_a_replayed_stream_is_refused_before_openai(stack: contextlib.AsyncExitStack,
                                                          http: aiohttp.ClientSession, network: type) -> None:
    """A second stream presenting a token already used (a captured handshake and start, replayed) is closed with 1008
    and never reaches OpenAI; the first one was served."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)] * 2)
    base = await start_relay(stack, make_config(url, plivo_auth_token="pt"))
    first = await RawLeg.open(http, base, network=network(), auth_token="pt" if network is Plivo else None)
    issued = StreamTokens(SECRET_KEY.encode()).issue(CALLER, first.call_sid)
    await first.start(parameters=issued)
    assert await first.recv_kind() is not None
    replay = await RawLeg.open(http, base, network=network(), auth_token="pt" if network is Plivo else None)
    replay.network.messages.call_sid = first.call_sid  # type: ignore[union-attr]
    replay.network.messages.call_id = first.call_sid  # type: ignore[union-attr]
    await replay.start(parameters=issued)
    assert await replay.closed() == 1008
    assert len(standin.sessions) == 1
    await first.stop()


@pytest.mark.parametrize(
    "parameters",
    [
        pytest.param(lambda sid: {"caller_number": CALLER}, id="no-token"),
        pytest.param(lambda sid: {**StreamTokens(SECRET_KEY.encode()).issue(CALLER, sid),
                                  "caller_number": "+14155550111"}, id="caller-swapped"),
        pytest.param(lambda sid: StreamTokens(SECRET_KEY.encode()).issue(CALLER, "CA-another-call"),
                     id="another-calls-token"),
        pytest.param(lambda sid: StreamTokens(b"another deployment").issue(CALLER, sid),
                     id="another-deployments-token"),
    ],
)
async def test_streams_without_this_calls_token_are_refused(stack: contextlib.AsyncExitStack,
                                                            http: aiohttp.ClientSession, parameters: Any) -> None:
    """Signed handshakes (here over a forged Host, as a signature captured for another app on the same account would
    be) do not help: without this call's token from this relay's webhook the stream closes with 1008."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url, twilio_auth_token="tok", secondary_numbers=("+14155550111",)))
    forged = "wss://other-app.example.com/media-stream"
    leg = await RawLeg.open(http, base, headers={"Host": "other-app.example.com",
                                                 "X-Twilio-Signature": twilio_signature("tok", forged, {})})
    await leg.start(parameters=parameters(leg.call_sid))
    assert await leg.closed() == 1008
    assert standin.sessions == []


def test_a_call_id_is_admitted_once() -> None:
    """The same call id gets the same token while it is unspent, then nothing once its stream started or it
    expired; another call id gets its own."""
    clock = [1_000_000.0]
    tokens = StreamTokens(b"k", now=lambda: clock[0])
    assert tokens.again("CA1") is False
    issued = tokens.issue(CALLER, "CA1")
    assert tokens.again("CA1") == issued
    assert tokens.check(issued, "CA1").caller_number == CALLER
    assert tokens.again("CA1") is True
    late = tokens.issue(CALLER, "CA2")
    clock[0] += TOKEN_TTL_S + 1
    assert tokens.again("CA2") is True and tokens.check(late, "CA2").reason == "stream token expired"
    assert tokens.again("") is False  # no call id: nothing to remember it by


async def test_a_replayed_signed_webhook_opens_no_second_session(stack: contextlib.AsyncExitStack,
                                                                 http: aiohttp.ClientSession) -> None:
    """The same signed voice webhook POSTed three times (a captured request, replayed): the first two answers carry
    the same token, the stream it opens is the call's only one, and once it has started the webhook is refused;
    the relay opened one model session."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url, public_url=PUBLIC, twilio_auth_token="tok"))
    form = {"From": CALLER, "CallSid": "CA-replayed"}
    headers = {"X-Twilio-Signature": twilio_signature("tok", PUBLIC + "/incoming-call", form)}

    async def answer() -> ET.Element:
        async with http.post(base + "/incoming-call", data=form, headers=headers) as resp:
            assert resp.status == 200
            return ET.fromstring(await resp.text())

    def token(root: ET.Element) -> dict[str, str]:
        return {p.get("name", ""): p.get("value", "") for p in root.iter("Parameter")}

    first, second = token(await answer()), token(await answer())
    assert first["stream_token"] and first == second
    stream_sig = {"X-Twilio-Signature": twilio_signature("tok", "wss://relay.example.com/media-stream", {})}
    leg = await RawLeg.open(http, base, headers={"Host": "relay.example.com", **stream_sig})
    leg.network.messages.call_sid = "CA-replayed"  # type: ignore[union-attr]
    await leg.start(parameters=first)
    assert await leg.recv_kind() is not None
    third = await answer()
    assert third.find("Hangup") is not None and third.find("./Connect/Stream") is None
    again = await RawLeg.open(http, base, headers={"Host": "relay.example.com", **stream_sig})
    again.network.messages.call_sid = "CA-replayed"  # type: ignore[union-attr]
    await again.start(parameters=first)
    assert await again.closed() == 1008
    assert len(standin.sessions) == 1
    await leg.stop()

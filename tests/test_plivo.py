"""Plivo beside Twilio: the answer XML, V3 signatures, the Audio Streams dialect, and DTMF from either network."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest
from support import CALLER, RawLeg, make_config, start_relay, start_standin, until

from bridge.prompts import keypad_text
from phones import plivo as phone_plivo
from phones.leg import MalformedFrame, PhoneAudio, PhoneDtmf, PhoneMarkPlayed, PhoneStart, PhoneStop
from standins.openai_service import AssistantTurn, RealtimeStandIn
from standins.phone_dialects import Plivo, Twilio, plivo_signature_headers

TOKEN = "plivo-token-for-tests"
PUBLIC = "https://relay.example.com"


async def _answer(http: aiohttp.ClientSession, base: str, form: dict[str, str], headers: dict[str, str]) -> ET.Element:
    async with http.post(base + "/plivo/answer", data=form, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/xml"
        return ET.fromstring(await resp.text())


async def test_answer_xml_for_allowed_and_restricted_callers(stack: contextlib.AsyncExitStack,
                                                             http: aiohttp.ClientSession) -> None:
    """An allowed caller gets the greeting and a bidirectional µ-law <Stream> that keeps the call alive, with the
    caller's number in extraHeaders; a restricted one hears the refusal and is hung up; GET works too."""
    base = await start_relay(stack, make_config(public_url=PUBLIC, plivo_auth_token=TOKEN))
    form = {"CallUUID": "c1", "From": CALLER.lstrip("+"), "To": "14155550199"}
    root = await _answer(http, base, form, plivo_signature_headers(TOKEN, "POST", PUBLIC + "/plivo/answer", form))
    assert [child.tag for child in root] == ["Speak", "Stream"]
    assert (root[0].text or "").endswith(", Jordan. Connecting you to your assistant.")
    stream = root[1]
    assert stream.text == "wss://relay.example.com/plivo/media-stream"
    headers = dict(pair.split("=") for pair in stream.attrib.pop("extraHeaders").split(","))
    assert stream.attrib == {"bidirectional": "true", "keepCallAlive": "true", "audioTrack": "inbound",
                             "contentType": "audio/x-mulaw;rate=8000"}
    assert list(headers) == ["callerNumber", "streamExpires", "streamNonce", "streamToken"]
    assert headers["callerNumber"] == "14155550100" and all(value.isalnum() for value in headers.values())
    refused = {**form, "From": "12125550123"}
    root = await _answer(http, base, refused, plivo_signature_headers(TOKEN, "POST", PUBLIC + "/plivo/answer", refused))
    assert [(child.tag, child.text) for child in root] == [("Speak", "Sorry, this line is restricted. Goodbye."),
                                                           ("Hangup", None)]
    query = {"From": CALLER.lstrip("+")}
    headers = plivo_signature_headers(TOKEN, "GET", PUBLIC + "/plivo/answer", query)
    async with http.get(base + "/plivo/answer", params=query, headers=headers) as resp:
        assert ET.fromstring(await resp.text()).find("Stream") is not None


async def test_plivo_routes_are_off_without_a_token(stack: contextlib.AsyncExitStack,
                                                    http: aiohttp.ClientSession) -> None:
    """A Twilio-only deployment (no PLIVO_AUTH_TOKEN) exposes no Plivo endpoint at all."""
    base = await start_relay(stack, make_config(twilio_auth_token="tok", public_url="https://relay.example.com",
                                                allow_unsigned_webhooks=False))
    async with http.post(base + "/plivo/answer", data={"From": "14155550100"}) as resp:
        assert resp.status == 404
    async with http.get(base + "/plivo/media-stream") as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("sign", "status"),
    [
        pytest.param(lambda url, form: plivo_signature_headers(TOKEN, "POST", url, form), 200, id="valid"),
        pytest.param(lambda url, form: {"X-Plivo-Signature-Ma-V3": plivo_signature_headers(
            TOKEN, "POST", url, form)["X-Plivo-Signature-V3"], "X-Plivo-Signature-V3-Nonce": "n"}, 403,
                     id="nonce-does-not-match"),
        pytest.param(lambda url, form: plivo_signature_headers("another-token", "POST", url, form), 403,
                     id="wrong-token"),
        pytest.param(lambda url, form: plivo_signature_headers(TOKEN, "POST", url.replace("answer", "other"), form),
                     403, id="wrong-url"),
        pytest.param(lambda url, form: {k: v for k, v in plivo_signature_headers(TOKEN, "POST", url, form).items()
                                        if not k.endswith("Nonce")}, 403, id="missing-nonce"),
        pytest.param(lambda url, form: plivo_signature_headers(TOKEN, "POST", url, {**form, "From": "1"}), 403,
                     id="tampered-form"),
        pytest.param(lambda url, form: {}, 403, id="unsigned"),
    ],
)
async def test_answer_url_signatures(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                     sign: Any, status: int) -> None:
    """/plivo/answer needs X-Plivo-Signature-V3 over its public URL and form, with its nonce (the SDK's signing)."""
    base = await start_relay(stack, make_config(public_url=PUBLIC, plivo_auth_token=TOKEN))
    form = {"CallUUID": "c1", "From": CALLER.lstrip("+")}
    async with http.post(base + "/plivo/answer", data=form, headers=sign(PUBLIC + "/plivo/answer", form)) as resp:
        assert resp.status == status


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param(lambda: plivo_signature_headers(TOKEN, "GET", PUBLIC + "/plivo/media-stream", {}), None,
                     id="https-form"),
        pytest.param(lambda: plivo_wss_headers(TOKEN), None, id="wss-form"),
        pytest.param(lambda: plivo_signature_headers("wrong", "GET", PUBLIC + "/plivo/media-stream", {}), 1008,
                     id="wrong-token"),
        pytest.param(lambda: plivo_signature_headers(TOKEN, "GET", PUBLIC + "/plivo/answer", {}), 1008,
                     id="wrong-url"),
        pytest.param(lambda: {"X-Plivo-Signature-V3": plivo_signature_headers(
            TOKEN, "GET", PUBLIC + "/plivo/media-stream", {})["X-Plivo-Signature-V3"]}, 1008, id="missing-nonce"),
    ],
)
async def test_media_stream_handshake_signatures(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                                 headers: Any, code: int | None) -> None:
    """The websocket handshake is signed as a GET over https:// or wss://; anything else is closed with 1008 before
    OpenAI is contacted."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url, public_url=PUBLIC, plivo_auth_token=TOKEN))
    leg = await RawLeg.open(http, base, headers=headers(), network=Plivo())
    await leg.start()
    if code is not None:
        assert await leg.closed() == code
        assert standin.sessions == []
        return
    assert await leg.recv_kind() is not None  # the greeting's audio
    await leg.stop()


def plivo_wss_headers(token: str) -> dict[str, str]:
    """The handshake signed over the wss:// form of the URL (computed with the SDK's signing functions)."""
    from plivo.utils.signature_v3 import construct_get_url, get_signature_v3

    nonce = "nonce-wss"
    base = construct_get_url("wss://relay.example.com/plivo/media-stream", {}).decode()
    return {"X-Plivo-Signature-V3": get_signature_v3(token.encode(), base, nonce.encode()).decode(),
            "X-Plivo-Signature-V3-Nonce": nonce}


async def test_malformed_plivo_frames_are_dropped_once_each(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Non-JSON, binary, payload-less media and nameless playedStream frames are logged once each; the call goes on."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url, plivo_auth_token=TOKEN))
    leg = await RawLeg.open(http, base, network=Plivo(), auth_token=TOKEN)
    await leg.start()
    await until(lambda: standin.sessions and standin.sessions[0].updated_at, what="session")
    for _ in range(3):
        await leg.ws.send_str("{not json")
        await leg.ws.send_bytes(b"\x00\x01")
        await leg.send({"event": "media", "streamId": leg.stream_sid, "media": {}})
        await leg.send({"event": "playedStream", "streamId": leg.stream_sid})
    session = standin.sessions[0]
    before = session.input_bytes
    await leg.media(b"\x20" * 160)
    await until(lambda: session.input_bytes == before + 160, what="audio after bad frames")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for prefix in ("non-JSON frame from plivo", "binary frame from plivo", "plivo media without a payload",
                   "plivo playedStream without a name"):
        assert len([w for w in warnings if w.startswith(prefix)]) == 1, prefix
    await leg.stop()


@pytest.mark.parametrize("network", [Twilio, Plivo], ids=["twilio", "plivo"])
async def test_key_presses_reach_the_model_as_one_sequence(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession,
                                                           caplog: pytest.LogCaptureFixture, network: type) -> None:
    """Rapid presses become one item ("pressed 1, 2, 3 and #") and one response; a later press is a new item;
    nothing per key press is logged above DEBUG."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)] * 3)
    base = await start_relay(stack, make_config(url, plivo_auth_token=TOKEN))
    leg = await RawLeg.open(http, base, network=network(), auth_token=TOKEN if network is Plivo else None)
    await leg.start()
    await _greeting_played(leg, standin)
    for digit in "123#":
        await leg.dtmf(digit)
        await asyncio.sleep(0.1)
    session = standin.sessions[0]
    await until(lambda: len(_keypad_items(session)) == 1, what="the key presses as one item")
    await asyncio.sleep(1.6)  # past the sequence gap: the next press is a new sequence
    await leg.dtmf("5")
    await until(lambda: len(_keypad_items(session)) == 2, timeout=5, what="the second sequence")
    assert _keypad_items(session) == ["The caller pressed 1, 2, 3 and #.", "The caller pressed 5."]
    kinds = [e["type"] for _, e in session.received]
    first = kinds.index("conversation.item.create", kinds.index("response.create") + 1)
    assert kinds[first:first + 2] == ["conversation.item.create", "response.create"]
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "dtmf" in r.getMessage().lower()]
    await leg.stop()


async def _greeting_played(leg: RawLeg, standin: RealtimeStandIn) -> None:
    """Read the greeting's messages, reporting each mark as played, until its response is done."""
    await until(lambda: standin.sessions and standin.sessions[0].done_at, what="the greeting generated")
    while True:
        message = await leg.recv_kind(timeout=2)
        assert message is not None
        if message[0] == "mark":
            await leg.mark(message[1])
            if not standin.sessions[0].active_id:
                return


def _keypad_items(session: Any) -> list[str]:
    return [e["item"]["content"][0]["text"] for _, e in session.received
            if e["type"] == "conversation.item.create" and e["item"]["role"] == "system"
            and e["item"]["content"][0]["text"].startswith("The caller pressed")]


@pytest.mark.parametrize(("digits", "text"), [("5", "The caller pressed 5."),
                                              ("12", "The caller pressed 1 and 2."),
                                              ("123#", "The caller pressed 1, 2, 3 and #.")])
def test_keypad_text(digits: str, text: str) -> None:
    """What the model is told for a sequence of presses."""
    assert keypad_text(digits) == text


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        pytest.param({"event": "start", "sequenceNumber": 1, "start": {"callId": "c", "streamId": "s"},
                      "extra_headers": "callerNumber=14155550100;streamToken=ab12;lang=en"},
                     PhoneStart("s", "c", {"caller_number": "+14155550100", "stream_token": "ab12"}), id="start"),
        pytest.param({"event": "start", "start": {"streamId": "s"}, "extra_headers": "callerNumber=unknown"},
                     PhoneStart("s", "", {"caller_number": "unknown"}), id="start-without-a-number"),
        pytest.param({"event": "media", "media": {"payload": "AAA="}}, PhoneAudio("AAA="), id="media"),
        pytest.param({"event": "playedStream", "name": "1.800"}, PhoneMarkPlayed("1.800"), id="playedStream"),
        pytest.param({"event": "played", "name": "1.800"}, PhoneMarkPlayed("1.800"), id="played"),
        pytest.param({"event": "dtmf", "dtmf": {"digit": "#"}}, PhoneDtmf("#"), id="dtmf"),
        pytest.param({"event": "clearedAudio", "sequenceNumber": 0}, None, id="clearedAudio"),
        pytest.param({"event": "stop"}, PhoneStop(), id="stop"),
    ],
)
def test_plivo_messages_parse_to_phone_events(message: dict[str, Any], parsed: object) -> None:
    """Plivo's wire format becomes the same phone events as Twilio's."""
    assert phone_plivo.parse_message(json.dumps(message)) == parsed


def test_plivo_outbound_messages_and_bad_frames() -> None:
    """playAudio, checkpoint and clearAudio as Plivo's docs show them; a start without streamId is refused."""
    payload = base64.b64encode(b"\x10" * 160).decode()
    assert json.loads(phone_plivo.play_audio_message("s", payload)) == {
        "event": "playAudio", "streamId": "s",
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": payload}}
    assert json.loads(phone_plivo.checkpoint_message("s", "0.160")) == {"event": "checkpoint", "streamId": "s",
                                                                        "name": "0.160"}
    assert json.loads(phone_plivo.clear_audio_message("s")) == {"event": "clearAudio", "streamId": "s"}
    with pytest.raises(MalformedFrame) as info:
        phone_plivo.parse_message('{"event": "start", "start": {}}')
    assert info.value.kind == "start"


async def test_a_replayed_answer_webhook_opens_no_second_stream(stack: contextlib.AsyncExitStack,
                                                                http: aiohttp.ClientSession) -> None:
    """Plivo's CallUUID is admitted once, as Twilio's CallSid: the same signed answer webhook gets the same token
    while it is unspent, and a hang-up once the call's stream has started."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, make_config(url, public_url=PUBLIC, plivo_auth_token=TOKEN))
    form = {"CallUUID": "uuid-replayed", "From": CALLER.lstrip("+"), "To": "14155550199"}

    async def answer() -> ET.Element:
        return await _answer(http, base, form, plivo_signature_headers(TOKEN, "POST", PUBLIC + "/plivo/answer", form))

    first, second = await answer(), await answer()
    assert first[1].get("extraHeaders") == second[1].get("extraHeaders") is not None
    network = Plivo()
    network.messages.call_id = "uuid-replayed"
    signed = plivo_signature_headers(TOKEN, "GET", PUBLIC + "/plivo/media-stream", {})
    leg = await RawLeg.open(http, base, network=network, headers=signed)
    await leg.start(parameters=phone_plivo.extra_headers(first[1].get("extraHeaders")))
    assert await leg.recv_kind() is not None
    third = await answer()
    assert [child.tag for child in third] == ["Speak", "Hangup"]
    assert len(standin.sessions) == 1
    await leg.stop()


async def test_a_plivo_only_deployment_serves_no_twilio_route(stack: contextlib.AsyncExitStack,
                                                              http: aiohttp.ClientSession) -> None:
    """With Plivo's credentials and no TWILIO_AUTH_TOKEN, an unsigned POST to Twilio's webhook (or its media stream,
    or /sms) gets 404, not TwiML with a stream token."""
    base = await start_relay(stack, make_config(public_url=PUBLIC, plivo_auth_id="MA1", plivo_auth_token=TOKEN,
                                                allow_unsigned_webhooks=False))
    async with http.post(base + "/incoming-call", data={"From": CALLER, "CallSid": "CA123"}) as resp:
        assert resp.status == 404
    for path in ("/media-stream", "/sms"):
        async with http.request("GET" if path == "/media-stream" else "POST", base + path) as resp:
            assert resp.status == 404
    form = {"CallUUID": "c9", "From": CALLER.lstrip("+")}
    root = await _answer(http, base, form, plivo_signature_headers(TOKEN, "POST", PUBLIC + "/plivo/answer", form))
    assert root.find("Stream") is not None

"""Telnyx: the TeXML answer, Ed25519 webhook signatures, the stream token, frames put back in order, and the
default call over Telnyx's protocol."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from support import CALLER, RawLeg, make_config, start_relay, start_standin, until

import simulate
from bridge import call as call_module
from standins.openai_service import AssistantTurn
from standins.phone_dialects import Answer, Telnyx, telnyx_public_key, telnyx_signature_headers
from standins.scenario import default_scenario

SEED = "telnyx-test-seed"
PUBLIC = "https://relay.example.com"


def _config(url: str = "ws://127.0.0.1:9/v1/realtime", **more: Any) -> Any:
    return make_config(url, public_url=PUBLIC, telnyx_public_key=telnyx_public_key(SEED),
                       allow_unsigned_webhooks=False, **more)


async def _post(http: aiohttp.ClientSession, base: str, form: dict[str, str], headers: dict[str, str]) -> Any:
    body = urlencode(form).encode()
    async with http.post(base + "/telnyx/answer", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded", **headers}) as resp:
        return resp.status, await resp.text()


async def test_texml_answer_for_allowed_and_restricted_callers(stack: contextlib.AsyncExitStack,
                                                               http: aiohttp.ClientSession) -> None:
    """A signed webhook from an allowed caller gets the greeting and a bidirectional RTP <Stream> in PCMU at 8000 Hz
    carrying the caller, the call id and the stream token; a restricted caller hears the refusal and is hung up."""
    base = await start_relay(stack, _config())
    form = {"CallSid": "v3:call-1", "From": CALLER, "To": "+14155550199"}
    status, text = await _post(http, base, form, telnyx_signature_headers(SEED, urlencode(form).encode()))
    assert status == 200
    root = ET.fromstring(text)
    stream = root.find("./Connect/Stream")
    assert stream is not None and (root.find("Say").text or "").endswith(", Jordan. Connecting you to your assistant.")
    assert {k: stream.get(k) for k in ("url", "bidirectionalMode", "bidirectionalCodec", "bidirectionalSamplingRate")} \
        == {"url": "wss://relay.example.com/telnyx/media-stream", "bidirectionalMode": "rtp",
            "bidirectionalCodec": "PCMU", "bidirectionalSamplingRate": "8000"}
    params = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert params["caller_number"] == CALLER and params["call_id"] == "v3:call-1" and len(params["stream_token"]) == 64
    refused = {"CallSid": "v3:call-2", "From": "+12125550123"}
    status, text = await _post(http, base, refused, telnyx_signature_headers(SEED, urlencode(refused).encode()))
    assert status == 200 and ET.fromstring(text).find("Hangup") is not None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: {}, id="unsigned"),
        pytest.param(lambda body: telnyx_signature_headers("another-account", body), id="another-key"),
        pytest.param(lambda body: telnyx_signature_headers(SEED, body + b"&From=%2B1"), id="other-body"),
        pytest.param(lambda body: telnyx_signature_headers(SEED, body, now=time.time() - 301), id="stale"),
        pytest.param(lambda body: {**telnyx_signature_headers(SEED, body), "telnyx-signature-ed25519": "@@"},
                     id="not-base64"),
    ],
)
async def test_webhooks_not_signed_by_the_account_are_refused(stack: contextlib.AsyncExitStack,
                                                              http: aiohttp.ClientSession, headers: Any) -> None:
    """Unsigned, signed with another key, signed over another body, older than 300 s, or garbled: 403."""
    base = await start_relay(stack, _config())
    form = {"CallSid": "v3:call-3", "From": CALLER}
    status, _ = await _post(http, base, form, headers(urlencode(form).encode()))
    assert status == 403


async def test_telnyx_routes_are_off_without_a_key(stack: contextlib.AsyncExitStack,
                                                   http: aiohttp.ClientSession) -> None:
    """Without TELNYX_PUBLIC_KEY the Telnyx routes do not exist (404)."""
    base = await start_relay(stack, make_config(twilio_auth_token="t", public_url=PUBLIC,
                                                allow_unsigned_webhooks=False))
    status, _ = await _post(http, base, {"From": CALLER}, {})
    assert status == 404
    async with http.get(base + "/telnyx/media-stream") as resp:
        assert resp.status == 404


async def test_frames_out_of_order_reach_the_model_in_order(stack: contextlib.AsyncExitStack,
                                                            http: aiohttp.ClientSession,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Media frames that arrive swapped are put back in order; a late duplicate and a frame from the far future
    are dropped; a Telnyx error frame is logged once; the call goes on."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    base = await start_relay(stack, _config(url))
    leg = await RawLeg.open(http, base, network=Telnyx())
    await leg.start()
    session = await until(lambda: standin.sessions and standin.sessions[0].updated_at and standin.sessions[0],
                          what="session")
    before = len(standin.input_audio.get(id(session), b""))
    frames = {n: bytes([n]) * 160 for n in range(1, 8)}

    async def media(chunk: int, ulaw: bytes) -> None:
        await leg.send({"event": "media", "sequence_number": str(100 + chunk), "stream_id": leg.stream_sid,
                        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                                  "payload": base64.b64encode(ulaw).decode()}})

    for chunk in (1, 2, 4, 3, 3, 900, 5, 6, 7):
        await media(chunk, frames.get(chunk, b"\x7f" * 160))
    await leg.send({"event": "error", "payload": {"code": 100003, "title": "malformed_frame",
                                                   "detail": "Received frame was not formed correctly"}})
    await until(lambda: len(standin.input_audio.get(id(session), b"")) >= before + 7 * 160, what="seven frames")
    received = bytes(standin.input_audio[id(session)][before:])
    assert received == b"".join(frames[n] for n in range(1, 8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if w.startswith("telnyx reported error 100003 malformed_frame")]) == 1
    assert not leg.ws.closed
    await leg.stop()


async def test_a_stream_in_another_codec_is_refused(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A start in PCMA (the TeXML never asks for it) is refused with one clear line, and no session is opened."""
    monkeypatch.setattr(call_module, "START_TIMEOUT_S", 1.0)
    standin, url = await start_standin(stack)
    base = await start_relay(stack, _config(url))
    leg = await RawLeg.open(http, base, network=Telnyx())
    start = json.loads(leg.network.opening(Answer([], "", {"caller_number": CALLER}))[1])
    start["start"]["media_format"]["encoding"] = "PCMA"
    await leg.send(start)
    assert await leg.closed(timeout=5) == 1000
    assert "telnyx start with media_format 'PCMA' at 8000 Hz refused: the stream must be PCMU at 8000 Hz" \
        in caplog.text
    assert standin.sessions == []


async def test_the_default_call_over_telnyx() -> None:
    """`python simulate.py --phone telnyx`'s call: greeting, barge-in, web search with music, goodbye, hang-up, with
    frames sent out of order now and then, as scripted."""
    result = await simulate.simulate_call(default_scenario(), seed=3, phone="telnyx")
    assert result.ok, result.problems
    assert result.caller.network.swapped > 10 and len(result.caller.barge_ins) == 1  # type: ignore[union-attr]

"""HTTP routes: health, TwiML for allowed and refused callers, and Twilio signatures."""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET

import aiohttp
from support import CALLER, RawLeg, make_config, start_relay

from standins.phone_dialects import twilio_signature

PUBLIC = "https://relay.example.com"


async def _twiml(http: aiohttp.ClientSession, base: str, form: dict[str, str], **kwargs: str) -> ET.Element:
    async with http.post(base + "/incoming-call", data=form, **kwargs) as resp:  # type: ignore[arg-type]
        assert resp.status == 200
        assert resp.content_type == "text/xml"
        return ET.fromstring(await resp.text())


async def test_health_fields(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """/health reports the seed-001 fields with their types; /healthz and / answer."""
    base = await start_relay(stack, make_config())
    async with http.get(base + "/health") as resp:
        body = await resp.json()
        assert resp.status == 200
    assert body["status"] == "healthy"
    assert re.fullmatch(r"\d+s", body["uptime"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    assert body["connections"] == {"active": 0, "total": 0}
    assert body["errors"] == 0
    assert body["openai_configured"] is True
    async with http.get(base + "/healthz") as resp:
        assert await resp.json() == {"status": "ok"}
    async with http.get(base + "/") as resp:
        assert (await resp.json())["message"].endswith("running")


async def test_allowed_caller_twiml(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """An allowed caller hears a time-of-day greeting with their name, then <Connect><Stream> and nothing after."""
    base = await start_relay(stack, make_config(public_url=PUBLIC))
    root = await _twiml(http, base, {"From": CALLER, "CallSid": "CA1"})
    assert [child.tag for child in root] == ["Say", "Connect"]
    assert re.fullmatch(r"Good (morning|afternoon|evening), Jordan\. Connecting you to your assistant\.",
                        root[0].text or "")
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://relay.example.com/media-stream"
    parameters = {p.get("name"): p.get("value") for p in stream}
    assert list(parameters) == ["caller_number", "stream_expires", "stream_nonce", "stream_token"]
    assert parameters["caller_number"] == CALLER and len(parameters["stream_token"]) == 64


async def test_get_webhook_and_host_header(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """GET with From in the query works; without PUBLIC_URL the Host header names the stream host."""
    base = await start_relay(stack, make_config(secondary_numbers=("+442079460958",)))
    async with http.get(base + "/incoming-call", params={"From": "+442079460958"},
                        headers={"Host": "calls.example.org"}) as resp:
        root = ET.fromstring(await resp.text())
    assert (root[0].text or "").endswith(", legend. Connecting you to your assistant.")
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://calls.example.org/media-stream"
    # A public host reached over plain http sits behind a TLS proxy: still wss. Loopback over http is a local
    # relay (the simulator's --relay-url recipe): ws, or the caller's TLS handshake fails.
    for host, url in [("calls.example.org:8080", "wss://calls.example.org:8080/media-stream"),
                      ("127.0.0.1:5050", "ws://127.0.0.1:5050/media-stream"),
                      ("localhost", "ws://localhost/media-stream")]:
        async with http.get(base + "/incoming-call", params={"From": "+442079460958"},
                            headers={"Host": host}) as resp:
            stream = ET.fromstring(await resp.text()).find("./Connect/Stream")
        assert stream is not None and stream.get("url") == url, host


async def test_names_are_xml_escaped(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """A first name with XML metacharacters stays text, never markup."""
    name = 'Tom & "Jerry" <Hangup/>'
    base = await start_relay(stack, make_config(primary_first_name=name))
    root = await _twiml(http, base, {"From": CALLER})
    assert (root[0].text or "").split(", ", 1)[1] == f"{name}. Connecting you to your assistant."
    assert root.find("Hangup") is None


async def test_refused_caller_twiml(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """A caller on neither list hears the restricted message and the call hangs up; no stream."""
    base = await start_relay(stack, make_config())
    root = await _twiml(http, base, {"From": "+12125550123"})
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "Sorry, this line is restricted. Goodbye."


async def test_empty_allowlists(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """Empty allowlists refuse everyone, unless ALLOW_ALL_CALLERS lets them in as "legend"."""
    closed = await start_relay(stack, make_config(primary_numbers=()))
    assert (await _twiml(http, closed, {"From": CALLER})).find("Hangup") is not None
    opened = await start_relay(stack, make_config(primary_numbers=(), allow_all_callers=True))
    root = await _twiml(http, opened, {"From": "+12125550123"})
    assert (root[0].text or "").endswith(", legend. Connecting you to your assistant.")
    assert root.find("./Connect/Stream") is not None


async def test_webhook_signature(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """With TWILIO_AUTH_TOKEN set, an unsigned or tampered webhook gets 403; a signed one TwiML."""
    base = await start_relay(stack, make_config(public_url=PUBLIC, twilio_auth_token="tok"))
    form = {"From": CALLER, "CallSid": "CA1"}
    signature = twilio_signature("tok", PUBLIC + "/incoming-call", form)
    async with http.post(base + "/incoming-call", data=form) as resp:
        assert resp.status == 403
    async with http.post(base + "/incoming-call", data={**form, "From": "+12125550123"},
                         headers={"X-Twilio-Signature": signature}) as resp:
        assert resp.status == 403
    root = await _twiml(http, base, form, headers={"X-Twilio-Signature": signature})  # type: ignore[arg-type]
    assert root.find("./Connect/Stream") is not None


async def test_media_stream_signature(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """An unsigned media-stream handshake is closed with 1008 and never reaches OpenAI."""
    base = await start_relay(stack, make_config(twilio_auth_token="tok"))
    leg = await RawLeg.open(http, base)
    await leg.start()
    assert await leg.closed() == 1008
    wrong = await RawLeg.open(http, base, headers={"X-Twilio-Signature": "bm9wZQ=="})
    assert await wrong.closed() == 1008
    async with http.get(base + "/health") as resp:
        assert (await resp.json())["connections"]["total"] == 0


async def test_media_stream_refuses_unlisted_caller(stack: contextlib.AsyncExitStack,
                                                    http: aiohttp.ClientSession) -> None:
    """A stream whose caller_number is not allowed is closed with 1008 before any upstream connect."""
    base = await start_relay(stack, make_config())
    leg = await RawLeg.open(http, base)
    await leg.start(caller="+12125550123")
    assert await leg.closed() == 1008


async def test_the_root_names_no_single_network(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """``GET /`` says a phone relay is running, whichever networks it serves (not "Twilio ⇄ Realtime" on Plivo)."""
    base = await start_relay(stack, make_config(plivo_auth_token="p", allow_unsigned_webhooks=False,
                                                public_url="https://relay.example.com"))
    async with http.get(base + "/") as resp:
        assert (resp.status, await resp.json()) == (200, {"message": "phone ⇄ OpenAI voice relay is running"})

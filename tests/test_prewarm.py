"""Pre-warming end to end: the real relay opens the model session at the voice webhook, and the stream takes it
over; sessions no stream takes are closed; a flood cannot open more than ``MAX_CALLS``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from support import CALLER, RawLeg, make_config, start_relay, start_standin, until

from bridge.prewarm import Prewarms
from config import Config, ConfigError, PrewarmMode, VoiceApi, startup_warnings
from model.factory import session_factory
from model.websocket import RealtimeClient
from standins.openai_service import AssistantTurn, RealtimeStandIn


def _noise(n: int) -> bytes:
    return bytes(range(1, 0x7F)) * (n // 126) + bytes(range(1, 1 + n % 126))


async def _webhook(http: aiohttp.ClientSession, base: str, call_sid: str) -> dict[str, str]:
    """POST the voice webhook for ``call_sid``: the stream parameters the TwiML carries."""
    async with http.post(base + "/incoming-call", data={"CallSid": call_sid, "From": CALLER}) as resp:
        assert resp.status == 200
        root = ET.fromstring(await resp.text())
    return {p.attrib["name"]: p.attrib["value"] for p in root.iter("Parameter")}


async def _first_media_after_start(leg: RawLeg, parameters: dict[str, str]) -> tuple[float, bytes]:
    """Send the start; seconds until the first media message, and its audio."""
    started = time.monotonic()
    await leg.start(parameters=parameters)
    while True:
        message = await leg.recv()
        assert message is not None
        if message["event"] == "media":
            return time.monotonic() - started, base64.b64decode(message["media"]["payload"])


def _kinds(standin: RealtimeStandIn, n: int = 0) -> list[str]:
    return [event["type"] for _, event in standin.sessions[n].received]


@pytest.mark.parametrize("api", list(VoiceApi))
async def test_the_greeting_is_ready_when_the_stream_opens(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession, api: VoiceApi) -> None:
    """PREWARM=greeting: by the time the stream opens (the caller heard the welcome meanwhile), the session is
    configured and the greeting asked for (GPT-Live, whose timeline moves with its input, hearing silence); its
    first audio reaches the phone within a few ms of the start, the call uses that one session, and no second
    greeting is asked for."""
    greeting = _noise(4000)
    standin, url = await start_standin(stack, [AssistantTurn(greeting, "Hello Jordan.")])
    standin.session_updated_delay_s = 0.3  # a service's configuration round trip: paid during the welcome
    base = await start_relay(stack, make_config(url, voice_api=api))
    leg = await RawLeg.open(http, base)
    parameters = await _webhook(http, base, leg.call_sid)
    await asyncio.sleep(1.0)  # the welcome being read
    sessions = standin.live_sessions if api is VoiceApi.LIVE else standin.sessions
    assert len(sessions) == 1  # opened at the webhook
    if api is VoiceApi.LIVE:  # paced by its input: it hears the line's silence while it waits
        assert standin.live_sessions[0]._vad.pos_ms >= 400
    delay, first = await _first_media_after_start(leg, parameters)
    assert delay < 0.1 and first == greeting[: len(first)]
    await asyncio.sleep(0.3)
    assert len(sessions) == 1
    if api is VoiceApi.REALTIME:
        assert _kinds(standin).count("response.create") == 1
    else:
        commentary = [e for _, e in standin.live_sessions[0].received if e["type"] == "session.commentary.append"]
        assert len(commentary) == 1 and "Jordan" in commentary[0]["content"]
    await leg.stop()


async def test_prewarm_session_opens_without_asking_for_the_greeting(stack: contextlib.AsyncExitStack,
                                                                      http: aiohttp.ClientSession) -> None:
    """PREWARM=session: configured at the webhook, the greeting asked for when the stream starts."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800), "Hi.")])
    base = await start_relay(stack, make_config(url, prewarm=PrewarmMode.SESSION))
    leg = await RawLeg.open(http, base)
    parameters = await _webhook(http, base, leg.call_sid)
    await until(lambda: standin.sessions and standin.sessions[0].updated_at, what="configured at the webhook")
    await asyncio.sleep(0.3)
    assert "response.create" not in _kinds(standin)
    await _first_media_after_start(leg, parameters)
    assert _kinds(standin).count("response.create") == 1 and len(standin.sessions) == 1
    await leg.stop()


async def test_prewarm_off_opens_the_session_at_the_stream(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession) -> None:
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800), "Hi.")])
    base = await start_relay(stack, make_config(url, prewarm=PrewarmMode.OFF))
    leg = await RawLeg.open(http, base)
    parameters = await _webhook(http, base, leg.call_sid)
    await asyncio.sleep(0.3)
    assert standin.sessions == []
    await _first_media_after_start(leg, parameters)
    assert len(standin.sessions) == 1
    await leg.stop()


async def test_a_failed_prewarm_leaves_the_stream_to_open_its_own(stack: contextlib.AsyncExitStack,
                                                                  http: aiohttp.ClientSession,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The service refuses the pre-warm's handshake: one warning; the stream, once the service is back, opens
    a session of its own and the caller is greeted."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800), "Hi.")])
    standin.refuse = True
    base = await start_relay(stack, make_config(url, metrics=True))
    leg = await RawLeg.open(http, base)
    parameters = await _webhook(http, base, leg.call_sid)
    await until(lambda: "pre-warming a session failed" in caplog.text, what="the failure logged")
    standin.refuse = False
    await _first_media_after_start(leg, parameters)
    assert len(standin.sessions) == 1
    async with http.get(base + "/metrics") as resp:
        assert 'relay_prewarms_total{outcome="failed"} 1.0' in await resp.text()
    await leg.stop()


async def test_a_session_the_service_closes_while_waiting_is_replaced(stack: contextlib.AsyncExitStack,
                                                                       http: aiohttp.ClientSession) -> None:
    """The service ends the pre-warmed session before the stream opens: the stream opens a fresh one."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800), "Hi.")] * 2)
    base = await start_relay(stack, make_config(url, prewarm=PrewarmMode.SESSION))
    leg = await RawLeg.open(http, base)
    parameters = await _webhook(http, base, leg.call_sid)
    await until(lambda: standin.sessions and standin.sessions[0].updated_at, what="pre-warmed")
    await standin.sessions[0].expire()
    await asyncio.sleep(0.2)
    await _first_media_after_start(leg, parameters)
    assert len(standin.sessions) == 2 and not standin.sessions[1].ws.closed
    await leg.stop()


async def test_a_stream_with_a_token_from_elsewhere_is_a_miss(stack: contextlib.AsyncExitStack,
                                                             http: aiohttp.ClientSession) -> None:
    """A stream whose webhook another worker answered finds no session here: it opens its own, counted missed."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(800), "Hi.")])
    base = await start_relay(stack, make_config(url, metrics=True))
    leg = await RawLeg.open(http, base)
    await leg.start()  # a token minted with the deployment's key, no webhook here
    await until(lambda: standin.sessions, what="a session of its own")
    async with http.get(base + "/metrics") as resp:
        assert 'relay_prewarms_total{outcome="missed"} 1.0' in await resp.text()
    async with http.get(base + "/health") as resp:
        assert (await resp.json())["prewarms"] == {"waiting": 0, "used": 0, "expired": 0, "missed": 1, "failed": 0}
    await leg.stop()


def test_prewarm_setting_and_its_warning_with_several_workers() -> None:
    config = Config.from_env({"OPENAI_API_KEY": "sk-test", "PREWARM": "session", "WORKERS": "4"})
    assert config.prewarm is PrewarmMode.SESSION
    assert any("about 75% of calls miss the session" in note for note in startup_warnings(config))
    assert Config.from_env({"OPENAI_API_KEY": "sk-test"}).prewarm is PrewarmMode.GREETING
    assert not any("PREWARM" in note for note in startup_warnings(Config.from_env(
        {"OPENAI_API_KEY": "sk-test", "WORKERS": "4", "PREWARM": "off"})))
    with pytest.raises(ConfigError, match="PREWARM must be one of greeting, session, off"):
        Config.from_env({"OPENAI_API_KEY": "sk-test", "PREWARM": "yes"})


async def test_a_webhook_flood_opens_no_more_sessions_than_max_calls(stack: contextlib.AsyncExitStack,
                                                                     http: aiohttp.ClientSession) -> None:
    """Ten admitted-looking webhooks at MAX_CALLS=2: two sessions open, eight callers hear the busy message."""
    standin, url = await start_standin(stack, [])
    base = await start_relay(stack, make_config(url, max_calls=2))
    answers = [await _webhook(http, base, f"CA{n:032x}") for n in range(10)]
    assert sum(1 for parameters in answers if parameters) == 2
    await asyncio.sleep(0.5)
    assert len(standin.sessions) == 2


async def test_a_session_no_stream_takes_is_closed_when_its_token_expires(stack: contextlib.AsyncExitStack) -> None:
    """A caller who hangs up during the welcome: the session is closed at the token's expiry, counted expired,
    and nothing is left open (the greeting it was generating included)."""
    standin, url = await start_standin(stack, [AssistantTurn(_noise(8000), "Hello.")])
    client = RealtimeClient()
    stack.push_async_callback(client.close)
    outcomes: list[str] = []
    prewarms = Prewarms(session_factory(make_config(url), client), PrewarmMode.GREETING, "near_field",
                        outcomes.append)
    prewarms.start("nonce-1", "Jordan", ttl_s=0.8)
    await until(lambda: standin.sessions and standin.sessions[0].active_id, what="the greeting being generated")
    await until(lambda: standin.sessions[0].ws.closed, timeout=3, what="the session closed at expiry")
    assert outcomes == ["expired"] and len(prewarms) == 0
    assert await prewarms.take("nonce-1") is None and outcomes == ["expired", "missed"]
    await prewarms.close()


async def test_shutdown_closes_waiting_sessions(stack: contextlib.AsyncExitStack) -> None:
    standin, url = await start_standin(stack, [])
    client = RealtimeClient()
    stack.push_async_callback(client.close)
    prewarms = Prewarms(session_factory(make_config(url), client), PrewarmMode.SESSION, "near_field")
    for n in range(3):
        prewarms.start(f"nonce-{n}", None, ttl_s=30)
    await until(lambda: len(standin.sessions) == 3 and all(s.updated_at for s in standin.sessions), what="open")
    await prewarms.close()
    await until(lambda: all(s.ws.closed for s in standin.sessions), what="all closed")


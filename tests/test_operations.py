"""Operating the relay: restarts drain (real processes and signals), MAX_CALLS, descriptor limits."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families
from support import (
    CALLER,
    ROOT,
    RawLeg,
    health,
    make_config,
    process_env,
    relay_output,
    relay_process,
    spawn_relay,
    speech,
    start_relay,
    start_standin,
    until,
)

import relay
import simulate
from callers import BUSY_MESSAGE, DRAINING_MESSAGE
from config import VadType
from ops.tokens import operator_allowed
from simulate import Scenario
from standins.openai_service import AssistantTurn, realtime_standin
from standins.phone_dialects import Twilio
from standins.phone_network import CallerTurn

GREETING = bytes(range(0x10, 0x60)) * 20  # 200 ms, no silence byte
ANSWER = bytes(range(0x20, 0x70)) * 20
CLOSING = bytes(range(0x30, 0x78)) * 25


async def _webhook(http: aiohttp.ClientSession, base: str) -> str:
    """The voice webhook for a new call (each with its own CallSid: one call id is admitted once)."""
    form = {"From": CALLER, "CallSid": "CA" + secrets.token_hex(16)}
    async with http.post(base + "/incoming-call", data=form) as resp:
        assert resp.status == 200
        return await resp.text()


def _relay_env(url: str, **more: str) -> dict[str, str]:
    return process_env(OPENAI_API_KEY="sk-ops", OPENAI_REALTIME_URL=url, PORT=str(simulate.free_port()),
                       ALLOW_ALL_CALLERS="true", VAD_TYPE="none", ALLOW_UNSIGNED_WEBHOOKS="true", **more)


async def test_a_call_survives_sigterm_and_new_calls_are_turned_away(stack: contextlib.AsyncExitStack,
                                                                     http: aiohttp.ClientSession) -> None:
    """During the drain the live call goes on (a key press gets its answer), /health answers 503 draining,
    a new call hears the polite refusal, a new stream gets 1013; when the caller hangs up the process exits 0
    long before the drain timeout."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING), AssistantTurn(ulaw=ANSWER)])
    async with relay_process(http, _relay_env(url, DRAIN_TIMEOUT_S="60")) as relay:
        leg = await RawLeg.open(http, relay.base_url)
        await leg.start(key="sk-ops")
        assert await leg.listen(len(GREETING)) == GREETING
        relay.process.send_signal(signal.SIGTERM)
        status, body = await until_health(http, relay.base_url, "draining")
        assert (status, body["status"]) == (503, "draining")
        twiml = await _webhook(http, relay.base_url)
        assert DRAINING_MESSAGE in twiml and "<Hangup" in twiml and "<Stream" not in twiml
        late = await RawLeg.open(http, relay.base_url)
        assert await late.closed() == 1013
        await leg.dtmf("1")  # the live call still works: the key press is answered
        assert await leg.listen(len(ANSWER)) == ANSWER
        await leg.stop()
        assert await asyncio.wait_for(relay.process.wait(), 10) == 0
    assert "reason=twilio stop" in relay.output
    assert "sk-ops" not in relay.output
    assert not any("restarting" in item for item in standin.sessions[0].system_texts())


async def until_health(http: aiohttp.ClientSession, base: str, status: str) -> tuple[int, dict[str, Any]]:
    """``/health`` once its status is ``status`` (the test fails after 5 s)."""

    async def reached() -> tuple[int, dict[str, Any]] | None:
        code, body = await health(http, base)
        return (code, body) if body["status"] == status else None

    return await until(reached, what=f"/health {status}")


async def test_the_drain_timeout_ends_the_call_with_a_closing_line(stack: contextlib.AsyncExitStack,
                                                                   http: aiohttp.ClientSession) -> None:
    """A call still live at the drain timeout hears the assistant's closing line (asked for with a system
    message) before the stream closes 1001, and the process exits 0."""
    standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING), AssistantTurn(ulaw=CLOSING)])
    async with relay_process(http, _relay_env(url, DRAIN_TIMEOUT_S="6")) as relay:
        leg = await RawLeg.open(http, relay.base_url)
        await leg.start(key="sk-ops")
        await leg.listen(len(GREETING))
        started = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        heard, code = await leg.until_closed()
        assert heard == CLOSING and code == 1001
        assert 0.5 < time.monotonic() - started < 7
        assert await asyncio.wait_for(relay.process.wait(), 10) == 0
    assert any("restarting" in text for text in standin.sessions[0].system_texts())
    assert "reason=server restarting" in relay.output


async def test_a_second_signal_ends_the_drain_at_once(stack: contextlib.AsyncExitStack,
                                                      http: aiohttp.ClientSession) -> None:
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING)])
    async with relay_process(http, _relay_env(url, DRAIN_TIMEOUT_S="60")) as relay:
        leg = await RawLeg.open(http, relay.base_url)
        await leg.start(key="sk-ops")
        await leg.listen(len(GREETING))
        relay.process.send_signal(signal.SIGTERM)
        await until_health(http, relay.base_url, "draining")
        started = time.monotonic()
        relay.process.send_signal(signal.SIGINT)
        assert await leg.closed(timeout=10) == 1001
        assert await asyncio.wait_for(relay.process.wait(), 10) == 0
        assert time.monotonic() - started < 5


async def test_max_calls(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """At MAX_CALLS the webhook answers busy, /health answers 503 full (capacity and active), and a stream
    beyond it is closed 1013; when a call ends there is room again. An answered call holds its place
    until its stream opens."""
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING)])
    base = await start_relay(stack, make_config(url, max_calls=2, vad_type=VadType.NONE))
    first = await RawLeg.open(http, base)
    await first.start()
    await first.listen(len(GREETING))
    code, body = await health(http, base)
    assert code == 200 and body["status"] == "healthy" and (body["capacity"], body["active"]) == (2, 1)
    assert "<Stream" in await _webhook(http, base)  # the second place, reserved for its stream
    code, body = await health(http, base)
    assert code == 503 and body["status"] == "full" and body["active"] == 2
    busy = await _webhook(http, base)
    assert BUSY_MESSAGE in busy and "<Stream" not in busy
    second = await RawLeg.open(http, base)  # the answered call's stream takes its place
    await second.start()
    await second.listen(len(GREETING))
    third = await RawLeg.open(http, base)
    assert await third.closed() == 1013
    await first.stop()
    await until(lambda: _room(http, base), what="room after a call ended")
    await second.stop()
    assert "<Stream" in await _webhook(http, base)


async def _room(http: aiohttp.ClientSession, base: str) -> bool:
    return (await health(http, base))[0] == 200


IDLE_CLIENTS = 200


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def _idle_clients(port: int, n: int) -> list[asyncio.StreamWriter]:
    """``n`` TCP connections that send nothing (each holds a descriptor in the relay once accepted)."""
    writers = []
    for _ in range(n):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


def _limit_descriptors(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec_fn`` that starts the relay under ``ulimit -n`` soft/hard limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _real_call(http: aiohttp.ClientSession, base: str) -> bytes:
    leg = await RawLeg.open(http, base)
    await leg.start(key="sk-ops")
    heard = await leg.listen(len(GREETING))
    await leg.stop()
    return heard


async def test_idle_clients_do_not_exhaust_descriptors(stack: contextlib.AsyncExitStack,
                                                       http: aiohttp.ClientSession) -> None:
    """Started at a soft limit of 128 descriptors (hard 4,096), the relay raises its own limit: 200 idle
    clients hold descriptors and a real call is still served, with no accept error logged."""
    _standin, url = await start_standin(stack, lambda session: AssistantTurn(ulaw=GREETING))
    async with relay_process(http, _relay_env(url), _limit_descriptors(128, 4096)) as relay:
        idle = await _idle_clients(_port(relay.base_url), IDLE_CLIENTS)
        await asyncio.sleep(0.5)
        assert await _real_call(http, relay.base_url) == GREETING
        for writer in idle:
            writer.close()
        relay.process.send_signal(signal.SIGINT)
    output = relay.output
    assert "cannot accept" not in output and "Traceback" not in output


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_descriptor_exhaustion_is_one_line_and_the_relay_recovers(stack: contextlib.AsyncExitStack,
                                                                         http: aiohttp.ClientSession,
                                                                         event_loop: str) -> None:
    """At a hard limit of 128, 200 idle clients exhaust the descriptors: the process lives, and once the idle
    clients go a real call is served. On asyncio's loop accept errors are one rate-limited line (asyncio alone
    logs thousands of tracebacks a second); libuv (uvloop) closes the connections it cannot take without a
    word, so there the startup warning about the limit is the one line."""
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")
    _standin, url = await start_standin(stack, lambda session: AssistantTurn(ulaw=GREETING))
    async with relay_process(http, _relay_env(url, EVENT_LOOP=event_loop), _limit_descriptors(128, 128)) as relay:
        idle = await _idle_clients(_port(relay.base_url), IDLE_CLIENTS)
        await asyncio.sleep(3)
        for writer in idle:
            writer.close()
        await asyncio.sleep(1.5)  # asyncio retries accept within a second
        assert await _real_call(http, relay.base_url) == GREETING
        assert relay.process.returncode is None
        relay.process.send_signal(signal.SIGINT)
    output = relay.output
    assert f"{event_loop} event loop" in output
    accept_errors = 1 if event_loop == "asyncio" else 0
    assert output.count("cannot accept connections: Too many open files") == accept_errors, output[-2000:]
    assert "Traceback" not in output and "short of MAX_CALLS" in output
    assert len(output.splitlines()) < 40


async def test_tls_from_certificate_files(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession,
                                          tmp_path: Path) -> None:
    """TLS_CERT_FILE / TLS_KEY_FILE (a certificate made now by a test CA): /health over https, the webhook's
    stream URL is wss://, and a whole call runs over wss; a file that is no certificate stops startup."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server.private_key_pem.write_to_path(str(key))
    server.cert_chain_pems[0].write_to_path(str(cert))
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=GREETING)])
    env = _relay_env(url, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    port = env["PORT"]
    process = await spawn_relay(env)
    base = f"https://127.0.0.1:{port}"
    try:
        async def up() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/healthz", ssl=client_tls) as resp:
                    return resp.status == 200
            return False

        await until(up, timeout=15, what="the relay up over https")
        # The container's HEALTHCHECK (python relay.py healthcheck) speaks https to a relay that serves TLS.
        probe = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "relay.py"), "healthcheck", env=env,
                                                     cwd=ROOT / "tests", stdout=asyncio.subprocess.PIPE)
        assert await asyncio.wait_for(probe.wait(), 15) == 0
        wrong = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "relay.py"), "healthcheck",
                                                     env={**env, "TLS_CERT_FILE": "", "TLS_KEY_FILE": ""},
                                                     cwd=ROOT / "tests", stdout=asyncio.subprocess.PIPE)
        said, _ = await asyncio.wait_for(wrong.communicate(), 15)  # plain http to a TLS port: unhealthy, one line
        assert wrong.returncode == 1 and said.decode().startswith(f"healthcheck: http://127.0.0.1:{port}/healthz")
        async with http.post(base + "/incoming-call", data={"From": CALLER}, ssl=client_tls) as resp:
            assert f'url="wss://127.0.0.1:{port}/media-stream"' in await resp.text()
        ws = await http.ws_connect(f"wss://127.0.0.1:{port}/media-stream", ssl=client_tls)
        leg = RawLeg(ws, Twilio())
        await leg.start(key="sk-ops")
        assert await leg.listen(len(GREETING)) == GREETING
        await leg.stop()
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    (tmp_path / "junk.pem").write_text("not a certificate")
    env = _relay_env(url, TLS_CERT_FILE=str(tmp_path / "junk.pem"), TLS_KEY_FILE=str(key))
    code, output = await relay_output(env)
    assert code == 1 and "TLS_CERT_FILE / TLS_KEY_FILE: not a usable PEM" in output


async def test_metrics_after_a_call(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """/metrics (METRICS=true, behind CONSOLE_TOKEN) after a call with a barge-in, a web search and end_call,
    parsed with prometheus-client's own parser; 404 when metrics are off."""
    scenario = Scenario(
        assistant=[AssistantTurn(speech("assistant_long"), "A long greeting..."),
                   AssistantTurn(function_calls=[("gpt_web_search", {"query": "weather in Paris"}), ("end_call", {})]),
                   AssistantTurn(speech("assistant_goodbye"), "Goodbye!")],
        caller=[CallerTurn(speech("caller_interrupt"), "Sorry, wait.", {"after": "assistant_audio", "ms": 1000})],
        hangup={"by": "assistant"},
        expect_barge_ins=1,
    )
    standin, url = await stack.enter_async_context(
        realtime_standin(scenario.assistant, None, 1, scenario.web_search))
    port = simulate.free_port()
    config = simulate.relay_config(url, port=port, public_url=f"http://127.0.0.1:{port}", twilio_auth_token="tok",
                                   primary_numbers=(scenario.caller_number,), metrics=True,
                                   console_token="console-secret")
    base = await stack.enter_async_context(relay.serving(config, port=port))
    result = await simulate.simulate_call(scenario, relay_url=base, auth_token="tok")
    assert result.ok, result.problems
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    async with http.get(base + "/metrics", headers=_basic("ops", "wrong")) as resp:
        assert resp.status == 401
    async with http.get(base + "/metrics", headers=_basic("ops", "console-secret")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(metric: str, **labels: str) -> float:
        return samples.get((metric, tuple(sorted(labels.items()))), 0.0)

    session = standin.sessions[0]
    assert value("relay_calls_total") == 1 and value("relay_calls_active") == 0
    assert value("relay_calls_ended_total", reason="end_call") == 1
    assert value("relay_call_duration_seconds_count") == 1
    assert value("relay_barge_ins_total") == 1
    assert value("relay_truncation_audio_end_ms_count") == len(session.truncates) == 1
    assert value("relay_tool_calls_total", name="gpt_web_search", outcome="ok") == 1
    assert value("relay_tool_calls_total", name="end_call", outcome="ok") == 1
    assert value("relay_tool_call_seconds_count", name="gpt_web_search") == 1
    assert value("relay_frames_total", direction="in") == len(session.append_times)
    assert value("relay_frames_total", direction="out") > 0
    assert value("relay_event_loop_lag_seconds_count") > 0
    off = await stack.enter_async_context(relay.serving(simulate.relay_config(url)))
    async with http.get(off + "/metrics") as resp:
        assert resp.status == 404


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


def test_operator_auth_is_basic_with_the_token_as_password() -> None:
    token = "console-secret"
    assert operator_allowed(aiohttp.encode_basic_auth("anyone", token), token)
    assert operator_allowed(None, None)  # no token configured: open
    for header in (None, "", "Bearer console-secret", "Basic !!!", "Basic " + "Y29uc29sZS1zZWNyZXQ=",
                   aiohttp.encode_basic_auth("ops", "console-secreT"), "Basic /w==",
                   aiohttp.encode_basic_auth("ops", "")):
        assert not operator_allowed(header, token), header


async def test_workers_share_the_port_and_drain_on_their_own(stack: contextlib.AsyncExitStack,
                                                             http: aiohttp.ClientSession) -> None:
    """WORKERS=2: two processes answer on one port (SO_REUSEPORT), calls are served, and SIGTERM (passed on
    once to each) ends both; the supervisor exits 0."""
    _standin, url = await start_standin(stack, lambda session: AssistantTurn(ulaw=GREETING))
    async with relay_process(http, _relay_env(url, WORKERS="2")) as relay:
        pids: set[int] = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:

            async def both_answered() -> bool:  # the second worker may still be starting
                pids.add((await health(fresh, relay.base_url))[1]["pid"])
                return len(pids) == 2

            await until(both_answered, timeout=15, what="both workers answering")
        assert relay.process.pid not in pids
        heard = await asyncio.gather(*(_real_call(http, relay.base_url) for _ in range(4)))
        assert heard == [GREETING] * 4
        relay.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.process.wait(), 15) == 0
    assert "started 2 workers" in relay.output
    assert relay.output.count(" listening on 0.0.0.0:") == 2 and relay.output.count("stopped") == 2
    assert relay.output.count("ALLOW_ALL_CALLERS=true") == 1  # warnings once, from the supervisor


async def test_workers_on_a_port_in_use_exit_1() -> None:
    """A worker that cannot bind stops the others, and the supervisor exits 1 with the PORT line."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        env = _relay_env("ws://127.0.0.1:9/v1/realtime", WORKERS="2")
        env["PORT"] = str(taken.getsockname()[1])
        code, text = await relay_output(env)
    assert code == 1, text
    assert "is in use by another process" in text and "could not start" in text


async def test_ngrok_tunnel_that_cannot_open_is_one_clear_line(tmp_path: Path) -> None:
    """NGROK_AUTHTOKEN with no way to reach ngrok (this machine is offline): one line saying the tunnel could not
    open, exit 1, and the token never printed. With the package missing: one line saying to install it."""
    token = "2ngrokTestToken_" + "x" * 30
    code, output = await relay_output(_relay_env("ws://127.0.0.1:9/v1/realtime", NGROK_AUTHTOKEN=token,
                                                  LOG_LEVEL="DEBUG", LOG_LEVEL_LIBRARIES="DEBUG"))
    assert code == 1 and "the ngrok tunnel could not open" in output, output
    assert token not in output and "Traceback" not in output
    (tmp_path / "ngrok.py").write_text("raise ImportError('ngrok is not installed here')\n")
    env = _relay_env("ws://127.0.0.1:9/v1/realtime", NGROK_AUTHTOKEN=token, PYTHONPATH=str(tmp_path))
    code, output = await relay_output(env)
    assert code == 1 and "the ngrok package is not installed: pip install ngrok" in output, output
    env = _relay_env("ws://127.0.0.1:9/v1/realtime", NGROK_AUTHTOKEN=token, WORKERS="2")
    code, output = await relay_output(env)
    assert code == 1 and "NGROK_AUTHTOKEN works with WORKERS=1 only" in output


async def test_workers_drain_when_the_supervisor_is_killed(stack: contextlib.AsyncExitStack,
                                                           http: aiohttp.ClientSession) -> None:
    """A supervisor killed outright (SIGKILL passes nothing on) leaves no worker serving alone: each notices
    within a second or two and drains."""
    _standin, url = await start_standin(stack, lambda session: AssistantTurn(ulaw=GREETING))
    async with relay_process(http, _relay_env(url, WORKERS="2")) as relay:
        relay.process.kill()
        await relay.process.wait()

        async def refused() -> bool:
            try:
                async with http.get(relay.base_url + "/healthz"):
                    return False
            except aiohttp.ClientConnectionError:
                return True

        await until(refused, timeout=15, what="both workers gone")
    assert relay.output.count("the supervisor is gone; draining") == 2

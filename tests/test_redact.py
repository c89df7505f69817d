"""redact.py and the logs: no secret reaches stdout, stderr or any logger; logs an operator can read."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
import socket
import subprocess
import sys
import traceback

import aiohttp
import pytest
from support import (
    CALLER,
    ROOT,
    make_config,
    process_env,
    relay_process,
    speech,
    start_relay,
    start_standin,
    until,
)

import redact
import relay
import simulate
from simulate import Scenario
from standins.openai_service import AssistantTurn

MARKERS = {
    "OPENAI_API_KEY": "sk-marker-openai-4f1c2d9e",
    "NGROK_AUTHTOKEN": "marker-ngrok-8a7b",
    "CONSOLE_TOKEN": "marker-console-24",
    "SMTP_PASS": "marker-smtp-pass-51",
    "SMTP_USER": "marker-smtp-user-62",
    "SENDER_FROM_EMAIL": "marker-sender-73@example.com",
    "PRIMARY_TO_EMAIL": "marker-primary-84@example.com",
    "SECONDARY_TO_EMAIL": "marker-secondary-95@example.com",
    "TWILIO_AUTH_TOKEN": "marker-twilio-token-a6",
    "TWILIO_ACCOUNT_SID": "ACmarker-sid-b7",
    "TWILIO_API_KEY": "SKmarker-key-c8",
    "TWILIO_API_SECRET": "marker-api-secret-d9",
    "PLIVO_AUTH_ID": "MAmarker-plivo-e0",
    "PLIVO_AUTH_TOKEN": "marker-plivo-token-f1",
    "SECRET_ENV_VAR": "marker-secret-var-02",
    "MY_TOKEN": "marker-extra-token-13",
}
"""A marker secret in every variable redact.py must mask (MY_TOKEN through REDACT_ENV_KEYS)."""


def test_redactor_masks_longest_first_items_of_lists_and_never_short_values() -> None:
    """One pass masks every secret; a secret inside a longer one is masked whole; list items are masked one by
    one; blank and short values are never patterns."""
    env = {"OPENAI_API_KEY": "sk-abcdef", "SMTP_PASS": "sk-abcdef-longer", "PRIMARY_TO_EMAIL": "a@x.io, b@y.io",
           "SMTP_USER": "on", "TWILIO_API_KEY": "  ", "REDACT_ENV_KEYS": "MINE, OTHER", "MINE": "mine-1234"}
    values = redact.secret_values(redact.secret_keys(env), env)
    assert values == ["sk-abcdef-longer", "a@x.io, b@y.io", "mine-1234", "sk-abcdef", "a@x.io", "b@y.io"]
    mask = redact.Redactor(values)
    assert mask("key sk-abcdef-longer and sk-abcdef, to a@x.io or b@y.io; mine-1234 on") == (
        "key [secure] and [secure], to [secure] or [secure]; [secure] on")
    assert not redact.Redactor(["on", ""]) and redact.Redactor(["on"])("on and on") == "on and on"


def test_patch_logs_redacts_print_and_direct_writes_and_restores(capsys: pytest.CaptureFixture[str]) -> None:
    """print and writes to sys.stdout / sys.stderr are masked until the restore function is called."""
    restore = redact.patch_logs(["SECRET_ENV_VAR"], {"SECRET_ENV_VAR": "secret value"})
    try:
        print("print:", "secret value")
        sys.stdout.write("stdout secret value\n")
        sys.stderr.write("stderr secret value\n")
        sys.stderr.writelines(["lines secret value\n"])
    finally:
        restore()
    print("after secret value")
    out, err = capsys.readouterr()
    assert out == "print: [secure]\nstdout [secure]\nafter secret value\n"
    assert err == "stderr [secure]\nlines [secure]\n"


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_formatter_masks_message_arguments_traceback_and_stack(json_lines: bool) -> None:
    """Every part of a record is masked before it is written, in text and JSON (a secret with a quote too,
    which JSON would escape past a stream-level mask)."""
    secret, quoted = "tok-9f8e7d", 'pa"ss-wo"rd'
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(redact.LogFormatter(json_lines, redact.Redactor([secret, quoted])))
    log = logging.getLogger("test_redact.formatter")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"upstream refused {secret}")
        except RuntimeError:
            log.error("failed with %s and %s", secret, quoted, exc_info=True, stack_info=True,
                      extra={"stream_sid": "MZ1", "call_sid": secret})
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert secret not in text and quoted not in text and json.dumps(quoted)[1:-1] not in text
    assert "Traceback" in text and "RuntimeError: upstream refused [secure]" in text
    if json_lines:
        record = json.loads(text)
        assert record["message"] == "failed with [secure] and [secure]"
        assert (record["logger"], record["level"], record["stream_sid"], record["call_sid"]) == (
            "test_redact.formatter", "ERROR", "MZ1", "[secure]")
        assert record["exc_info"].startswith("Traceback") and record["stack_info"].startswith("Stack (most recent")


@pytest.mark.parametrize("log_format", ["text", "json", "control"])
async def test_no_secret_reaches_the_output_of_a_whole_call(stack: contextlib.AsyncExitStack,
                                                             http: aiohttp.ClientSession, log_format: str) -> None:
    """`python relay.py` at DEBUG (libraries too), marker secrets in every variable: a call with a failing tool, an
    upstream error echoing every secret, unsigned webhooks and a shutdown write no marker, in text or JSON. The
    control run (DISABLE_LOG_REDACTION=true) shows the markers would be there."""
    short = speech("assistant_short")[: 8 * 600]
    turns = [AssistantTurn(short, "Hello.", [("send_email", {"subject": "s", "body_html": "<p>b</p>"}),
                                             ("launch_rocket", {})]),
             AssistantTurn(short, "Sorry.")]
    standin, url = await start_standin(stack, turns)
    # With NGROK_AUTHTOKEN the relay would open a tunnel; the ngrok test checks that token's masking.
    markers = {name: value for name, value in MARKERS.items() if name != "NGROK_AUTHTOKEN"}
    env = process_env(**markers, REDACT_ENV_KEYS="MY_TOKEN", OPENAI_REALTIME_URL=url,
                      PORT=str(simulate.free_port()), PUBLIC_URL="http://127.0.0.1", PRIMARY_USER_PHONE_NUMBERS=CALLER,
                      LOG_LEVEL="DEBUG", LOG_LEVEL_LIBRARIES="DEBUG", VAD_TYPE="server_vad",
                      SMTP_HOST="127.0.0.1", SMTP_PORT=str(simulate.free_port()), SMTP_SECURITY="none",
                      LOG_FORMAT="json" if log_format == "json" else "text")
    env["PUBLIC_URL"] += ":" + env["PORT"]
    if log_format == "control":
        env["DISABLE_LOG_REDACTION"] = "true"
    scenario = Scenario(assistant=turns, hangup={"after": "assistant_done", "delay_ms": 300}, expect_barge_ins=0,
                        max_duration_s=30)

    async def upstream_echoes_every_secret() -> None:
        await until(lambda: standin.sessions and standin.sessions[0].updated_at, timeout=10, what="session")
        await standin.sessions[0].error("invalid_api_key", "Incorrect API key provided: " + " ".join(markers.values()))

    async with relay_process(http, env) as relay:
        async with http.post(relay.base_url + "/incoming-call", data={"From": CALLER}) as resp:
            assert resp.status == 403
        async with http.get(relay.base_url + "/incoming-call", params={"From": CALLER}) as resp:
            assert resp.status == 403
        call = simulate.simulate_call(scenario, relay.base_url, MARKERS["TWILIO_AUTH_TOKEN"])
        result, _ = await asyncio.gather(call, upstream_echoes_every_secret())
        assert result.ok, result.problems
        relay.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.process.wait(), 10) == 0
    output = relay.output
    assert "realtime error type=invalid_request_error code=invalid_api_key" in output
    assert "send_email via 127.0.0.1" in output  # the path that carries the SMTP password
    if log_format == "control":
        assert "DISABLE_LOG_REDACTION=true: secret values are not masked in this log" in output
        assert MARKERS["OPENAI_API_KEY"] in output and MARKERS["PLIVO_AUTH_TOKEN"] in output
        return
    leaked = sorted(name for name, value in markers.items() if value in output)
    assert leaked == []
    assert "From=" not in output and "+14155550100" not in output  # the access log shows paths, not queries
    if log_format == "json":
        records = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
        started = next(r for r in records if r["message"].startswith("call started"))
        assert started["stream_sid"].startswith("MZ") and started["call_sid"].startswith("CA")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param("PORT", MARKERS["OPENAI_API_KEY"], "PORT must be a whole number from 1 to 65535", id="port"),
        pytest.param("OPENAI_REALTIME_URL", "https://api.example.com/v1?api-key=" + MARKERS["SMTP_PASS"],
                     "OPENAI_REALTIME_URL must be a ws:// or wss:// URL", id="url-query"),
        pytest.param("TIMEZONE", MARKERS["TWILIO_AUTH_TOKEN"], "TIMEZONE must be an IANA zone such as Europe/Paris",
                     id="timezone"),
        pytest.param("PRIMARY_USER_PHONE_NUMBERS", f"+14155550100,{MARKERS['SMTP_PASS']}",
                     "PRIMARY_USER_PHONE_NUMBERS item 2 is not a valid phone number", id="phone-list"),
        pytest.param("OPENAI_API_KEY", "“sk-pasted-with-curly-quotes”", "OPENAI_API_KEY has characters an API key "
                     "cannot have (quotes, spaces, line breaks or non-ASCII letters); paste the key alone",
                     id="key-characters"),
    ],
)
def test_configuration_errors_name_the_variable_never_the_value(tmp_path: object, variable: str, value: str,
                                                                 message: str) -> None:
    """A secret pasted into the wrong variable (or a key pasted with quotes) is named, never printed."""
    env = process_env(**{"OPENAI_API_KEY": "sk-fine", "DISABLE_LOG_REDACTION": "true", variable: value})
    result = subprocess.run([sys.executable, str(ROOT / "relay.py")], env=env, cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"relay: configuration error: {message}\n"
    assert value.strip("“”") not in result.stderr + result.stdout


def test_port_in_use_is_one_clear_line(tmp_path: object) -> None:
    """A port that is taken: one line naming PORT, exit 1, no traceback, and no "listening" claim."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = process_env(OPENAI_API_KEY="sk-fine", PORT=str(port), TOOLS="none", ALLOW_ALL_CALLERS="true")
        result = subprocess.run([sys.executable, str(ROOT / "relay.py")], env=env, cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert [line.split(": ", 1)[1] for line in errors] == [f"PORT {port} is in use by another process; set PORT to a "
                                                           "free port"]
    assert "Traceback" not in result.stderr and "listening" not in result.stderr


async def test_access_log_without_queries_and_probes_at_debug(stack: contextlib.AsyncExitStack,
                                                              http: aiohttp.ClientSession,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The access log shows the path without its query (caller numbers); /health and /healthz only at DEBUG;
    the startup warm-up search logs nothing."""
    base = await start_relay(stack, make_config(tools=("gpt_web_search",)))
    async with http.get(base + "/incoming-call", params={"From": CALLER}) as resp:
        assert resp.status == 200
    for probe in ("/health", "/healthz"):
        async with http.get(base + probe):
            pass
    access = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "relay.access"]
    assert [(level, message.split('"')[1]) for level, message in access] == [
        (logging.INFO, "GET /incoming-call"), (logging.DEBUG, "GET /health"), (logging.DEBUG, "GET /healthz")]
    assert not any("warm-up.invalid" in r.getMessage() for r in caplog.records)


def test_debug_lines_are_bounded_per_kind() -> None:
    """A flood of one kind of line gives one line a second per call, then one that counts what was held back."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = redact.CallLog(logging.getLogger("test_redact.flood"), "MZ7")
    log.logger.addHandler(handler)
    log.logger.setLevel(logging.DEBUG)
    log.logger.propagate = False
    try:
        for _ in range(500):
            log.once_a_second(logging.DEBUG, "response.output_audio_transcript.delta", "realtime %s", "delta")
        log.once_a_second(logging.DEBUG, "other", "realtime %s", "other")
        log._held["response.output_audio_transcript.delta"][0] = 0.0  # a second later
        log.once_a_second(logging.DEBUG, "response.output_audio_transcript.delta", "realtime %s", "delta")
    finally:
        log.logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "realtime delta stream_sid=MZ7",
        "realtime other stream_sid=MZ7",
        "realtime delta (499 more held back in the last second) stream_sid=MZ7",
    ]


def test_traceback_module_output_is_masked_too(capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback printed straight to stderr (not through logging) is masked by the stream."""
    restore = redact.patch_logs(["SMTP_PASS"], {"SMTP_PASS": "hunter2-pass"})
    try:
        try:
            raise ValueError("login hunter2-pass refused")
        except ValueError:
            traceback.print_exc()
    finally:
        restore()
    err = capsys.readouterr().err
    assert "ValueError: login [secure] refused" in err and "hunter2-pass" not in err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("wss://user:pa55word@example.openai.azure.com/openai/realtime?api-key=k3y",
                     "example.openai.azure.com", id="credentials-and-query"),
        pytest.param("ws://127.0.0.1:8765/v1/realtime", "127.0.0.1:8765", id="port"),
    ],
)
def test_startup_line_shows_the_realtime_host_only(url: str, shown: str) -> None:
    """The "listening" line names the Realtime host, never credentials or a query."""
    assert relay.host_of(url) == shown

"""Configuration: defaults, every malformed value named, and the process exit on bad config."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import typing

import aiohttp
import pytest
from openai.types.realtime.realtime_reasoning_effort import RealtimeReasoningEffort
from support import ROOT, process_env, until

import simulate
import tools
from config import (
    REASONING_EFFORTS,
    TOOL_NAMES,
    Config,
    ConfigError,
    NoiseReduction,
    VadType,
    startup_warnings,
)
from envreader import to_e164
from mailserver import SmtpSecurity
from model.factory import realtime_options
from model.factory import startup_warnings as model_warnings
from model.realtime_wire import session_update
from standins.openai_service import client_event_problems

KEY = {"OPENAI_API_KEY": "sk-test"}


def test_defaults_match_the_design_card() -> None:
    """Only OPENAI_API_KEY is needed; everything else has the documented default."""
    config = Config.from_env(KEY)
    assert config.port == 10000
    assert config.realtime_url == "wss://api.openai.com/v1/realtime"
    assert config.realtime_model == "gpt-realtime-2.1"
    assert config.voice == "cedar"
    assert config.vad_type is VadType.SEMANTIC
    assert config.noise_reduction is NoiseReduction.NEAR_FIELD
    assert config.realtime_connect_url() == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"


def test_secrets_stay_out_of_repr() -> None:
    """repr(Config) never shows the API key or the Twilio token."""
    config = Config.from_env({**KEY, "TWILIO_AUTH_TOKEN": "tok-secret", "PUBLIC_URL": "https://r.example"})
    assert "sk-test" not in repr(config) and "tok-secret" not in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({}, "OPENAI_API_KEY is required (your OpenAI API key)", id="missing-key"),
        pytest.param({**KEY, "PORT": "abc"}, "PORT must be a whole number from 1 to 65535", id="port-text"),
        pytest.param({**KEY, "PORT": "70000"}, "PORT must be a whole number from 1 to 65535",
                     id="port-range"),
        pytest.param({**KEY, "VAD_TYPE": "fast"}, "VAD_TYPE must be one of semantic_vad, server_vad, none",
                     id="vad-type"),
        pytest.param({**KEY, "VAD_THRESHOLD": "2"}, "VAD_THRESHOLD must be a number from 0 to 1",
                     id="vad-threshold"),
        pytest.param({**KEY, "VAD_EAGERNESS": "eager"},
                     "VAD_EAGERNESS must be one of low, medium, high, auto", id="eagerness"),
        pytest.param({**KEY, "NOISE_REDUCTION": "far"},
                     "NOISE_REDUCTION must be one of near_field, far_field, off", id="noise"),
        pytest.param({**KEY, "ALLOW_ALL_CALLERS": "maybe"}, "ALLOW_ALL_CALLERS must be true or false",
                     id="bool"),
        pytest.param({**KEY, "PRIMARY_USER_PHONE_NUMBERS": "+14155550100,12"},
                     "PRIMARY_USER_PHONE_NUMBERS item 2 is not a valid phone number", id="phone"),
        pytest.param({**KEY, "OPENAI_REALTIME_URL": "https://x"},
                     "OPENAI_REALTIME_URL must be a ws:// or wss:// URL", id="realtime-url"),
        pytest.param({**KEY, "TIMEZONE": "Mars/Olympus"},
                     "TIMEZONE must be an IANA zone such as Europe/Paris", id="timezone"),
        pytest.param({**KEY, "TOOLS": "end_call,fly"},
                     "TOOLS has 1 unknown tool name(s); known: end_call, update_mic_distance, send_email, "
                     "gpt_web_search, transfer_call, or none", id="tools"),
        pytest.param({**KEY, "SMTP_NODEMAILER_SERVICE_ID": "pigeon", "SENDER_FROM_EMAIL": "a@example.com"},
                     "SMTP_NODEMAILER_SERVICE_ID is not a known service (gmail, googlemail, proton, "
                     "protonmail, outlook, hotmail, outlook365, yahoo, icloud, zoho, fastmail, aol, gmx, yandex, "
                     "sendgrid, mailgun, ses); set SMTP_HOST and SMTP_PORT instead", id="smtp-service"),
        pytest.param({**KEY, "SENDER_FROM_EMAIL": "a@example.com"},
                     "SENDER_FROM_EMAIL is set but neither SMTP_NODEMAILER_SERVICE_ID nor SMTP_HOST is",
                     id="smtp-host"),
        pytest.param({**KEY, "PRIMARY_TO_EMAIL": "jordan"},
                     "PRIMARY_TO_EMAIL must be an email address such as name@example.com", id="email"),
        pytest.param({**KEY, "SMTP_SECURITY": "tls"}, "SMTP_SECURITY must be one of ssl, starttls, none",
                     id="smtp-security"),
        pytest.param({**KEY, "WAIT_MUSIC_VOLUME": "1.5"}, "WAIT_MUSIC_VOLUME must be a number from 0 to 1",
                     id="music-volume"),
        pytest.param({**KEY, "WAIT_MUSIC_THRESHOLD_MS": "-1"},
                     "WAIT_MUSIC_THRESHOLD_MS must be a whole number from 0 to 60000", id="music-threshold"),
        pytest.param({**KEY, "OPENAI_BASE_URL": "api.openai.com"},
                     "OPENAI_BASE_URL must be an http(s):// URL", id="base-url"),
        pytest.param({**KEY, "VOICE": "bogus"}, "VOICE must be one of alloy, ash, ballad, coral, echo, sage, shimmer, "
                     "verse, marin, cedar", id="voice"),
        pytest.param({**KEY, "CONSOLE_TOKEN": "abc"}, "CONSOLE_TOKEN must be at least 16 characters (it is a password)",
                     id="console-token-short"),
        pytest.param({**KEY, "PUBLIC_URL": "http://relay.example.com"}, "PUBLIC_URL must be https:// for a public host "
                     "(plain http:// is for loopback tests: 127.0.0.1, localhost, ::1)", id="public-url-plain-http"),
        pytest.param({**KEY, "REASONING_EFFORT": "max"},
                     "REASONING_EFFORT must be one of minimal, low, medium, high, xhigh", id="reasoning-effort"),
    ],
)
def test_malformed_values_are_named(env: dict[str, str], message: str) -> None:
    """Each bad variable gives one message naming it and what is allowed."""
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert str(info.value) == message


def test_all_problems_reported_together() -> None:
    """Several bad variables are reported in one line, not one per restart."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PORT": "x", "VAD_TYPE": "y"})
    assert str(info.value) == (
        "OPENAI_API_KEY is required (your OpenAI API key); PORT must be a whole number from 1 to 65535; "
        "VAD_TYPE must be one of semantic_vad, server_vad, none"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("+14155550100", "+14155550100", id="e164"),
        pytest.param("(415) 555-0100", "+14155550100", id="us-national"),
        pytest.param("+44 20 7946 0958", "+442079460958", id="uk"),
        pytest.param("+33 1 42 68 53 00", "+33142685300", id="france"),
        pytest.param("anonymous", None, id="anonymous"),
        pytest.param("client:alice", None, id="client"),
        pytest.param("", None, id="empty"),
    ],
)
def test_e164_normalisation(raw: str, expected: str | None) -> None:
    """Numbers are normalised with libphonenumber, international ones kept intact."""
    assert to_e164(raw) == expected


def test_phone_lists_are_normalised() -> None:
    """Allowlists written in national or spaced form become E.164."""
    config = Config.from_env({**KEY, "PRIMARY_USER_PHONE_NUMBERS": "(415) 555-0100, +44 20 7946 0958"})
    assert config.primary_numbers == ("+14155550100", "+442079460958")


def test_turn_detection_objects() -> None:
    """VAD variables map to the GA turn_detection objects."""
    server = Config.from_env({**KEY, "VAD_TYPE": "server_vad", "VAD_THRESHOLD": "0.6",
                              "VAD_PREFIX_PADDING_MS": "200", "VAD_SILENCE_DURATION_MS": "650"})
    assert server.turn_detection() == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                                       "silence_duration_ms": 650, "create_response": True,
                                       "interrupt_response": True}
    semantic = Config.from_env({**KEY, "VAD_EAGERNESS": "high"})
    assert semantic.turn_detection() == {"type": "semantic_vad", "eagerness": "high", "create_response": True,
                                         "interrupt_response": True}
    assert Config.from_env({**KEY, "VAD_TYPE": "none"}).turn_detection() is None


def test_startup_warning_for_empty_allowlists() -> None:
    """Empty allowlists refuse everyone, and the operator is told once at startup."""
    notes = startup_warnings(Config.from_env({**KEY, "TWILIO_AUTH_TOKEN": "t", "PUBLIC_URL": "https://r.example"}))
    assert notes == ["PRIMARY_USER_PHONE_NUMBERS and SECONDARY_USER_PHONE_NUMBERS are empty: every caller is "
                     "refused (set ALLOW_ALL_CALLERS=true to let anyone in)"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        pytest.param({"TWILIO_AUTH_TOKEN": "t"}, "TWILIO_AUTH_TOKEN", id="twilio"),
        pytest.param({"PLIVO_AUTH_ID": "MA1", "PLIVO_AUTH_TOKEN": "p"}, "PLIVO_AUTH_TOKEN", id="plivo"),
        pytest.param({"TWILIO_AUTH_TOKEN": "t", "PLIVO_AUTH_TOKEN": "p"}, "TWILIO_AUTH_TOKEN or PLIVO_AUTH_TOKEN",
                     id="both"),
    ],
)
def test_signatures_need_a_public_url(env: dict[str, str], names: str) -> None:
    """Signatures checked against a URL rebuilt from the Host header a client chooses would pass a request signed
    for another app: with any network's signatures on, startup stops until PUBLIC_URL is set."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({**KEY, "PRIMARY_USER_PHONE_NUMBERS": "+14155550100", **env})
    assert str(info.value) == (
        f"PUBLIC_URL is required when {names} is set: signatures are checked against this server's public URL, "
        "which would otherwise be rebuilt from the Host header a client chooses (a request signed for another app "
        "on the same account would pass); set PUBLIC_URL to this server's public https origin")
    assert Config.from_env({**KEY, **env, "PUBLIC_URL": "https://relay.example.com"}).public_url
    assert Config.from_env({**KEY, **env, "NGROK_AUTHTOKEN": "n"}).ngrok_authtoken == "n"  # the tunnel's URL


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "Gmail"}, ("smtp.gmail.com", 465, SmtpSecurity.SSL), id="gmail"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "protonmail"}, ("smtp.protonmail.ch", 587, SmtpSecurity.STARTTLS),
                     id="protonmail"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "outlook"}, ("smtp-mail.outlook.com", 587, SmtpSecurity.STARTTLS),
                     id="outlook"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "yahoo"}, ("smtp.mail.yahoo.com", 465, SmtpSecurity.SSL),
                     id="yahoo"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "icloud"}, ("smtp.mail.me.com", 587, SmtpSecurity.STARTTLS),
                     id="icloud"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "zoho"}, ("smtp.zoho.com", 465, SmtpSecurity.SSL), id="zoho"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "gmail", "SMTP_PORT": "587"},
                     ("smtp.gmail.com", 587, SmtpSecurity.STARTTLS), id="service-port-override"),
        pytest.param({"SMTP_NODEMAILER_SERVICE_ID": "gmail", "SMTP_HOST": "mail.internal", "SMTP_SECURITY": "none",
                      "SMTP_PORT": "25"}, ("mail.internal", 25, SmtpSecurity.NONE), id="explicit-override"),
        pytest.param({"SMTP_HOST": "smtp.example.com"}, ("smtp.example.com", 587, SmtpSecurity.STARTTLS),
                     id="host-only"),
        pytest.param({"SMTP_HOST": "smtp.example.com", "SMTP_PORT": "465"}, ("smtp.example.com", 465, SmtpSecurity.SSL),
                     id="host-465"),
    ],
)
def test_smtp_server_from_service_id_or_host(env: dict[str, str], expected: tuple[str, int, SmtpSecurity]) -> None:
    """Well-known service ids map to host, port and TLS; explicit SMTP_HOST/PORT/SECURITY override them."""
    config = Config.from_env({**KEY, "SENDER_FROM_EMAIL": "assistant@example.com", "SMTP_USER": "u",
                              "SMTP_PASS": "p", **env})
    assert config.smtp is not None
    assert (config.smtp.host, config.smtp.port, config.smtp.security) == expected
    assert config.smtp.sender == "assistant@example.com" and "'p'" not in repr(config)


def test_tools_selection() -> None:
    """TOOLS picks the offered tools (default all five, in registry order; transfer_call only reaches a call with
    a transfer destination); none offers none."""
    assert Config.from_env(KEY).tools == ("end_call", "update_mic_distance", "send_email", "gpt_web_search",
                                          "transfer_call")
    assert Config.from_env({**KEY, "TOOLS": "gpt_web_search, end_call"}).tools == ("end_call", "gpt_web_search")
    assert Config.from_env({**KEY, "TOOLS": "none"}).tools == ()


def test_process_exits_on_bad_music_file(tmp_path: os.PathLike[str]) -> None:
    """A WAIT_MUSIC_FILE that is not a 16-bit PCM WAV is a startup error naming the variable and the file."""
    bad = os.path.join(tmp_path, "music.wav")
    with open(bad, "wb") as handle:
        handle.write(b"ID3 this is an mp3")
    result = _run_relay({"OPENAI_API_KEY": "sk-x", "WAIT_MUSIC_FILE": bad}, tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"relay: configuration error: WAIT_MUSIC_FILE is not usable: {bad}: not a RIFF/WAVE file\n"
    missing = os.path.join(tmp_path, "nowhere.wav")
    result = _run_relay({"OPENAI_API_KEY": "sk-x", "WAIT_MUSIC_FILE": missing}, tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"relay: configuration error: WAIT_MUSIC_FILE '{missing}' cannot be read: "
                             "No such file or directory\n")


def _run_relay(env: dict[str, str], tmp_path: os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "relay.py")], env=process_env(**env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


def test_process_exits_on_missing_key(tmp_path: os.PathLike[str]) -> None:
    """`python relay.py` without OPENAI_API_KEY exits 1 with one line naming it."""
    result = _run_relay({}, tmp_path)
    assert result.returncode == 1
    assert result.stderr == "relay: configuration error: OPENAI_API_KEY is required (your OpenAI API key)\n"


def test_process_exits_on_bad_port(tmp_path: os.PathLike[str]) -> None:
    """A malformed PORT is a startup error naming the variable, not a crash."""
    result = _run_relay({"OPENAI_API_KEY": "sk-x", "PORT": "ten"}, tmp_path)
    assert result.returncode == 1
    assert result.stderr == "relay: configuration error: PORT must be a whole number from 1 to 65535\n"


def test_blank_means_default_for_every_kind() -> None:
    """A variable set but blank (`VAD_INTERRUPT_RESPONSE=`) keeps its default, booleans included."""
    blank = {name: "" for name in ("VAD_INTERRUPT_RESPONSE", "ALLOW_ALL_CALLERS", "PORT", "VAD_THRESHOLD",
                                   "VOICE", "VAD_TYPE", "TOOLS")}
    config = Config.from_env({**KEY, **blank})
    assert config == Config.from_env(KEY)
    assert config.vad_interrupt_response is True and config.allow_all_callers is False
    assert Config.from_env({**KEY, "VAD_INTERRUPT_RESPONSE": " false "}).vad_interrupt_response is False


def test_declared_names_match_the_tools_and_the_sdk() -> None:
    """The tool names config accepts are the tools tools.py defines, in its order, and the reasoning efforts
    are the openai package's own."""
    assert TOOL_NAMES == tuple(tools.TOOLS)
    assert REASONING_EFFORTS == typing.get_args(RealtimeReasoningEffort)


@pytest.mark.parametrize(
    ("model", "sent"),
    [
        pytest.param("gpt-realtime-2.1", {"effort": "low"}, id="reasoning-model"),
        pytest.param("gpt-realtime-2", {"effort": "low"}, id="family"),
        pytest.param("gpt-realtime", None, id="earlier-model"),
        pytest.param("gpt-realtime-mini", None, id="mini"),
    ],
)
def test_reasoning_effort_goes_only_to_models_that_take_it(model: str, sent: dict[str, str] | None) -> None:
    """REASONING_EFFORT reaches session.update only for the gpt-realtime-2 family; the event is valid GA either
    way, and a model that cannot take it gets a startup warning instead."""
    config = Config.from_env({**KEY, "OPENAI_REALTIME_MODEL": model, "REASONING_EFFORT": "low"})
    event = session_update(realtime_options(config).session("near_field"))
    assert event["session"].get("reasoning") == sent
    assert client_event_problems(event) == []
    warned = [note for note in model_warnings(config) if note.startswith("REASONING_EFFORT")]
    assert bool(warned) is (sent is None)
    unset = session_update(realtime_options(Config.from_env({**KEY, "OPENAI_REALTIME_MODEL": model})).session("off"))
    assert "reasoning" not in unset["session"]


@pytest.mark.parametrize(
    ("public_url", "refused"),
    [
        pytest.param(None, False, id="no-public-url"),
        pytest.param("http://127.0.0.1:5050", False, id="loopback"),
        pytest.param("https://relay.example.com", True, id="public-host"),
    ],
)
def test_unsigned_webhooks_are_for_local_tests(public_url: str | None, refused: bool) -> None:
    """ALLOW_UNSIGNED_WEBHOOKS=true serves the networks unchecked, with a startup warning; with a public
    PUBLIC_URL it stops startup instead. Without it and without a token, the operator is told no network is on."""
    env = {**KEY, "ALLOW_UNSIGNED_WEBHOOKS": "true", "PRIMARY_USER_PHONE_NUMBERS": "+14155550100"}
    if public_url:
        env["PUBLIC_URL"] = public_url
    if refused:
        with pytest.raises(ConfigError) as info:
            Config.from_env(env)
        assert str(info.value) == ("ALLOW_UNSIGNED_WEBHOOKS=true is for local tests: it is refused with a public "
                                   "PUBLIC_URL (set the networks' credentials instead)")
        return
    assert startup_warnings(Config.from_env(env)) == [
        "ALLOW_UNSIGNED_WEBHOOKS=true: networks without credentials are served with no signature check, so anyone "
        "who reaches this server can open a call (local tests only)"]
    off = Config.from_env({**KEY, "PRIMARY_USER_PHONE_NUMBERS": "+14155550100"})
    assert startup_warnings(off) == [
        "no phone network is on: set TWILIO_AUTH_TOKEN, PLIVO_AUTH_TOKEN or TELNYX_PUBLIC_KEY (their routes answer "
        "404 until then), or ALLOW_UNSIGNED_WEBHOOKS=true for local tests"]


def test_the_command_line_help_and_a_bad_port_start_nothing(tmp_path: os.PathLike[str]) -> None:
    """`python relay.py --help` prints the options and exits 0; `--port 99999` is one line and exit 2; neither
    reads the configuration or listens."""
    shown = subprocess.run([sys.executable, str(ROOT / "relay.py"), "--help"], env=process_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: relay.py [-h] [--host HOST] [--port PORT]")
    assert "listening" not in shown.stdout + shown.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "relay.py"), "--port", "99999"], env=process_env(),
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == "relay.py: error: argument --port: a port is a whole number from 1 to 65535"


async def test_port_and_host_options_override_the_environment(http: aiohttp.ClientSession) -> None:
    """--port and --host win over PORT and HOST: the relay listens where the command line says."""
    port, other = simulate.free_port(), simulate.free_port()
    env = process_env(OPENAI_API_KEY="sk-cli", PORT=str(other), HOST="0.0.0.0", ALLOW_UNSIGNED_WEBHOOKS="true")
    process = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "relay.py"), "--port", str(port),
                                                   "--host", "127.0.0.1", env=env, cwd=ROOT / "tests",
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert await until(lambda: _healthy(http, port), timeout=20, what="the relay on --port")
        assert process.stdout is not None
        lines = [(await process.stdout.readline()).decode() for _ in range(3)]  # two warnings, then the address
        assert any(f"listening on 127.0.0.1:{port}" in line for line in lines), lines
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)


async def _healthy(http: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


def test_metrics_without_a_console_token_are_public_and_the_operator_is_told() -> None:
    """METRICS=true with no CONSOLE_TOKEN serves /metrics to anyone: a startup warning says so."""
    env = {**KEY, "PRIMARY_USER_PHONE_NUMBERS": "+14155550100", "TWILIO_AUTH_TOKEN": "t",
           "PUBLIC_URL": "https://r.example", "METRICS": "true"}
    assert startup_warnings(Config.from_env(env)) == [
        "METRICS=true without CONSOLE_TOKEN: /metrics is public (set CONSOLE_TOKEN to put it behind a password)"]
    assert startup_warnings(Config.from_env({**env, "CONSOLE_TOKEN": "a-token-of-24-characters"})) == []


def test_every_variable_is_documented() -> None:
    """Every variable the configuration reads has a line in .env.example and a row in the README's table."""
    source = (ROOT / "config.py").read_text() + (ROOT / "envreader.py").read_text()
    read = set(re.findall(r'(?:env\.get|reader\.\w+|self\.\w+)\("([A-Z][A-Z0-9_]+)"', source))
    example = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    readme = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    assert len(read) > 60  # the regex still finds them all
    assert sorted(read - example) == [] and sorted(read - readme) == []


def test_a_telnyx_key_must_be_an_ed25519_public_key() -> None:
    """TELNYX_PUBLIC_KEY is the 32-byte Ed25519 key Telnyx shows, base64: anything else stops startup."""
    for bad in ("not base64 at all", "c2hvcnQ="):
        with pytest.raises(ConfigError) as info:
            Config.from_env({**KEY, "TELNYX_PUBLIC_KEY": bad, "PUBLIC_URL": "https://r.example"})
        assert str(info.value) == "TELNYX_PUBLIC_KEY must be a base64 Ed25519 public key (32 bytes), as Telnyx shows it"


def test_outbound_settings_are_read_and_checked() -> None:
    """Numbers are E.164 after reading; a transfer destination is a number or a sip: URI; VOICEMAIL is leave or
    hangup; placing calls with several workers, or without the operator's token, is warned about."""
    config = Config.from_env({**KEY, "TWILIO_PHONE_NUMBER": "(415) 555-0199", "OUTBOUND_ALLOWED_NUMBERS":
                              "+14155550123, 415 555 0124", "TRANSFER_TO": "sip:desk@pbx.example.com",
                              "PRIMARY_TRANSFER_TO": "+1 415 555 0111", "VOICEMAIL": "hangup",
                              "OUTBOUND_MAX_PER_HOUR": "5", "TRANSFER_WHISPER": "true", "WORKERS": "2"})
    assert config.twilio_phone_number == "+14155550199"
    assert config.outbound_allowed_numbers == ("+14155550123", "+14155550124")
    assert (config.transfer_to, config.primary_transfer_to) == ("sip:desk@pbx.example.com", "+14155550111")
    assert (config.voicemail, config.outbound_max_per_hour, config.transfer_whisper) == ("hangup", 5, True)
    notes = " ".join(startup_warnings(config))
    assert "WORKERS=2 with TWILIO_PHONE_NUMBER" in notes and "POST /calls is off" in notes
    assert "transfer_call is not offered" in notes
    with pytest.raises(ConfigError) as info:
        Config.from_env({**KEY, "TRANSFER_TO": "sip:<script>", "VOICEMAIL": "beep", "PLIVO_PHONE_NUMBER": "12"})
    message = str(info.value)
    assert "TRANSFER_TO must be a phone number or a sip:user@host URI" in message
    assert "VOICEMAIL must be one of leave, hangup" in message and "PLIVO_PHONE_NUMBER is not a valid" in message

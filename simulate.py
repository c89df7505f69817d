"""Offline call simulator: a scripted phone call through the real relay, with stand-ins on loopback.

``python simulate.py`` starts the OpenAI stand-ins (``standin_openai``), the real relay pointed at
them (in this process, through ``relay.serving``), and a Twilio caller (``standin_phone``) that
dials the relay, speaks recorded utterances in real time, plays what the relay sends as Twilio
does (8000 bytes/s, marks, ``clear``), and writes what the caller heard to a stereo WAV (left:
caller, right: assistant as heard) and a timeline. This module holds the scenario, the runner
that checks a call went as scripted, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

import audio
import redact
from audio import BYTES_PER_MS
from config import LEVELS, Config, VadType
from standin_openai import AssistantTurn, RealtimeStandIn, WebSearchScript, realtime_standin, rest_base_url
from standin_phone import NETWORKS, CallerTurn, CallFailed, PhoneCaller, Timeline, twilio_signature
from standin_twilio_rest import twilio_rest_standin

logger = logging.getLogger("simulate")

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
DEFAULT_CALLER = "+14155550100"

# --- Scenario --------------------------------------------------------------------------------


@dataclass(slots=True)
class Scenario:
    """A whole scripted call."""

    caller_number: str = DEFAULT_CALLER
    caller_name: str = "Jordan"
    assistant: list[AssistantTurn] = field(default_factory=list)
    caller: list[CallerTurn] = field(default_factory=list)
    hangup: dict[str, Any] = field(default_factory=lambda: {"after": "assistant_done", "delay_ms": 800})
    expect_barge_ins: int | None = None
    expect_wait_music: bool = False
    """The caller must hear waiting music at some point."""
    web_search: WebSearchScript = field(default_factory=WebSearchScript)
    max_duration_s: float = 120.0


def _load_ulaw(path: str | Path, base: Path) -> bytes:
    full = Path(path) if Path(path).is_absolute() else base / path
    return audio.to_ulaw_8k(audio.load_wav(full))


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file (WAV paths relative to the file).

    Raises:
        ValueError: the file is not a valid scenario (message says what is wrong).
    """
    path = Path(path)
    data = json.loads(path.read_text())
    return scenario_from_dict(data, path.parent)


def scenario_from_dict(data: dict[str, Any], base: Path) -> Scenario:
    """Build a Scenario from its JSON form (see ``scenarios/default.json``)."""
    try:
        assistant = [
            AssistantTurn(
                ulaw=_load_ulaw(turn["audio"], base) if turn.get("audio") else b"",
                transcript=turn.get("transcript", ""),
                function_calls=[(c["name"], c.get("arguments", {})) for c in turn.get("function_calls", [])],
            )
            for turn in data.get("assistant", [])
        ]
        caller = [
            CallerTurn(ulaw=_load_ulaw(turn["audio"], base) if not turn.get("dtmf") else b"",
                       text=turn.get("text", ""), when=turn["when"], dtmf=str(turn.get("dtmf", "")))
            for turn in data.get("caller", [])
        ]
        web_search = WebSearchScript(**data.get("web_search", {}))
    except (KeyError, TypeError, OSError, audio.WavError) as exc:
        raise ValueError(f"bad scenario: {exc}") from exc
    return Scenario(
        caller_number=data.get("caller_number", DEFAULT_CALLER),
        caller_name=data.get("caller_name", "Jordan"),
        assistant=assistant,
        caller=caller,
        hangup=data.get("hangup", {"after": "assistant_done", "delay_ms": 800}),
        expect_barge_ins=data.get("expect_barge_ins"),
        expect_wait_music=bool(data.get("expect_wait_music", False)),
        web_search=web_search,
        max_duration_s=float(data.get("max_duration_s", 120.0)),
    )


def default_scenario() -> Scenario:
    """The built-in call: greeting, a question, a long answer interrupted, a short answer,
    goodbye."""
    return load_scenario(HERE / "scenarios" / "default.json")



# --- Running a simulated call -------------------------------------------------------------------


@dataclass(slots=True)
class CallResult:
    """What one simulated call produced."""

    timeline: Timeline
    caller: PhoneCaller
    standin: RealtimeStandIn | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_config(realtime_url: str, **overrides: Any) -> Config:
    """A relay ``Config`` for simulated calls and tests against the stand-ins at ``realtime_url``.

    One primary caller (``DEFAULT_CALLER``, "Jordan"), server VAD ending a turn after 700 ms of
    silence, an offline API key, web searches sent to the stand-in; ``overrides`` replace any
    field.
    """
    values: dict[str, Any] = {
        "openai_api_key": "sk-simulator-offline",
        "realtime_url": realtime_url,
        "openai_base_url": rest_base_url(realtime_url),
        "primary_numbers": (DEFAULT_CALLER,),
        "primary_first_name": "Jordan",
        "vad_type": VadType.SERVER,
        "vad_silence_duration_ms": 700,
    }
    values.update(overrides)
    return Config(**values)


def check_call(caller: PhoneCaller, standin: RealtimeStandIn | None, scenario: Scenario) -> list[str]:
    """Everything that makes a simulated call not go as scripted."""
    problems = []
    if caller.hung_up_by is None:
        problems.append("the call did not end")
    if caller.late_frames:
        problems.append(
            f"{len(caller.late_frames)} media message(s) of an interrupted item reached the caller after its clear"
        )
    if scenario.expect_barge_ins is not None and len(caller.barge_ins) != scenario.expect_barge_ins:
        problems.append(
            f"expected {scenario.expect_barge_ins} barge-in(s), the caller's phone got {len(caller.barge_ins)} clear(s)"
        )
    ended = caller.ended_at or time.monotonic()
    if not any(c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no assistant audio")
    if scenario.expect_wait_music and not any(c.tag is None and c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no waiting music")
    if scenario.hangup.get("by") == "assistant":
        if caller.hung_up_by != "relay":
            problems.append("the assistant did not hang up")
        elif caller.close_code != 1000:
            problems.append(f"the relay hung up with close code {caller.close_code}, not 1000")
        last = next((c.tag[0] for c in reversed(caller.playback.chunks) if c.tag is not None), None)
        if standin is not None and last is not None and last not in caller.cut_items:
            heard = caller.playback.heard_bytes_by_item(ended).get(last, 0)
            generated = max((s.generated.get(last, 0) for s in standin.sessions), default=0)
            if heard < generated:
                problems.append(
                    f"the line closed after {heard / BYTES_PER_MS:.0f} of {generated / BYTES_PER_MS:.0f} ms "
                    "of the goodbye"
                )
    if standin is not None:
        for session in standin.sessions:
            for event, why in session.invalid:
                problems.append(f"relay sent an invalid {event.get('type')}: {'; '.join(why)}")
            for error in session.errors:
                problems.append(f"realtime stand-in answered an error: {error['code']}: {error['message']}")
            turns = standin.turns_used(session)
            if isinstance(standin.script, list) and turns < len(standin.script):
                problems.append(f"only {turns} of {len(standin.script)} scripted assistant turns were used")
    return problems


async def simulate_call(
    scenario: Scenario,
    relay_url: str | None = None,
    auth_token: str | None = None,
    seed: int | None = None,
    phone: str = "twilio",
    after_call: Callable[[CallResult, str], Awaitable[None]] | None = None,
    **relay_overrides: Any,
) -> CallResult:
    """Run one scripted call on loopback (or against ``relay_url``) and check it.

    Args:
        phone: the network the caller dials through, ``twilio`` or ``plivo``.
        after_call: awaited with the result and the relay's URL once the call is over, while the
            relay and the stand-ins still run (``--console`` keeps them up there).
        auth_token: the network's auth token the caller signs with (default: a random one given to
            the relay it starts).
    """
    timeline = Timeline()
    async with contextlib.AsyncExitStack() as stack:
        standin: RealtimeStandIn | None = None
        if relay_url is None:
            import relay

            standin, realtime_url = await stack.enter_async_context(
                realtime_standin(scenario.assistant, timeline.add, seed, scenario.web_search)
            )
            standin.caller_transcripts = [turn.text for turn in scenario.caller if turn.ulaw and turn.text]
            auth_token = auth_token or secrets.token_hex(16)
            port = free_port()
            values: dict[str, Any] = {
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "twilio_auth_token": auth_token,
                "plivo_auth_token": auth_token,
                "primary_numbers": (scenario.caller_number,),
                "primary_first_name": scenario.caller_name,
            }
            config = relay_config(realtime_url, **{**values, **relay_overrides})
            relay_url = await stack.enter_async_context(relay.serving(config, port=port))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        caller = PhoneCaller(NETWORKS[phone](), scenario.caller_number, scenario.caller, scenario.hangup,
                             scenario.max_duration_s, timeline, auth_token, standin.resolve if standin else None)
        problems: list[str] = []
        try:
            await caller.run(http, relay_url)
        except (CallFailed, aiohttp.ClientError, ET.ParseError) as exc:
            problems.append(str(exc) or type(exc).__name__)
        if not problems:
            problems = check_call(caller, standin, scenario)
        result = CallResult(timeline, caller, standin, problems)
        if after_call is not None:
            await after_call(result, relay_url)
    return result


SMS_NUMBER = "+14155550199"
"""The relay's number in the SMS exchange."""


async def simulate_sms(text: str, sender: str = DEFAULT_CALLER) -> tuple[str, str, dict[str, Any]]:
    """Text ``text`` to the relay offline: the Responses and Twilio REST stand-ins on loopback, a thread
    of two earlier messages in the account, a signed ``/sms`` webhook.

    Returns:
        The TwiML the webhook answered, the thread as the model read it, and the reply message
        Twilio's REST stand-in was asked to send.

    Raises:
        CallFailed: no reply within 30 s.
    """
    import relay  # served in this process, through its public entry point

    async with contextlib.AsyncExitStack() as stack:
        standin, realtime_url = await stack.enter_async_context(realtime_standin())
        token, account = secrets.token_hex(16), "AC" + secrets.token_hex(16)
        rest, rest_url = await stack.enter_async_context(twilio_rest_standin(account, token))
        now = datetime.now(UTC)
        rest.add(sender, SMS_NUMBER, "Hi! Are you around this afternoon?", now - timedelta(hours=2))
        rest.add(SMS_NUMBER, sender, "Always. What can I do for you?", now - timedelta(hours=2) + timedelta(seconds=9),
                 "outbound-reply")
        port = free_port()
        config = relay_config(realtime_url, port=port, public_url=f"http://127.0.0.1:{port}", tools=(),
                              twilio_account_sid=account, twilio_auth_token=token, twilio_api_base_url=rest_url,
                              primary_numbers=(sender,))
        relay_url = await stack.enter_async_context(relay.serving(config, port=port))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        form = {"MessageSid": "SM" + secrets.token_hex(16), "AccountSid": account, "From": sender,
                "To": SMS_NUMBER, "Body": text, "NumMedia": "0"}
        url = relay_url + "/sms"
        headers = {"X-Twilio-Signature": twilio_signature(token, url, form)}
        async with http.post(url, data=form, headers=headers) as resp:
            twiml = await resp.text()
        deadline = time.monotonic() + 30
        while not rest.created:
            if time.monotonic() > deadline:
                raise CallFailed("no SMS reply within 30 s")
            await asyncio.sleep(0.02)
        thread = str(standin.responses_requests[0].body.get("input")) if standin.responses_requests else ""
        return twiml, thread, rest.created[0]


def sms_main(argv: list[str]) -> int:
    """``python simulate.py sms TEXT``: one SMS exchange offline; 0 when a reply was sent."""
    parser = argparse.ArgumentParser(prog="simulate.py sms", description="Text the relay, offline.")
    parser.add_argument("text", help="the message to send")
    args = parser.parse_args(argv)
    redact.configure_logging("WARNING", None, False, redact.install(os.environ))
    print(f"texting {SMS_NUMBER} from {DEFAULT_CALLER}: {args.text!r}")
    try:
        twiml, thread, reply = asyncio.run(simulate_sms(args.text))
    except CallFailed as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"\nthe /sms webhook answered at once: {twiml}")
    print("\nthe thread the model read:")
    for line in thread.splitlines():
        print(f"  {line}")
    print(f"\nreply sent from {reply['from']} to {reply['to']} ({len(reply['body'])} characters):\n  {reply['body']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python simulate.py``: run the built-in (or a given) scenario; 0 when it went as scripted.
    ``python simulate.py sms TEXT``: an SMS exchange instead (``sms_main``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sms"]:
        return sms_main(argv[1:])
    parser = argparse.ArgumentParser(description="Hold a simulated phone call through the relay, offline.")
    parser.add_argument("--scenario", type=Path, help="scenario JSON (default: scenarios/default.json)")
    parser.add_argument("--phone", choices=sorted(NETWORKS), default="twilio", help="the network to call through")
    parser.add_argument("--relay-url", help="dial a relay that is already running instead of starting one")
    parser.add_argument(
        "--auth-token",
        default=None,
        help="sign requests with this token (default: $TWILIO_AUTH_TOKEN, or $PLIVO_AUTH_TOKEN with --phone "
        "plivo; only with --relay-url)",
    )
    parser.add_argument("--out", type=Path, default=Path("call.wav"), help="where to write the call WAV")
    parser.add_argument("--seed", type=int, default=7, help="seed for the stand-in's delta sizes")
    parser.add_argument("--verbose", action="store_true", help="show the relay's log")
    parser.add_argument("--console", action="store_true",
                        help="serve the live call console and keep the relay up after the call (Ctrl-C ends it)")
    args = parser.parse_args(argv)
    if args.console and args.relay_url:
        parser.error("--console serves the relay this command starts; open a running relay's own /console instead")
    redactor = redact.install(os.environ)
    level = os.environ.get("LOG_LEVEL", "INFO").strip().upper() if args.verbose else "WARNING"
    if level not in LEVELS:
        print(f"simulate: LOG_LEVEL must be one of {', '.join(LEVELS)}", file=sys.stderr)
        return 2
    libraries = os.environ.get("LOG_LEVEL_LIBRARIES", "").strip().upper()
    redact.configure_logging(
        level, libraries if libraries in LEVELS else None, os.environ.get("LOG_FORMAT") == "json", redactor
    )
    try:
        scenario = load_scenario(args.scenario) if args.scenario else default_scenario()
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    token = args.auth_token or os.environ.get("PLIVO_AUTH_TOKEN" if args.phone == "plivo" else "TWILIO_AUTH_TOKEN")
    if not args.console:
        result = asyncio.run(
            simulate_call(scenario, args.relay_url, token if args.relay_url else None, seed=args.seed, phone=args.phone)
        )
        return _report(result, args.out)
    console_token = secrets.token_urlsafe(18)
    code = 1

    async def keep_console(result: CallResult, relay_url: str) -> None:
        nonlocal code
        code = _report(result, args.out)
        print(f"\nconsole: {relay_url}/console  (any user name; password {console_token})")
        print("the relay stays up with the call in the console's ended calls; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulate_call(scenario, seed=args.seed, phone=args.phone, after_call=keep_console,
                                  console_token=console_token))
    return code


def _report(result: CallResult, out: Path) -> int:
    """Print the timeline and the outcome, write the call's WAV; 0 when the call went as scripted."""
    print(result.timeline.render())
    out.write_bytes(result.caller.render_wav())
    duration = (result.caller.ended_at or result.timeline.t0) - result.timeline.t0
    print(f"\nwrote {out} ({duration:.1f} s, stereo: left caller, right assistant as heard)")
    print(f"barge-ins: {len(result.caller.barge_ins)}, marks echoed: {result.caller.marks_echoed}")
    if result.ok:
        print("call completed as scripted")
        return 0
    for problem in result.problems:
        print(f"FAILED: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Offline call simulator: a scripted phone call through the real relay, with stand-ins on loopback.

``python simulate.py`` starts the OpenAI stand-ins (``standins.openai_service``), the real relay pointed at
them (in this process, through ``relay.serving``), and a Twilio caller (``standins.phone_network``) that
dials the relay, speaks recorded utterances in real time over a line with noise (and, when the
scenario says so, network delay), plays what the relay sends as Twilio does (8000 bytes/s, marks,
``clear``), prints the call as it happens, and writes what the caller heard to a stereo WAV (left:
caller, right: assistant as heard).

``python simulate.py standins`` serves the stand-ins alone, for a relay started separately with
``python relay.py``; ``python simulate.py --relay-url URL`` then dials that relay. This module holds
the runner that checks a call went as scripted, and the command line; the scenario it plays is
``standins.scenario``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from dotenv import load_dotenv

import redact
from audio import BYTES_PER_MS
from bridge import music
from config import LEVELS, Config, VadType, VoiceApi
from standins.openai_service import (
    RealtimeStandIn,
    realtime_standin,
    rest_base_url,
    serve_on_loopback,
)
from standins.phone_dialects import NETWORKS, CallFailed, telnyx_public_key, twilio_signature
from standins.phone_network import DEFAULT_LINE_NOISE_DBFS, Line, PhoneCaller, Timeline, render_wav
from standins.scenario import (
    DEFAULT_CALLER,
    DEFAULT_SCENARIO,
    HERE,
    Scenario,
    ScenarioError,
    ScriptedAudio,
    load_scenario,
)
from standins.twilio_rest import twilio_rest_standin

logger = logging.getLogger("simulate")

STANDINS_PORT = 8765
TOKEN_VARIABLES = {"twilio": "TWILIO_AUTH_TOKEN", "plivo": "PLIVO_AUTH_TOKEN", "telnyx": "TELNYX_STANDIN_SEED"}
"""Where ``--relay-url`` calls find what they sign with, per network (``--auth-token`` overrides it)."""
TELNYX_STANDIN_SEED = "telnyx-standin"
"""The simulated Telnyx caller's key seed when none is given: ``python simulate.py standins`` prints the public
key that matches it, for the relay's ``TELNYX_PUBLIC_KEY``."""
"""Where ``python simulate.py standins`` listens by default (``--port``)."""

# --- Running a simulated call -------------------------------------------------------------------


@dataclass(slots=True)
class CallResult:
    """What one simulated call produced."""

    timeline: Timeline
    caller: PhoneCaller
    standin: RealtimeStandIn | None
    problems: list[str]
    barge_ins: int = 0
    """Barge-ins the caller went through: clears of assistant audio (Realtime), or the model yielding
    (GPT-Live: its stand-in's count, or the scripted turns heard cut short on a relay dialled by URL)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def live_barge_ins(self) -> list[tuple[str, float, float, float]]:
        """Each time GPT-Live yielded to the caller: the item, the ms of it the model said, the ms the caller
        heard, and how long after the model's speech ended the caller's phone stopped playing it (ms; the
        audio still queued at the phone, which nothing clears)."""
        out = []
        ended = self.caller.ended_at or time.monotonic()
        heard = self.caller.playback.heard_bytes_by_item(ended)
        for session in self.standin.live_sessions if self.standin else []:
            for y in session.yields:
                chunks = [c for c in self.caller.playback.chunks if c.tag is not None and c.tag[0] == y.item_id]
                played_until = max((c.start + len(c.data) / 1000 / BYTES_PER_MS for c in chunks), default=y.at)
                out.append((y.item_id, y.spoken_ms, heard.get(y.item_id, 0) / BYTES_PER_MS,
                            (played_until - y.at) * 1000))
        return out

    def waits_ms(self) -> tuple[float | None, list[float]]:
        """What the caller waited, as its phone heard it: from the stream's start to the first assistant audio,
        and from the end of each of its utterances to the next assistant audio (the end-of-speech silence the
        model waits for included), ms."""
        caller, t0 = self.caller, self.caller.connected_at
        starts = sorted(chunk.start for chunk in caller.playback.chunks if not chunk.music)
        if t0 is None or not starts:
            return None, []
        waits = []
        for turn in caller.spoken:
            end = t0 + turn.end_ms / 1000
            answer = next((at for at in starts if at > end), None)
            if answer is not None:
                waits.append((answer - end) * 1000)
        return (starts[0] - t0) * 1000, waits

    def barge_in_accuracy(self) -> list[tuple[str, float, float | None]]:
        """Each barge-in: the item, the ms of it the caller heard before the clear, and the
        ``audio_end_ms`` the relay truncated it at (None when the stand-in runs elsewhere)."""
        truncated = {cut.item_id: float(cut.audio_end_ms) for s in (self.standin.sessions if self.standin else [])
                     for cut in s.truncates}
        return [(b.item_id, b.heard_ms, truncated.get(b.item_id)) for b in self.caller.barge_ins if b.item_id]


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
        "live_url": realtime_url.removesuffix("/realtime") + "/live/sessions",
        "openai_base_url": rest_base_url(realtime_url),
        "primary_numbers": (DEFAULT_CALLER,),
        "primary_first_name": "Jordan",
        "vad_type": VadType.SERVER,
        "vad_silence_duration_ms": 700,
        "allow_unsigned_webhooks": True,  # a relay on loopback, dialled without signatures unless a token is set
    }
    values.update(overrides)
    return Config(**values)


def relay_music_from_env() -> frozenset[str]:
    """The waiting music a relay configured by this environment plays (``WAIT_MUSIC_FILE``,
    ``WAIT_MUSIC_VOLUME``), as its base64 payloads; empty when it cannot be read."""
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "sk-unused"}
    try:
        config = Config.from_env(env)
    except Exception:  # any other variable the relay would refuse: assume the default music
        config = Config(openai_api_key="sk-unused")
    try:
        return frozenset(music.load_wait_music(config))
    except Exception:
        return frozenset()


def cut_short_turns(caller: PhoneCaller, scenario: Scenario) -> int:
    """Scripted assistant turns the caller heard only part of (``turn-N`` items of a relay dialled by URL):
    over GPT-Live, which yields by itself and sends no clear, these are the barge-ins."""
    heard = caller.playback.heard_bytes_by_item(caller.ended_at or time.monotonic())
    return sum(1 for n, turn in enumerate(scenario.assistant, 1)
               if turn.ulaw and 0 < heard.get(f"turn-{n}", 0) < len(turn.ulaw) - 1600)


def check_call(caller: PhoneCaller, standin: RealtimeStandIn | None, scenario: Scenario,
               voice_api: VoiceApi = VoiceApi.REALTIME) -> list[str]:
    """Everything that makes a simulated call not go as scripted."""
    problems = []
    if caller.hung_up_by is None:
        problems.append("the call did not end")
    if caller.late_frames:
        problems.append(
            f"{len(caller.late_frames)} media message(s) of an interrupted item reached the caller after its clear"
        )
    if voice_api is VoiceApi.LIVE and scenario.expect_barge_ins is not None:  # no clear reaches the phone
        if standin is not None:
            yields = sum(len(session.yields) for session in standin.live_sessions)
            seen = f"GPT-Live yielded {yields} time(s)"
        else:
            yields = cut_short_turns(caller, scenario)
            seen = f"the caller heard {yields} assistant turn(s) cut short"
        if yields != scenario.expect_barge_ins:
            problems.append(f"expected {scenario.expect_barge_ins} barge-in(s), {seen}")
    elif scenario.expect_barge_ins is not None and len(caller.barge_ins) != scenario.expect_barge_ins:
        problems.append(
            f"expected {scenario.expect_barge_ins} barge-in(s), the caller's phone got {len(caller.barge_ins)} "
            f"clear(s) of assistant audio"
        )
    ended = caller.ended_at or time.monotonic()
    if not any(not c.music and c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no assistant audio")
    if scenario.expect_wait_music and not any(c.music and c.played_bytes(ended) for c in caller.playback.chunks):
        problems.append("the caller heard no waiting music")
    if scenario.hangup.get("by") == "assistant":
        if caller.hung_up_by not in ("relay", "network"):  # network: the relay had it end the stream (a transfer)
            problems.append("the assistant did not hang up")
        elif caller.hung_up_by == "relay" and caller.close_code != 1000:
            problems.append(f"the relay hung up with close code {caller.close_code}, not 1000")
        last = next((c.tag[0] for c in reversed(caller.playback.chunks) if c.tag is not None), None)
        if standin is not None and last is not None and last not in caller.cut_items:
            heard = caller.playback.heard_bytes_by_item(ended).get(last, 0)
            generated = max((s.generated.get(last, 0) for s in [*standin.sessions, *standin.live_sessions]), default=0)
            if heard < generated:
                problems.append(
                    f"the line closed after {heard / BYTES_PER_MS:.0f} of {generated / BYTES_PER_MS:.0f} ms "
                    "of the goodbye"
                )
    if standin is not None:
        for session in [*standin.sessions, *standin.live_sessions]:
            for event, why in session.invalid:
                problems.append(f"relay sent an invalid {event.get('type')}: {'; '.join(why)}")
            for error in session.errors:
                problems.append(f"the model stand-in answered an error: {error['code']}: {error['message']}")
            turns = standin.turns_used(session)
            if isinstance(standin.script, list) and turns < len(standin.script):
                problems.append(f"only {turns} of {len(standin.script)} scripted assistant turns were used")
    return problems


def undetected_turns(caller: PhoneCaller, standin: RealtimeStandIn) -> list[str]:
    """The caller's utterances the Realtime stand-in's VAD never heard as speech."""
    detected = [(start or 0, math.inf if end is None else end) for s in standin.sessions for start, end in s.speech]
    out = []
    for turn in caller.spoken:
        if not any(start <= turn.end_ms + 300 and end >= turn.start_ms - 300 for start, end in detected):
            out.append(f"the caller's turn {turn.index} ({turn.text or 'speech'!r}, {turn.start_ms / 1000:.1f}-"
                       f"{turn.end_ms / 1000:.1f} s into the stream) was never detected as speech")
    return out


async def simulate_call(
    scenario: Scenario,
    relay_url: str | None = None,
    auth_token: str | None = None,
    seed: int | None = None,
    phone: str = "twilio",
    after_call: Callable[[CallResult, str], Awaitable[None]] | None = None,
    timeline: Timeline | None = None,
    before_call: Callable[[PhoneCaller, str], None] | None = None,
    voice_api: VoiceApi = VoiceApi.REALTIME,
    **relay_overrides: Any,
) -> CallResult:
    """Run one scripted call on loopback (or against ``relay_url``) and check it.

    Args:
        relay_url: dial this running relay (its stand-ins are ``python simulate.py standins`` with
            the same scenario) instead of starting one here.
        phone: the network the caller dials through, ``twilio`` or ``plivo``.
        after_call: awaited with the result and the relay's URL once the call is over, while the
            relay and the stand-ins still run (``--console`` keeps them up there).
        auth_token: the network's auth token the caller signs with (default: a random one given to
            the relay it starts).
        timeline: where the call's events go (default: a new one).
        before_call: told the caller and the relay's URL just before the call is placed (the console's
            address is printed there; a Ctrl-C keeps what that caller recorded).
    """
    timeline = timeline or Timeline()
    async with contextlib.AsyncExitStack() as stack:
        standin: RealtimeStandIn | None = None
        resolve: Callable[[str], tuple[str, int] | None]
        if relay_url is None:
            import relay

            standin, realtime_url = await stack.enter_async_context(
                realtime_standin(scenario.assistant, timeline.add, seed, scenario.web_search)
            )
            standin.caller_transcripts = scenario.caller_words()
            auth_token = auth_token or secrets.token_hex(16)
            port = free_port()
            values: dict[str, Any] = {
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "twilio_auth_token": auth_token,
                "plivo_auth_token": auth_token,
                "telnyx_public_key": telnyx_public_key(auth_token),
                "primary_numbers": (scenario.caller_number,),
                "primary_first_name": scenario.caller_name,
            }
            config = relay_config(realtime_url, **{**values, "voice_api": voice_api, **relay_overrides})
            relay_url = await stack.enter_async_context(relay.serving(config, port=port))
            music_payloads = frozenset(music.load_wait_music(config))
            resolve = standin.resolve
        else:
            music_payloads = relay_music_from_env()
            resolve = ScriptedAudio(scenario.assistant)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        line = Line(scenario.network_delay_ms, scenario.network_jitter_ms, scenario.line_noise_dbfs, seed or 0)
        caller = PhoneCaller(NETWORKS[phone](), scenario.caller_number, scenario.caller, scenario.hangup,
                             scenario.max_duration_s, timeline, auth_token, resolve, music_payloads, line)
        problems: list[str] = []
        timeline.t0 = time.monotonic()  # the call begins now, the relay (if started here) being up
        if before_call is not None:
            before_call(caller, relay_url)
        try:
            await caller.run(http, relay_url)
        except (CallFailed, aiohttp.ClientError, ET.ParseError) as exc:
            problems.append(str(exc) or type(exc).__name__)
            if standin is not None:
                problems += undetected_turns(caller, standin)
        if not problems:
            problems = check_call(caller, standin, scenario, voice_api)
        if voice_api is VoiceApi.LIVE:
            barge_ins = (sum(len(s.yields) for s in standin.live_sessions) if standin is not None
                         else cut_short_turns(caller, scenario))
        else:
            barge_ins = len(caller.barge_ins)
        result = CallResult(timeline, caller, standin, problems, barge_ins)
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


# --- The command line --------------------------------------------------------------------------


def terminal_width() -> int:
    """Columns to wrap output at: the terminal's (``$COLUMNS`` when set; 100 for a pipe), within 60-140."""
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 140))


class LivePrinter:
    """Prints a call's timeline as it happens: one line per event, ``ms since the call began,
    who, what``, long texts wrapped at word boundaries under the text.

    An event dated in the future (audio the phone starts playing once what is queued has played)
    is printed when it happens.
    """

    def __init__(self, timeline: Timeline, width: int | None = None) -> None:
        self.timeline = timeline
        self.width = width or terminal_width()

    def __call__(self, at: float, source: str, text: str) -> None:
        delay = at - time.monotonic()
        if delay > 0.001:
            with contextlib.suppress(RuntimeError):  # outside a loop: print now
                asyncio.get_running_loop().call_later(delay, self.print, at, source, text)
                return
        self.print(at, source, text)

    def format(self, at: float, source: str, text: str) -> str:
        prefix = f"{self.timeline.ms(at):>7} ms  {source:<8} "
        return textwrap.fill(text, self.width, initial_indent=prefix, subsequent_indent=" " * len(prefix),
                             break_long_words=False, break_on_hyphens=False) or prefix.rstrip()

    def print(self, at: float, source: str, text: str) -> None:
        print(self.format(at, source, text), flush=True)


API_NAMES = {"realtime": "the Realtime API", "live": "GPT-Live"}


def _header(scenario: Scenario, name: str, phone: str, relay_url: str | None, out: Path, width: int,
            voice_api: str | None = None, outbound: str | None = None) -> str:
    spoken = sum(1 for turn in scenario.caller if not turn.dtmf)
    expects = []
    if scenario.expect_barge_ins:
        expects.append(f"{scenario.expect_barge_ins} barge-in(s)")
    if scenario.expect_wait_music:
        expects.append("waiting music")
    if scenario.hangup.get("by") == "assistant":
        expects.append("the assistant hanging up")
    noise = "digital silence" if scenario.line_noise_dbfs is None else f"noise at {scenario.line_noise_dbfs:g} dBFS"
    network = (f"{scenario.network_delay_ms:g} ms one way (jitter {scenario.network_jitter_ms:g} ms)"
               if scenario.network_delay_ms or scenario.network_jitter_ms else "no delay")
    where = (f"the relay at {relay_url} (its stand-ins: python simulate.py standins)" if relay_url
             else "the relay, started here on loopback with the OpenAI stand-ins "
             f"({API_NAMES[voice_api or 'realtime']}; no account, no network)")
    first = f"A simulated {phone.capitalize()} call from {scenario.caller_number} ({scenario.caller_name}) to {where}."
    if outbound:
        whom = "a person" if outbound == "human" else "an answering machine"
        first = (f"A simulated {phone.capitalize()} call placed by the relay ({where.removeprefix('the relay, ')}) "
                 f"to {scenario.caller_number} ({scenario.caller_name}: {whom}).")
    lines = [
        first,
        f"  scenario: {name}: {spoken} caller utterance(s), {len(scenario.assistant)} assistant turn(s)"
        + (f"; expects {', '.join(expects)}" if expects else ""),
        f"  the line: {noise}; network: {network}",
        f"  recording: {out} (stereo: left the caller, right what the caller heard)",
    ]
    wrapped = [textwrap.fill(line, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
               for line in lines]
    return "\n".join([*wrapped, "", "     ms since the call began, who, what:"])


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename, so
    ``path`` is never left empty or half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _noise_arg(value: str) -> float | None:
    if value.lower() in ("off", "none"):
        return None
    try:
        level = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a level in dBFS (e.g. -65) or 'off'") from None
    if not -120 <= level <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: a level from -120 to 0 dBFS, or 'off'")
    return level


def _configure_logging(verbose: bool) -> int | None:
    """The relay's log settings (``LOG_LEVEL`` with ``--verbose``, else warnings only); 2 when bad."""
    redactor = redact.install(os.environ)
    level = os.environ.get("LOG_LEVEL", "INFO").strip().upper() if verbose else "WARNING"
    if level not in LEVELS:
        print(f"simulate: LOG_LEVEL must be one of {', '.join(LEVELS)}", file=sys.stderr)
        return 2
    libraries = os.environ.get("LOG_LEVEL_LIBRARIES", "").strip().upper()
    redact.configure_logging(
        level, libraries if libraries in LEVELS else None, os.environ.get("LOG_FORMAT") == "json", redactor
    )
    return None


def _scenario_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path,
                        help="scenario JSON (default: scenarios/default.json; keys: docs/simulator.md, Scenario files)")


def main(argv: list[str] | None = None) -> int:
    """``python simulate.py``: run the built-in (or a given) scenario; 0 when it went as scripted.
    ``python simulate.py sms TEXT``: an SMS exchange instead (``sms_main``).
    ``python simulate.py standins``: the OpenAI stand-ins alone, for a separate relay (``standins_main``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sms"]:
        return sms_main(argv[1:])
    if argv[:1] == ["standins"]:
        return standins_main(argv[1:])
    parser = argparse.ArgumentParser(description="Hold a simulated phone call through the relay, offline.",
                                     epilog="python simulate.py standins: serve the OpenAI stand-ins for a relay "
                                     "started with python relay.py; python simulate.py sms TEXT: text the relay.")
    _scenario_arg(parser)
    parser.add_argument("--phone", choices=sorted(NETWORKS), default="twilio", help="the network to call through")
    parser.add_argument("--voice-api", choices=[api.value for api in VoiceApi], default=VoiceApi.REALTIME.value,
                        help="the OpenAI voice API the relay started here uses; with --relay-url, the one that relay "
                        "was started with (its VOICE_API), so the call is checked as it should go")
    parser.add_argument("--outbound", choices=("human", "machine"), help="the relay places the call instead, to a "
                        "person who says hello first or an answering machine (scenarios/outbound_*.json)")
    parser.add_argument("--relay-url", help="dial a relay that is already running (started with python relay.py, "
                        "its OpenAI endpoints the stand-ins of python simulate.py standins) instead of starting one")
    parser.add_argument(
        "--auth-token",
        default=None,
        help="sign requests with this token (default: $TWILIO_AUTH_TOKEN, or $PLIVO_AUTH_TOKEN with --phone "
        "plivo, from the environment or ./.env; only with --relay-url)",
    )
    parser.add_argument("--line-noise-db", type=_noise_arg, default=math.nan, metavar="DBFS",
                        help=f"the caller's line noise, RMS dBFS, or 'off' (default: the scenario's, else "
                        f"{DEFAULT_LINE_NOISE_DBFS:g})")
    parser.add_argument("--out", type=Path, default=Path("call.wav"), help="where to write the call WAV")
    parser.add_argument("--seed", type=int, default=7, help="seed for the stand-in's delta sizes and the line")
    parser.add_argument("--verbose", action="store_true", help="show the relay's log")
    parser.add_argument("--console", action="store_true",
                        help="serve the live call console and keep the relay up after the call (Ctrl-C ends it)")
    args = parser.parse_args(argv)
    if args.outbound and (args.relay_url or args.console or args.phone == "telnyx"):
        parser.error("--outbound places a call from a relay started here, through twilio or plivo")
    if args.console and args.relay_url:
        parser.error("--console serves the relay this command starts; open a running relay's own /console instead")
    if args.relay_url and urlsplit(args.relay_url).scheme not in ("http", "https"):
        parser.error(f"--relay-url needs http:// or https:// in front: --relay-url http://{args.relay_url}")
    load_dotenv(Path.cwd() / ".env")  # like the relay: the working directory's .env; real env vars win
    if (code := _configure_logging(args.verbose)) is not None:
        return code
    if (unwritable := _unwritable(args.out)) is not None:
        print(f"simulate: --out {args.out}: {unwritable}; choose another path with --out", file=sys.stderr)
        return 2
    if args.outbound and not args.scenario:
        args.scenario = HERE / "scenarios" / f"outbound_{args.outbound}.json"
    try:
        scenario = load_scenario(args.scenario or DEFAULT_SCENARIO)
    except ScenarioError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.line_noise_db is None or not math.isnan(args.line_noise_db):
        scenario.line_noise_dbfs = args.line_noise_db
    token = args.auth_token or os.environ.get(TOKEN_VARIABLES[args.phone]) or (
        TELNYX_STANDIN_SEED if args.phone == "telnyx" else None)
    name = str(args.scenario or DEFAULT_SCENARIO.relative_to(HERE))
    timeline = Timeline()
    printer = timeline.listener = LivePrinter(timeline)
    print(_header(scenario, name, args.phone, args.relay_url, args.out, printer.width,
                  None if args.relay_url else args.voice_api, args.outbound), flush=True)
    placed: list[PhoneCaller] = []
    if args.outbound or (scenario.transfer_to and not args.relay_url):
        import simulate_outbound  # it builds on this module

        run = (simulate_outbound.simulate_outbound(args.outbound, args.phone, VoiceApi(args.voice_api), timeline,
                                                   args.seed, scenario) if args.outbound else
               simulate_outbound.simulate_transfer(scenario, args.phone, VoiceApi(args.voice_api), timeline, args.seed))
        return _report(asyncio.run(run), args.out)
    if not args.console:
        try:
            result = asyncio.run(simulate_call(scenario, args.relay_url, token if args.relay_url else None,
                                               seed=args.seed, phone=args.phone, timeline=timeline,
                                               before_call=lambda caller, _url: placed.append(caller),
                                               voice_api=VoiceApi(args.voice_api)))
        except KeyboardInterrupt:
            return _interrupted(placed, timeline, args.out)
        if args.relay_url and result.caller.connected_at is None:  # it never reached a stream: say what to do
            print(f"\nFAILED: {relay_url_hint(result.problems, args.relay_url, args.phone)}")
            return 1
        code = _report(result, args.out)
        if code and args.relay_url and any("waiting" in problem for problem in result.problems):
            print("hint: the stand-ins speak their own --scenario; start python simulate.py standins with the same "
                  f"--scenario as this call ({name})")
        return code
    console_token = secrets.token_urlsafe(18)
    code: int | None = None

    def show_console(caller: PhoneCaller, relay_url: str) -> None:
        placed.append(caller)
        print(f"console: {relay_url}/console  (any user name; password {console_token}): watch the call live",
              flush=True)

    async def keep_console(result: CallResult, relay_url: str) -> None:
        nonlocal code
        code = _report(result, args.out)
        print(f"\nconsole: {relay_url}/console  (any user name; password {console_token})")
        print("the relay stays up with the call in the console's ended calls; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(simulate_call(scenario, seed=args.seed, phone=args.phone, after_call=keep_console,
                                  console_token=console_token, timeline=timeline, before_call=show_console,
                                  voice_api=VoiceApi(args.voice_api)))
    except KeyboardInterrupt:
        if code is None:  # stopped during the call, not after it
            return _interrupted(placed, timeline, args.out)
    return 1 if code is None else code


def relay_url_hint(problems: list[str], relay_url: str, phone: str) -> str:
    """What to do when a call to ``--relay-url`` never reached its media stream, in one line."""
    token = {"plivo": "PLIVO_AUTH_TOKEN", "telnyx": "TELNYX_PUBLIC_KEY"}.get(phone, "TWILIO_AUTH_TOKEN")
    problem = problems[0] if problems else "the call never connected"
    if "HTTP 403" in problem and phone == "telnyx":
        return (f"the relay at {relay_url} refused the webhook's signature (403): give it the TELNYX_PUBLIC_KEY "
                "that python simulate.py standins prints")
    if "HTTP 404" in problem:
        return (f"the relay at {relay_url} does not serve {phone} (404): set {token} on it (or "
                "ALLOW_UNSIGNED_WEBHOOKS=true for local tests)")
    if "HTTP 403" in problem:
        return (f"the relay at {relay_url} refused the webhook's signature (403): sign with the relay's {token}, "
                f"given with --auth-token or as {token} in ./.env")
    if "Cannot connect" in problem or "Connect call failed" in problem:
        return f"nothing answers at {relay_url}: start the relay (python relay.py) or fix --relay-url"
    return f"{problem} (calling {relay_url})"


def _unwritable(out: Path) -> str | None:
    """Why the recording cannot be written at ``out`` (checked before the call), or None."""
    if out.is_dir():
        return "is a directory"
    folder = out.parent
    if not folder.is_dir():
        return f"there is no folder {folder}"
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        return "not writable"
    return None


def _interrupted(placed: list[PhoneCaller], timeline: Timeline, out: Path) -> int:
    """Ctrl-C during the call: one line, and what the caller recorded so far kept beside ``out`` as
    ``NAME.partial.wav``. Returns 130, the shell's code for an interrupt."""
    if not placed:
        print("\nsimulate: stopped (Ctrl-C) before the call was placed", file=sys.stderr)
        return 130
    path = out.with_name(f"{out.stem}.partial{out.suffix}")
    try:
        write_atomically(path, render_wav(placed[0]))
    except OSError as exc:
        print(f"\nsimulate: stopped (Ctrl-C); the recording could not be written to {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return 130
    print(f"\nsimulate: stopped (Ctrl-C) {time.monotonic() - timeline.t0:.1f} s into the call; what was recorded "
          f"is in {path}", file=sys.stderr)
    return 130


def _report(result: CallResult, out: Path) -> int:
    """Print the outcome and write the call's WAV; 0 when the call went as scripted. A failed
    call's WAV goes beside ``out`` as ``NAME.failed.wav``, so a good recording is never replaced
    by a failed one."""
    caller = result.caller
    duration = (caller.ended_at or result.timeline.t0) - result.timeline.t0
    path = out if result.ok else out.with_name(f"{out.stem}.failed{out.suffix}")
    print()
    try:
        write_atomically(path, render_wav(caller))
        print(f"wrote {path} ({duration:.1f} s, stereo: left the caller, right the assistant as the caller heard it)")
    except OSError as exc:
        print(f"could not write {path}: {exc.strerror or exc}")
        written = False
    else:
        written = True
    first, waits = result.waits_ms()
    if first is not None:
        after = f"; after each of its utterances: {', '.join(f'{ms:.0f}' for ms in waits)} ms" if waits else ""
        print(textwrap.fill(f"the caller waited {first:.0f} ms for the first word{after}", terminal_width(),
                            subsequent_indent="    "))
    live = result.live_barge_ins()
    print(f"barge-ins: {result.barge_ins}, marks echoed: {caller.marks_echoed}")
    for item, said, heard_ms, lag in live:
        print(textwrap.fill(f"  barge-in: GPT-Live yielded after saying {said:.0f} ms of item {item[-6:]}; the caller "
                            f"heard {heard_ms:.0f} ms of it, the last {lag:+.0f} ms after the model's speech ended",
                            terminal_width(), subsequent_indent="    "))
    for item, heard, truncated in result.barge_in_accuracy():
        told = ""
        if truncated is not None:
            error = truncated - heard
            off = "exact" if abs(error) < 0.5 else f"{abs(error):.0f} ms {'less' if error < 0 else 'MORE'}"
            told = f"; the relay truncated it at {truncated:.0f} ms ({off})"
        print(textwrap.fill(f"  barge-in: the caller heard {heard:.0f} ms of item {item[-6:]}{told}",
                            terminal_width(), subsequent_indent="    "))
    if result.ok:
        print("call completed as scripted")
        return 0 if written else 1
    for problem in result.problems:
        print(f"FAILED: {problem}")
    if out.exists():
        print(f"{out} from an earlier run is left as it was")
    return 1


def standins_main(argv: list[str]) -> int:
    """``python simulate.py standins``: the Realtime and Responses stand-ins on a fixed local port
    for a relay started with ``python relay.py``, speaking the scenario's assistant turns on every
    call; prints the variables to give the relay, then each call's events. Ends on Ctrl-C or
    SIGTERM (0); 1 when the port cannot be bound."""
    import relay  # its port check only

    parser = argparse.ArgumentParser(prog="simulate.py standins",
                                     description="Serve the OpenAI stand-ins for a relay started separately.")
    _scenario_arg(parser)
    parser.add_argument("--port", type=relay.port_argument, default=STANDINS_PORT,
                        help=f"port on 127.0.0.1, 1-65535 (default {STANDINS_PORT})")
    parser.add_argument("--seed", type=int, default=7, help="seed for the stand-in's delta sizes")
    parser.add_argument("--outbound", choices=("human", "machine"), help="also serve Twilio's and Plivo's REST APIs, "
                        "whose callee (a person, or an answering machine) answers the calls the relay places")
    args = parser.parse_args(argv)
    if args.outbound and not args.scenario:
        args.scenario = HERE / "scenarios" / f"outbound_{args.outbound}.json"
    try:
        scenario = load_scenario(args.scenario or DEFAULT_SCENARIO)
    except ScenarioError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve_standins(scenario, args.port, args.seed, args.outbound))


async def _serve_standins(scenario: Scenario, port: int, seed: int, outbound: str | None = None) -> int:
    timeline = Timeline()
    timeline.listener = LivePrinter(timeline)
    standin = RealtimeStandIn(scenario.assistant, timeline.add, seed, scenario.web_search)
    standin.standalone = True
    calls = [0]

    def new_call() -> None:  # each call's times count from its own start, as the caller's terminal does
        calls[0] += 1
        timeline.t0 = time.monotonic()
        print(f"--- call {calls[0]} (times from its start) ---", flush=True)

    standin.on_session = new_call
    standin.caller_transcripts = scenario.caller_words()
    app, networks = standin.app(), contextlib.AsyncExitStack()
    if outbound:
        import simulate_outbound  # it builds on this module

        extra = await networks.enter_async_context(simulate_outbound.network_standins(app, outbound, timeline,
                                                                                      standin.resolve))
    try:
        async with networks, serve_on_loopback(app, port) as address:
            if outbound:
                print("Stand-in networks that place calls (then: python relay.py call +14155550100 --purpose ...)"
                      ":\n" + "".join(f"  {line.format(origin='http://' + address)}\n" for line in extra)
                      + "  and CONSOLE_TOKEN=<16 characters or more>, PUBLIC_URL=http://127.0.0.1:$PORT", flush=True)
            print(f"OpenAI stand-ins on {address}, for a relay started with python relay.py; give it:\n"
                  f"  OPENAI_REALTIME_URL=ws://{address}/v1/realtime\n"
                  f"  OPENAI_LIVE_URL=ws://{address}/v1/live/sessions   (with VOICE_API=live)\n"
                  f"  OPENAI_BASE_URL=http://{address}/v1\n"
                  f"  TELNYX_PUBLIC_KEY={telnyx_public_key(TELNYX_STANDIN_SEED)}   (for --phone telnyx: the key "
                  "the simulated Telnyx caller signs with)\n"
                  f"  OPENAI_API_KEY=sk-standin-offline   (any value: the stand-ins need one, and check nothing)\n"
                  "  and, with TWILIO_AUTH_TOKEN set, PUBLIC_URL=http://127.0.0.1:$PORT (the relay's own origin)\n"
                  "Then: python simulate.py --relay-url http://127.0.0.1:$PORT  (Ctrl-C stops the stand-ins)\n",
                  flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
    except OSError as exc:
        print(f"simulate standins: port {port} cannot be bound ({exc.strerror or exc}); choose another with --port",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

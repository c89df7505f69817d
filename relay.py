"""The relay: a Twilio phone call bridged to the OpenAI Realtime API, in one aiohttp process.

Call flow (a maintainer's map):

1. Twilio POSTs ``/incoming-call``; ``incoming_call`` answers TwiML: a greeting and
   ``<Connect><Stream url="wss://…/media-stream">`` for an allowed caller, a short
   "restricted" message and a hang-up for anyone else.
2. Twilio opens the ``/media-stream`` websocket; ``media_stream`` checks the signature and
   hands the socket to a ``Call``.
3. ``Call.run`` waits for Twilio's ``start``, opens the Realtime websocket, sends
   ``session.update`` first, holds caller audio until ``session.updated``, then asks for the
   greeting and pumps both directions (``_pump_twilio``, ``_pump_realtime``).
4. Barge-in (``_on_speech_started``): ``clear`` at Twilio, truncate what the caller did not
   hear (``protocol.Playback``). One response at a time (``_request_response``).
5. Whichever side ends closes the other; closing the Twilio socket hangs up the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import gc
import json
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import openai
import phonenumbers
from aiohttp import WSCloseCode, WSMsgType, web
from dotenv import load_dotenv
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

import audio
import protocol
import tools
from protocol import Playback
from tools import TOOLS, WELL_KNOWN_SMTP, SmtpSecurity, SmtpServer, ToolContext, ToolError

logger = logging.getLogger("relay")

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, capable voice assistant on a phone call. Speak naturally and keep "
    "answers short (one to three sentences) unless the caller asks for more; the caller "
    "cannot see anything, so never read out URLs, markdown or lists of symbols. If you are "
    "interrupted, stop and listen. Answer in the caller's language."
)

START_TIMEOUT_S = 10.0
"""How long Twilio has to send ``start`` after the websocket opens."""
UPSTREAM_CONNECT_TIMEOUT_S = 10.0
"""How long opening the Realtime websocket may take."""
SESSION_TIMEOUT_S = 10.0
"""How long the Realtime service has to answer ``session.update`` with ``session.updated``."""
HELD_AUDIO_FRAMES = 500
"""Caller frames held while the session is being configured: 10 s of 20 ms frames."""
TWILIO_MAX_MSG_BYTES = 64 * 1024
"""Largest frame accepted from Twilio (a 20 ms media frame is about 300 bytes)."""
GOODBYE_RESPONSE_TIMEOUT_S = 15.0
"""After ``end_call``, how long the model has to finish its goodbye before the line closes anyway."""
GOODBYE_MARGIN_S = 2.0
"""Safety margin past the goodbye audio's own length for its last mark to come back."""
MUSIC_LEAD_FRAMES = 3
"""Music frames sent at once when the music starts: 60 ms queued at the phone absorbs
network jitter, and the ``clear`` at the end drops it."""
MIC_CONFIRM_TIMEOUT_S = 4.0
"""How long the service has to confirm a noise reduction switch with ``session.updated``."""


# --- Configuration ------------------------------------------------------------------------


class ConfigError(Exception):
    """One or more environment variables are missing or malformed; the message names them."""


class VadType(enum.StrEnum):
    """Realtime turn detection types (``audio.input.turn_detection.type``)."""

    SEMANTIC = "semantic_vad"
    SERVER = "server_vad"
    NONE = "none"


class NoiseReduction(enum.StrEnum):
    """Realtime input noise reduction (``audio.input.noise_reduction.type``)."""

    NEAR_FIELD = "near_field"
    FAR_FIELD = "far_field"
    OFF = "off"


class CallerGroup(enum.StrEnum):
    """Which allowlist a caller is on."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
    ANYONE = "anyone"
    """Not listed, but let in by ``ALLOW_ALL_CALLERS``."""


EAGERNESS = ("low", "medium", "high", "auto")
DEFAULT_WAIT_MUSIC = Path(__file__).resolve().parent / "assets" / "wait_music.wav"
_EMAIL = re.compile(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+")
_E = TypeVar("_E", bound=enum.StrEnum)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the relay reads from the environment, validated once at startup.

    Build with ``Config.from_env(os.environ)``; tests build it directly.
    """

    openai_api_key: str = field(repr=False)
    port: int = 10000
    public_url: str | None = None
    """Public origin Twilio uses (``https://relay.example.com``); None: the Host header."""
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    realtime_model: str = "gpt-realtime"
    voice: str = "cedar"
    instructions: str = DEFAULT_INSTRUCTIONS
    vad_type: VadType = VadType.SEMANTIC
    vad_eagerness: str = "auto"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_interrupt_response: bool = True
    noise_reduction: NoiseReduction = NoiseReduction.NEAR_FIELD
    transcription_model: str | None = None
    twilio_account_sid: str | None = field(default=None, repr=False)
    twilio_auth_token: str | None = field(default=None, repr=False)
    primary_numbers: tuple[str, ...] = ()
    """E.164 numbers of the primary caller group."""
    secondary_numbers: tuple[str, ...] = ()
    primary_first_name: str | None = None
    secondary_first_name: str | None = None
    allow_all_callers: bool = False
    default_region: str = "US"
    """ISO country used to read numbers written without a leading +."""
    timezone: str | None = None
    """IANA zone for the time-of-day greeting; None: the server's local time."""
    log_level: str = "INFO"
    tools: tuple[str, ...] = tuple(TOOLS)
    """Tool names offered to the model (``TOOLS``), in ``tools.TOOLS`` order."""
    openai_base_url: str = "https://api.openai.com/v1"
    """REST base URL for the Responses API (web search)."""
    web_search_model: str = "gpt-5.2"
    web_search_timeout_s: float = 15.0
    smtp: SmtpServer | None = None
    """Where ``send_email`` sends from; None: email is not configured."""
    primary_to_email: str | None = None
    secondary_to_email: str | None = None
    wait_music_file: str | None = str(DEFAULT_WAIT_MUSIC)
    """16-bit PCM WAV played while a tool runs; None: no music."""
    wait_music_threshold_ms: int = 500
    """How long a tool call may run before the music starts."""
    wait_music_volume: float = 0.12
    """Gain applied to the music, 0..1."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read and validate the configuration.

        Args:
            env: the environment (``os.environ`` after python-dotenv loaded ``.env``).

        Raises:
            ConfigError: naming every missing or malformed variable and what is allowed,
                in one line.
        """
        problems: list[str] = []
        reader = _EnvReader(env, problems)
        default = {f.name: f.default for f in fields(cls)}
        api_key = env.get("OPENAI_API_KEY", "").strip()
        if not api_key:
            problems.append("OPENAI_API_KEY is required (your OpenAI API key)")
        region = reader.text("DEFAULT_REGION", "US").upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            problems.append(f"DEFAULT_REGION must be an ISO country code such as US or GB, got {region!r}")
            region = "US"
        timezone = reader.text("TIMEZONE", "") or None
        if timezone:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(f"TIMEZONE must be an IANA zone such as Europe/Paris, got {timezone!r}")
        public_url = reader.text("PUBLIC_URL", "").rstrip("/") or None
        if public_url and urlsplit(public_url).scheme not in ("http", "https"):
            problems.append(f"PUBLIC_URL must start with https:// (or http:// for local tests), got {public_url!r}")
        realtime_url = reader.text("OPENAI_REALTIME_URL", default["realtime_url"])
        if urlsplit(realtime_url).scheme not in ("ws", "wss"):
            problems.append(f"OPENAI_REALTIME_URL must be a ws:// or wss:// URL, got {realtime_url!r}")
        transcription = reader.text("TRANSCRIPTION_MODEL", "")
        base_url = reader.text("OPENAI_BASE_URL", default["openai_base_url"]).rstrip("/")
        if urlsplit(base_url).scheme not in ("http", "https"):
            problems.append(f"OPENAI_BASE_URL must be an http(s):// URL, got {base_url!r}")
        music_file: str | None = reader.text("WAIT_MUSIC_FILE", default["wait_music_file"])
        if music_file and music_file.lower() in ("none", "off"):
            music_file = None
        config = cls(
            openai_api_key=api_key,
            port=reader.integer("PORT", default["port"], 1, 65535),
            public_url=public_url,
            realtime_url=realtime_url,
            realtime_model=reader.text("OPENAI_REALTIME_MODEL", default["realtime_model"]),
            voice=reader.text("VOICE", default["voice"]),
            instructions=reader.text("INSTRUCTIONS", DEFAULT_INSTRUCTIONS),
            vad_type=reader.choice("VAD_TYPE", VadType, default["vad_type"]),
            vad_eagerness=reader.choice_text("VAD_EAGERNESS", EAGERNESS, default["vad_eagerness"]),
            vad_threshold=reader.number("VAD_THRESHOLD", default["vad_threshold"], 0.0, 1.0),
            vad_prefix_padding_ms=reader.integer("VAD_PREFIX_PADDING_MS", default["vad_prefix_padding_ms"], 0, 10_000),
            vad_silence_duration_ms=reader.integer(
                "VAD_SILENCE_DURATION_MS", default["vad_silence_duration_ms"], 0, 10_000
            ),
            vad_interrupt_response=reader.boolean("VAD_INTERRUPT_RESPONSE", default["vad_interrupt_response"]),
            noise_reduction=reader.choice("NOISE_REDUCTION", NoiseReduction, default["noise_reduction"]),
            transcription_model=transcription or None,
            twilio_account_sid=reader.text("TWILIO_ACCOUNT_SID", "") or None,
            twilio_auth_token=reader.text("TWILIO_AUTH_TOKEN", "") or None,
            primary_numbers=reader.phone_list("PRIMARY_USER_PHONE_NUMBERS", region),
            secondary_numbers=reader.phone_list("SECONDARY_USER_PHONE_NUMBERS", region),
            primary_first_name=reader.text("PRIMARY_USER_FIRST_NAME", "") or None,
            secondary_first_name=reader.text("SECONDARY_USER_FIRST_NAME", "") or None,
            allow_all_callers=reader.boolean("ALLOW_ALL_CALLERS", False),
            default_region=region,
            timezone=timezone,
            log_level=reader.choice_text("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", upper=True),
            tools=reader.tool_names("TOOLS", default["tools"]),
            openai_base_url=base_url,
            web_search_model=reader.text("WEB_SEARCH_MODEL", default["web_search_model"]),
            web_search_timeout_s=reader.number("WEB_SEARCH_TIMEOUT_S", default["web_search_timeout_s"], 1.0, 120.0),
            smtp=reader.smtp_server(),
            primary_to_email=reader.email("PRIMARY_TO_EMAIL"),
            secondary_to_email=reader.email("SECONDARY_TO_EMAIL"),
            wait_music_file=music_file,
            wait_music_threshold_ms=reader.integer(
                "WAIT_MUSIC_THRESHOLD_MS", default["wait_music_threshold_ms"], 0, 60_000
            ),
            wait_music_volume=reader.number("WAIT_MUSIC_VOLUME", default["wait_music_volume"], 0.0, 1.0),
        )
        if problems:
            raise ConfigError("; ".join(problems))
        return config

    def turn_detection(self) -> dict[str, Any] | None:
        """The ``audio.input.turn_detection`` object for ``session.update`` (None: VAD off)."""
        if self.vad_type is VadType.NONE:
            return None
        common = {"create_response": True, "interrupt_response": self.vad_interrupt_response}
        if self.vad_type is VadType.SEMANTIC:
            return {"type": "semantic_vad", "eagerness": self.vad_eagerness, **common}
        return {
            "type": "server_vad",
            "threshold": self.vad_threshold,
            "prefix_padding_ms": self.vad_prefix_padding_ms,
            "silence_duration_ms": self.vad_silence_duration_ms,
            **common,
        }

    def realtime_connect_url(self) -> str:
        """``OPENAI_REALTIME_URL`` with ``model`` added to its query unless already there."""
        parts = urlsplit(self.realtime_url)
        query = parse_qsl(parts.query)
        if not any(key == "model" for key, _ in query):
            query.append(("model", self.realtime_model))
        return urlunsplit(parts._replace(query=urlencode(query)))


class _EnvReader:
    """Reads typed values, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        self.env = env
        self.problems = problems

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name)
        return default if value is None or not value.strip() else value.strip()

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            self.problems.append(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
            return default
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            self.problems.append(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def choice(self, name: str, kind: type[_E], default: _E) -> _E:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            return kind(raw.lower())
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            self.problems.append(f"{name} must be one of {allowed}, got {raw!r}")
            return default

    def choice_text(self, name: str, allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        raw = self.text(name, "")
        value = raw.upper() if upper else raw.lower()
        if not raw:
            return default
        if value not in allowed:
            self.problems.append(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
            return default
        return value

    def tool_names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.text(name, "")
        if not raw:
            return default
        if raw.lower() == "none":
            return ()
        wanted = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = sorted(wanted - set(TOOLS))
        if unknown:
            self.problems.append(f"{name} has unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}, or none")
        return tuple(tool for tool in TOOLS if tool in wanted)

    def email(self, name: str) -> str | None:
        raw = self.text(name, "")
        if not raw:
            return None
        if not _EMAIL.fullmatch(raw):
            self.problems.append(f"{name} must be an email address such as name@example.com, got {raw!r}")
            return None
        return raw

    def smtp_server(self) -> SmtpServer | None:
        """``SMTP_*`` and ``SENDER_FROM_EMAIL``: a service id (``gmail``) or an explicit host;
        explicit ``SMTP_HOST``/``SMTP_PORT``/``SMTP_SECURITY`` override the service's."""
        service = self.text("SMTP_NODEMAILER_SERVICE_ID", "").lower()
        known = WELL_KNOWN_SMTP.get(service)
        if service and known is None:
            self.problems.append(
                f"SMTP_NODEMAILER_SERVICE_ID {service!r} is not a known service ({', '.join(WELL_KNOWN_SMTP)}); "
                "set SMTP_HOST and SMTP_PORT instead"
            )
        host = self.text("SMTP_HOST", "") or (known[0] if known else "")
        security_raw = self.text("SMTP_SECURITY", "")
        security = self.choice("SMTP_SECURITY", SmtpSecurity, SmtpSecurity.STARTTLS) if security_raw else None
        port_default = known[1] if known else (465 if security is SmtpSecurity.SSL else 587)
        port = self.integer("SMTP_PORT", port_default, 1, 65535)
        if security is None and known and port == known[1]:
            security = known[2]
        elif security is None:
            security = SmtpSecurity.SSL if port == 465 else SmtpSecurity.STARTTLS
        sender = self.email("SENDER_FROM_EMAIL")
        if sender is None:
            return None
        if not host:
            if not service:  # an unknown service id was reported above
                self.problems.append("SENDER_FROM_EMAIL is set but neither SMTP_NODEMAILER_SERVICE_ID nor SMTP_HOST is")
            return None
        user = self.text("SMTP_USER", "") or None
        password = self.env.get("SMTP_PASS") or None
        if user and not password:
            self.problems.append("SMTP_USER is set but SMTP_PASS is not")
        return SmtpServer(host, port, security, sender, user, password)

    def phone_list(self, name: str, region: str) -> tuple[str, ...]:
        numbers = []
        for raw in self.text(name, "").split(","):
            if not raw.strip():
                continue
            number = to_e164(raw, region)
            if number is None:
                self.problems.append(f"{name} has {raw.strip()!r}, which is not a valid phone number")
            else:
                numbers.append(number)
        return tuple(numbers)


def to_e164(raw: str, region: str = "US") -> str | None:
    """Normalise a phone number to E.164 (``+14155550100``) with libphonenumber rules.

    Args:
        raw: a number as dialled or written (``+44 20 7946 0958``, ``(415) 555-0100``).
        region: ISO country assumed when ``raw`` has no leading ``+``.

    Returns:
        The E.164 string, or None when ``raw`` is not a valid number (e.g. ``anonymous``).
    """
    try:
        parsed = phonenumbers.parse(raw.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_number(number: str) -> str:
    """A phone number fit for logs: the last four digits only (``+*******0100``)."""
    return number[:1] + "*" * max(len(number) - 5, 0) + number[-4:] if len(number) > 4 else "****"


@dataclass(frozen=True, slots=True)
class Caller:
    """An allowed caller."""

    number: str
    """E.164."""
    group: CallerGroup
    first_name: str
    """The group's first name, or "legend" when unset."""


def find_caller(config: Config, raw_number: str | None) -> Caller | None:
    """The allowed caller for a number, or None when the line is restricted for it.

    With both allowlists empty everyone is refused unless ``ALLOW_ALL_CALLERS`` is set.
    """
    number = to_e164(raw_number or "", config.default_region)
    if number is not None and number in config.primary_numbers:
        return Caller(number, CallerGroup.PRIMARY, config.primary_first_name or "legend")
    if number is not None and number in config.secondary_numbers:
        return Caller(number, CallerGroup.SECONDARY, config.secondary_first_name or "legend")
    if config.allow_all_callers:
        return Caller(number or (raw_number or "unknown"), CallerGroup.ANYONE, "legend")
    return None


# --- Application state ------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Process counters reported by ``/health``."""

    started: float = field(default_factory=time.monotonic)
    active: int = 0
    total: int = 0
    errors: int = 0


CONFIG = web.AppKey("config", Config)
STATS = web.AppKey("stats", Stats)
CALLS = web.AppKey("calls", set["Call"])
VALIDATOR = web.AppKey("validator", RequestValidator | None)
DRAINING = web.AppKey("draining", asyncio.Event)
WAIT_MUSIC = web.AppKey("wait_music", tuple[str, ...])
"""The waiting music as base64 µ-law 20 ms frames (empty: none)."""
OPENAI_CLIENT = web.AppKey("openai_client", openai.AsyncOpenAI | None)
"""One REST client (and connection pool) for every call's web searches."""


def make_app(config: Config) -> web.Application:
    """Build the aiohttp application for ``config`` (routes, state, shutdown).

    Raises:
        ConfigError: the waiting music file cannot be used.
    """
    app = web.Application()
    app[CONFIG] = config
    app[WAIT_MUSIC] = load_wait_music(config)
    app.cleanup_ctx.append(_openai_client)
    app[STATS] = Stats()
    app[CALLS] = set()
    app[VALIDATOR] = RequestValidator(config.twilio_auth_token) if config.twilio_auth_token else None
    app[DRAINING] = asyncio.Event()
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("GET", "/incoming-call", incoming_call)
    app.router.add_route("POST", "/incoming-call", incoming_call)
    app.router.add_get("/media-stream", media_stream)
    app.on_shutdown.append(_close_calls)
    return app


def load_wait_music(config: Config) -> tuple[str, ...]:
    """Convert ``WAIT_MUSIC_FILE`` once: downmix, resample to 8 kHz, apply
    ``WAIT_MUSIC_VOLUME``, encode µ-law, split into 20 ms frames (160 bytes), base64.

    Returns:
        The frames as Twilio ``media.payload`` strings; empty when music is off.

    Raises:
        ConfigError: naming the variable and file when it is unreadable, not 16-bit PCM WAV,
            or empty.
    """
    if config.wait_music_file is None:
        return ()
    path = config.wait_music_file
    try:
        ulaw = audio.to_ulaw_8k(audio.load_wav(path), config.wait_music_volume)
    except OSError as exc:
        raise ConfigError(f"WAIT_MUSIC_FILE {path!r} cannot be read: {exc.strerror or exc}") from exc
    except audio.WavError as exc:
        raise ConfigError(f"WAIT_MUSIC_FILE is not usable: {exc}") from exc
    if len(ulaw) < audio.FRAME_BYTES:
        raise ConfigError(f"WAIT_MUSIC_FILE {path!r} holds less than 20 ms of audio")
    return tuple(base64.b64encode(frame).decode() for frame in audio.frames(ulaw))


async def _openai_client(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Responses API client, when ``gpt_web_search`` is offered."""
    config = app[CONFIG]
    client = None
    if "gpt_web_search" in config.tools:
        client = openai.AsyncOpenAI(
            api_key=config.openai_api_key,
            base_url=config.openai_base_url,
            max_retries=0,  # the tool's own deadline bounds the whole search
            timeout=config.web_search_timeout_s,
        )
        await tools.warm_up_web_search(config.web_search_model)
    app[OPENAI_CLIENT] = client
    yield
    if client is not None:
        await client.close()


async def _close_calls(app: web.Application) -> None:
    """Shutdown: refuse new calls, end live ones with 1001 going away."""
    app[DRAINING].set()
    calls = list(app[CALLS])
    if calls:
        logger.info("shutting down: closing %d live call(s)", len(calls))
    await asyncio.gather(*(call.close(WSCloseCode.GOING_AWAY, "server shutting down") for call in calls))


# --- HTTP routes ------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /``: a liveness message; a websocket upgrade here is a media stream (seed 001)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await media_stream(request)
    return web.json_response({"message": "Twilio ⇄ OpenAI Realtime relay is running"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: status and counters for load balancers (503 while draining)."""
    stats = request.app[STATS]
    draining = request.app[DRAINING].is_set()
    body = {
        "status": "draining" if draining else "healthy",
        "uptime": f"{int(time.monotonic() - stats.started)}s",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "connections": {"active": stats.active, "total": stats.total},
        "errors": stats.errors,
        "openai_configured": bool(request.app[CONFIG].openai_api_key),
    }
    return web.json_response(body, status=503 if draining else 200)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: a bare liveness probe."""
    return web.json_response({"status": "ok"})


def public_origin(config: Config, request: web.Request) -> str:
    """The https origin Twilio used to reach us: ``PUBLIC_URL``, else the Host header
    (with ``X-Forwarded-Proto`` when a proxy terminates TLS)."""
    if config.public_url:
        return config.public_url
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{proto}://{request.host}"


def stream_origin(config: Config, request: web.Request) -> str:
    """The websocket origin for ``<Stream url>``: ``wss://`` unless ``PUBLIC_URL`` is an
    ``http://`` loopback test origin (Twilio accepts only wss)."""
    if config.public_url and config.public_url.startswith("http://"):
        return "ws://" + config.public_url.removeprefix("http://")
    return "wss://" + urlsplit(public_origin(config, request)).netloc


def _signature_ok(request: web.Request, url: str, params: Mapping[str, str]) -> bool:
    """Check ``X-Twilio-Signature`` over ``url`` and ``params``; True when checks are off."""
    validator = request.app[VALIDATOR]
    if validator is None:
        return True
    return bool(validator.validate(url, dict(params), request.headers.get("X-Twilio-Signature", "")))


def greeting_for(when: datetime) -> str:
    """ "Good morning" (before 12:00), "Good afternoon" (before 18:00) or "Good evening"."""
    if when.hour < 12:
        return "Good morning"
    return "Good afternoon" if when.hour < 18 else "Good evening"


async def incoming_call(request: web.Request) -> web.Response:
    """``/incoming-call`` (Twilio voice webhook, GET or POST): answer with TwiML.

    Twilio docs: the webhook is form-encoded and signed; ``<Connect><Stream>`` holds the call
    until the websocket closes, and with nothing after ``</Connect>`` the call then ends.
    """
    config = request.app[CONFIG]
    form = await request.post() if request.method == "POST" else {}
    params = {key: str(value) for key, value in form.items()}
    url = public_origin(config, request) + request.path_qs
    if not _signature_ok(request, url, params):
        logger.warning("rejected /incoming-call: bad X-Twilio-Signature")
        return web.Response(status=403, text="invalid signature")
    raw_from = params.get("From") or request.query.get("From")
    caller = find_caller(config, raw_from)
    response = VoiceResponse()
    if caller is None:
        logger.info("restricted caller %s refused", mask_number(raw_from or ""))
        response.say("Sorry, this line is restricted. Goodbye.")
        response.hangup()
    else:
        zone = ZoneInfo(config.timezone) if config.timezone else None
        salutation = greeting_for(datetime.now(zone))
        response.say(f"{salutation}, {caller.first_name}. Connecting you to your assistant.")
        connect_verb = Connect()
        stream = connect_verb.stream(url=stream_origin(config, request) + "/media-stream")
        stream.parameter(name="caller_number", value=caller.number)
        response.append(connect_verb)
    return web.Response(text=response.to_xml(), content_type="text/xml")


async def media_stream(request: web.Request) -> web.WebSocketResponse:
    """``/media-stream`` websocket (also ``/`` upgrades): one Twilio call.

    Twilio signs the handshake over the ``wss://`` URL with empty params; a bad signature is
    closed with 1008 before anything reaches OpenAI.
    """
    app = request.app
    ws = web.WebSocketResponse(max_msg_size=TWILIO_MAX_MSG_BYTES, autoping=True)
    config = app[CONFIG]
    url = stream_origin(config, request) + request.path_qs
    await ws.prepare(request)
    if app[DRAINING].is_set():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        return ws
    if not _signature_ok(request, url, {}):
        logger.warning("rejected media stream: bad X-Twilio-Signature")
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid signature")
        return ws
    call = Call(ws, config, app[STATS], app[WAIT_MUSIC], app[OPENAI_CLIENT])
    app[CALLS].add(call)
    try:
        await call.run()
    finally:
        app[CALLS].discard(call)
    return ws


# --- The call bridge --------------------------------------------------------------------


class EndCall(Exception):
    """Ends a call from inside a pump; the message is the log's end reason."""


@dataclass(slots=True)
class CallCounts:
    """Per-call counters for the end-of-call log line."""

    frames_in: int = 0
    frames_out: int = 0
    marks_acked: int = 0
    barge_ins: int = 0
    responses: int = 0
    realtime_errors: int = 0


class Call:
    """One phone call: the Twilio websocket, the Realtime websocket, and the state between.

    Owns two pump coroutines (Twilio -> Realtime, Realtime -> Twilio); when either ends, the
    other is cancelled and both sockets are closed.
    """

    def __init__(
        self,
        twilio: web.WebSocketResponse,
        config: Config,
        stats: Stats,
        wait_music: tuple[str, ...] = (),
        openai_client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.twilio = twilio
        self.config = config
        self.stats = stats
        self.realtime: ClientConnection | None = None
        self.stream_sid = ""
        self.call_sid = ""
        self.caller: Caller | None = None
        self.playback = Playback()
        self.counts = CallCounts()
        self.session_ready = False
        self.held: deque[str] = deque(maxlen=HELD_AUDIO_FRAMES)
        self.active_response: str | None = None
        self.create_in_flight = False
        self.response_wanted = False
        self.interrupted_responses: set[str] = set()
        self._warned: set[str] = set()
        self._close_code: int | None = None
        self._closing = asyncio.Event()
        # tools
        self.tool_context = ToolContext(
            call=self,
            smtp=config.smtp,
            openai_client=openai_client,
            web_search_model=config.web_search_model,
            timeouts={"gpt_web_search": config.web_search_timeout_s},
        )
        self.answered_calls: set[str] = set()
        """call_ids already run (each is answered exactly once)."""
        self.tools_running = 0
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._noise_reduction = config.noise_reduction.value
        self._noise_reduction_waiters: dict[str, tuple[str, asyncio.Future[None]]] = {}
        # waiting music
        self._wait_music = wait_music
        self._music_task: asyncio.Task[None] | None = None
        self._music_position = 0
        self.music_playing = False
        # hanging up after the goodbye (end_call)
        self.hangup_reason: str | None = None
        self._hangup_requested = asyncio.Event()
        self._goodbye_requested = False
        self._goodbye_response: str | None = None
        self._goodbye_done = asyncio.Event()
        self._playback_changed = asyncio.Event()

    # -- lifecycle --

    async def run(self) -> None:
        """Serve the call until either side ends. Never raises (errors are logged)."""
        started = time.monotonic()
        reason = "unknown"
        self.stats.active += 1
        self.stats.total += 1
        try:
            reason = await self._run()
        except EndCall as end:
            reason = str(end)
        except Exception:
            self.stats.errors += 1
            reason = "internal error"
            logger.exception("call failed stream_sid=%s", self.stream_sid or "-")
        finally:
            self.stats.active -= 1
            await self._close_sockets()
        if self.stream_sid:
            c = self.counts
            logger.info(
                "call ended stream_sid=%s call_sid=%s duration=%.1fs reason=%s frames_in=%d "
                "frames_out=%d marks_acked=%d responses=%d barge_ins=%d realtime_errors=%d",
                self.stream_sid,
                self.call_sid,
                time.monotonic() - started,
                reason,
                c.frames_in,
                c.frames_out,
                c.marks_acked,
                c.responses,
                c.barge_ins,
                c.realtime_errors,
            )

    async def close(self, code: int, reason: str) -> None:
        """End the call from outside (shutdown): close the Twilio socket with ``code``."""
        self._close_code = code
        self._closing.set()
        await self.twilio.close(code=code, message=reason.encode())

    async def _run(self) -> str:
        if not await self._await_start():
            return "no start from twilio"
        caller = self.caller
        assert caller is not None
        logger.info(
            "call started stream_sid=%s call_sid=%s caller=%s group=%s",
            self.stream_sid,
            self.call_sid,
            mask_number(caller.number),
            caller.group,
        )
        try:
            self.realtime = await asyncio.wait_for(
                connect(
                    self.config.realtime_connect_url(),
                    additional_headers={"Authorization": f"Bearer {self.config.openai_api_key}"},
                    max_size=2**24,
                    compression=None,
                    open_timeout=None,
                ),
                UPSTREAM_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.stats.errors += 1
            self._close_code = WSCloseCode.INTERNAL_ERROR
            logger.error("realtime connect failed stream_sid=%s: %s", self.stream_sid, _describe(exc))
            return "realtime unavailable"
        await self._send_realtime(protocol.session_update(self._session()))
        pumps = [
            asyncio.create_task(self._pump_twilio(), name="twilio->realtime"),
            asyncio.create_task(self._pump_realtime(), name="realtime->twilio"),
            asyncio.create_task(self._session_watchdog(), name="session watchdog"),
            asyncio.create_task(self._hang_up_after_goodbye(), name="hang up"),
            asyncio.create_task(self._closing.wait(), name="close request"),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._cancel_music()
            owned = [*pumps, *self._tool_tasks]
            for task in owned:
                task.cancel()
            await asyncio.gather(*owned, return_exceptions=True)
        if self._closing.is_set():  # the close also ends the Twilio pump: report the cause
            return "server shutting down"
        finished = done.pop()
        exc = finished.exception()
        if exc is not None:
            raise exc
        return str(finished.result())

    async def _await_start(self) -> bool:
        """Read Twilio frames until ``start``; False on timeout, close or a bad caller."""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                async for msg in self.twilio:
                    event = self._parse_twilio(msg)
                    if event is None or event.get("event") != "start":
                        continue
                    start = event.get("start")
                    if not isinstance(start, dict) or not isinstance(start.get("streamSid"), str):
                        self._warn_once("start", "twilio start without start.streamSid dropped")
                        continue
                    self.stream_sid = start["streamSid"]
                    self.call_sid = str(start.get("callSid", ""))
                    params = start.get("customParameters")
                    number = params.get("caller_number") if isinstance(params, dict) else None
                    self.caller = find_caller(self.config, number if isinstance(number, str) else None)
                    if self.caller is None:
                        logger.warning("media stream for a restricted caller refused stream_sid=%s", self.stream_sid)
                        await self.twilio.close(code=WSCloseCode.POLICY_VIOLATION, message=b"restricted")
                        return False
                    self.tool_context.email_to = {
                        CallerGroup.PRIMARY: self.config.primary_to_email,
                        CallerGroup.SECONDARY: self.config.secondary_to_email,
                    }.get(self.caller.group)
                    return True
        except TimeoutError:
            logger.warning("no twilio start within %.0fs; closing", START_TIMEOUT_S)
        return False

    async def _session_watchdog(self) -> str:
        await asyncio.sleep(SESSION_TIMEOUT_S)
        if self.session_ready:
            await asyncio.Event().wait()  # done: idle until cancelled
        self.stats.errors += 1
        logger.error("no session.updated within %.0fs stream_sid=%s", SESSION_TIMEOUT_S, self.stream_sid)
        raise EndCall("realtime session not configured")

    async def _close_sockets(self) -> None:
        if self.realtime is not None:
            await self.realtime.close()
        if not self.twilio.closed:
            await self.twilio.close(code=self._close_code or WSCloseCode.OK)

    def _session(self) -> dict[str, Any]:
        config = self.config
        noise = None if config.noise_reduction is NoiseReduction.OFF else config.noise_reduction.value
        return protocol.realtime_session(
            instructions=config.instructions,
            voice=config.voice,
            turn_detection=config.turn_detection(),
            noise_reduction=noise,
            transcription_model=config.transcription_model,
            tools=tools.definitions(config.tools),
        )

    # -- Twilio -> Realtime --

    def _parse_twilio(self, msg: Any) -> dict[str, Any] | None:
        """One Twilio frame as a dict, or None (logged once per kind) when unusable."""
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                self._warn_once("binary", "binary frame from twilio ignored")
            return None
        try:
            event = json.loads(msg.data)
        except ValueError:
            self._warn_once("json", "non-JSON frame from twilio ignored")
            return None
        if not isinstance(event, dict):
            self._warn_once("json", "non-object frame from twilio ignored")
            return None
        return event

    async def _pump_twilio(self) -> str:
        """Forward caller audio and account mark echoes until Twilio stops or closes."""
        async for msg in self.twilio:
            event = self._parse_twilio(msg)
            if event is None:
                continue
            kind = event.get("event")
            if kind == "media":
                media = event.get("media")
                payload = media.get("payload") if isinstance(media, dict) else None
                if not isinstance(payload, str):
                    self._warn_once("media", "twilio media without a payload dropped")
                    continue
                self.counts.frames_in += 1
                if self.session_ready:
                    await self._send_realtime_text(protocol.input_audio_append(payload))
                else:
                    self.held.append(payload)
            elif kind == "mark":
                mark = event.get("mark")
                name = mark.get("name") if isinstance(mark, dict) else None
                if isinstance(name, str) and self.playback.on_mark(name, time.monotonic()):
                    self.counts.marks_acked += 1
                    if self.hangup_reason is not None:
                        self._playback_changed.set()
            elif kind == "stop":
                return "twilio stop"
            else:
                logger.debug("twilio %s ignored", kind)
        return "twilio closed"

    # -- Realtime -> Twilio --

    async def _pump_realtime(self) -> str:
        """Dispatch Realtime server events until the service closes the socket."""
        assert self.realtime is not None
        handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "response.output_audio.delta": self._on_audio_delta,
            "response.output_audio.done": self._on_audio_done,
            "session.updated": self._on_session_updated,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "response.created": self._on_response_created,
            "response.done": self._on_response_done,
            "error": self._on_error,
        }
        try:
            async for raw in self.realtime:
                try:
                    event = json.loads(raw)
                    handler = handlers.get(event.get("type"))
                except (ValueError, AttributeError):
                    self._warn_once("realtime-json", "unparseable realtime frame ignored")
                    continue
                if handler is not None:
                    try:
                        await handler(event)
                    except (KeyError, TypeError, AttributeError) as exc:
                        self._warn_once(f"bad-{event.get('type')}", f"malformed {event.get('type')} ignored: {exc!r}")
                else:
                    logger.debug("realtime %s", event.get("type"))
        except ConnectionClosed:
            pass
        code = self.realtime.close_code
        if code != 1000:
            self.stats.errors += 1
            logger.error(
                "realtime closed the session stream_sid=%s code=%s reason=%s",
                self.stream_sid,
                code,
                self.realtime.close_reason or "-",
            )
        return f"realtime closed ({code})"

    async def _on_session_updated(self, event: dict[str, Any]) -> None:
        audio_input = ((event.get("session") or {}).get("audio") or {}).get("input") or {}
        if "noise_reduction" in audio_input:  # the confirmed state; a tool's switch waits for it
            noise = audio_input["noise_reduction"]
            self._noise_reduction = noise.get("type", "off") if isinstance(noise, dict) else "off"
            for event_id, (mode, confirmed) in list(self._noise_reduction_waiters.items()):
                if mode == self._noise_reduction and not confirmed.done():
                    confirmed.set_result(None)
                    del self._noise_reduction_waiters[event_id]
        if self.session_ready:
            return
        while self.held:  # caller audio held during setup goes first, in order
            await self._send_realtime_text(protocol.input_audio_append(self.held.popleft()))
        self.session_ready = True
        name = self.caller.first_name if self.caller else "there"
        await self._send_realtime(
            protocol.system_message(
                f"The caller, whose first name is {name}, has just been connected. Greet them "
                "by name in one short sentence and ask how you can help."
            )
        )
        await self._request_response()

    async def _on_audio_delta(self, event: dict[str, Any]) -> None:
        """Assistant audio: forward to Twilio unchanged, then a mark (hot path)."""
        if event["response_id"] in self.interrupted_responses:
            return  # generated after the barge-in: the caller must not hear it
        if self._music_task is not None:
            await self._stop_music()  # the first assistant audio ends the waiting music
        payload = event["delta"]
        mark = self.playback.on_audio_sent(event["item_id"], protocol.b64_decoded_len(payload), time.monotonic())
        await self.twilio.send_str(protocol.twilio_media(self.stream_sid, payload))
        await self.twilio.send_str(protocol.twilio_mark(self.stream_sid, mark))
        self.counts.frames_out += 1

    async def _on_audio_done(self, event: dict[str, Any]) -> None:
        self.playback.close_item(event["item_id"])

    async def _on_speech_started(self, event: dict[str, Any]) -> None:
        """Barge-in: the caller spoke while assistant audio is queued at Twilio."""
        if self._music_task is not None:
            await self._stop_music()
        now = time.monotonic()
        if not self.playback.is_playing(now):
            return
        await self.twilio.send_str(protocol.twilio_clear(self.stream_sid))
        cuts = self.playback.barge_in(now)
        self.counts.barge_ins += 1
        if self.active_response is not None:
            self.interrupted_responses.add(self.active_response)
            if not self.config.vad_interrupt_response:
                await self._send_realtime(protocol.response_cancel())
        for cut in cuts:
            await self._send_realtime(protocol.item_truncate(cut.item_id, cut.audio_end_ms))
        self._playback_changed.set()  # cleared: nothing is left to play (a goodbye included)
        logger.debug("barge-in stream_sid=%s truncations=%s", self.stream_sid, cuts)

    async def _on_response_created(self, event: dict[str, Any]) -> None:
        self.active_response = event["response"]["id"]
        if self._goodbye_requested and self._goodbye_response is None and self.create_in_flight:
            self._goodbye_response = self.active_response
        self.create_in_flight = False
        self.counts.responses += 1

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event["response"]
        self.active_response = None
        self.interrupted_responses.discard(response["id"])
        if response["id"] == self._goodbye_response:
            self._goodbye_done.set()
        calls = [item for item in protocol.function_calls(response) if item.get("call_id") not in self.answered_calls]
        if calls:
            self.answered_calls.update(str(item.get("call_id")) for item in calls)
            task = asyncio.create_task(self._run_tools(calls, protocol.spoke(response)), name="tools")
            self._tool_tasks.add(task)
            task.add_done_callback(self._tools_done)
        elif self.tools_running == 0 and self._music_task is not None:
            await self._stop_music()  # the answer after the tools came without audio
        if self.response_wanted and not self.create_in_flight:
            self.response_wanted = False
            await self._request_response()

    async def _on_error(self, event: dict[str, Any]) -> None:
        error = event.get("error") or {}
        code = error.get("code")
        self.counts.realtime_errors += 1
        waiter = self._noise_reduction_waiters.pop(str(error.get("event_id")), None)
        if waiter is not None and not waiter[1].done():
            waiter[1].set_exception(ToolError(f"the service refused the switch: {error.get('message')}"))
        if code == "response_cancel_not_active":
            logger.debug("response.cancel with no active response (harmless)")
            return
        if code == "conversation_already_has_active_response" and self.create_in_flight:
            # A server-side (VAD) response won the race: ask again after it is done.
            self.create_in_flight = False
            self.response_wanted = True
        logger.warning(
            "realtime error stream_sid=%s type=%s code=%s message=%s",
            self.stream_sid,
            error.get("type"),
            code,
            error.get("message"),
        )

    async def _request_response(self) -> None:
        """Send ``response.create`` now, or once the active response is done (the service
        refuses a second one with ``conversation_already_has_active_response``)."""
        if self.active_response is not None or self.create_in_flight:
            self.response_wanted = True
            return
        self.create_in_flight = True
        await self._send_realtime(protocol.response_create())

    # -- tools --

    async def _run_tools(self, calls: list[dict[str, Any]], spoke: bool) -> None:
        """Answer every function call of one response, then ask for exactly one response.

        The calls run concurrently; each gets a ``function_call_output`` (an error output
        when it fails), and only then is ``response.create`` sent (or queued while another
        response is active). After ``end_call`` that response is the goodbye, unless the
        response that called it had already spoken (that was the goodbye).
        """
        self.tools_running += 1
        if self._wait_music and self._music_task is None:
            self._music_task = asyncio.create_task(self._play_wait_music(), name="wait music")
        try:
            outputs = await asyncio.gather(*(self._call_tool(item) for item in calls))
        finally:
            self.tools_running -= 1
            if self.tools_running == 0 and not self.music_playing and self._music_task is not None:
                self._cancel_music()  # done within the threshold: no music at all
        for call_id, output in outputs:
            if call_id:
                text = json.dumps(output, ensure_ascii=False)
                await self._send_realtime(protocol.function_call_output(call_id, text))
        if self.hangup_reason is not None:
            if self._goodbye_requested or self._goodbye_done.is_set():
                return  # the goodbye is already under way: no more answers
            if spoke:
                self._goodbye_done.set()  # "Goodbye!" came with the end_call itself
                return
            self._goodbye_requested = True
        await self._request_response()

    async def _call_tool(self, item: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
        if not isinstance(call_id, str) or not call_id:
            self._warn_once("call_id", "function_call without a call_id cannot be answered")
            return None, {}
        started = time.monotonic()
        output = await tools.run_tool(
            str(name), arguments if isinstance(arguments, str) else "", self.tool_context, self.config.tools
        )
        logger.info(
            "tool %s ok=%s in %.0f ms stream_sid=%s%s",
            name,
            output.get("ok"),
            (time.monotonic() - started) * 1000,
            self.stream_sid,
            "" if output.get("ok") else f" error={output.get('error')}",
        )
        return call_id, output

    def _tools_done(self, task: asyncio.Task[None]) -> None:
        self._tool_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, EndCall):  # EndCall: the realtime pump ends the call too
            logger.error("tool answers failed stream_sid=%s", self.stream_sid, exc_info=exc)

    # CallControl (what tools.py may ask of this call)

    @property
    def noise_reduction(self) -> str:
        """The noise reduction the Realtime service has confirmed (near_field, far_field, off)."""
        return self._noise_reduction

    def end_call(self, reason: str) -> None:
        """Hang up once the goodbye has played (``_hang_up_after_goodbye``)."""
        if self.hangup_reason is None:
            self.hangup_reason = reason
            self._hangup_requested.set()
            logger.info("end_call stream_sid=%s reason=%s", self.stream_sid, reason)

    async def switch_noise_reduction(self, mode: str) -> None:
        """Partial ``session.update`` of ``audio.input.noise_reduction``; returns when
        ``session.updated`` shows ``mode``. Raises ToolError on refusal or no confirmation."""
        event_id = f"event_nr_{len(self._noise_reduction_waiters)}_{time.monotonic_ns()}"
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._noise_reduction_waiters[event_id] = (mode, confirmed)
        try:
            await self._send_realtime(protocol.noise_reduction_update(mode, event_id))
            async with asyncio.timeout(MIC_CONFIRM_TIMEOUT_S):
                await confirmed
        except TimeoutError:
            raise ToolError(f"the service did not confirm the switch within {MIC_CONFIRM_TIMEOUT_S:g} s") from None
        finally:
            self._noise_reduction_waiters.pop(event_id, None)

    # -- waiting music --

    async def _play_wait_music(self) -> None:
        """After ``WAIT_MUSIC_THRESHOLD_MS``, once no assistant audio is queued at the phone:
        ``MUSIC_LEAD_FRAMES`` frames at once (a jitter cushion), then one 20 ms frame per
        period on the monotonic clock. Frames carry no mark: music is not an assistant item.
        Runs until cancelled (safe to cancel)."""
        await asyncio.sleep(self.config.wait_music_threshold_ms / 1000)
        frames = self._wait_music
        pacer = audio.FramePacer()
        while True:
            if not self.playback.is_playing(time.monotonic()):
                count = 1
                if not self.music_playing:
                    self.music_playing = True
                    count = MUSIC_LEAD_FRAMES
                    logger.debug("wait music started stream_sid=%s", self.stream_sid)
                for _ in range(count):
                    payload = frames[self._music_position]
                    self._music_position = (self._music_position + 1) % len(frames)
                    try:
                        await self.twilio.send_str(protocol.twilio_media(self.stream_sid, payload))
                    except ConnectionResetError:
                        return  # the caller hung up; the Twilio pump ends the call
            await pacer.wait()

    def _cancel_music(self) -> bool:
        """Stop sending music; True when some had been sent."""
        was_playing = self.music_playing
        if self._music_task is not None:
            self._music_task.cancel()
            self._music_task = None
        self.music_playing = False
        return was_playing

    async def _stop_music(self) -> None:
        """Stop the music and drop what is still queued at the phone (``clear``). Music only
        plays while no assistant audio is queued, so the clear discards music alone."""
        if self._cancel_music():
            await self.twilio.send_str(protocol.twilio_clear(self.stream_sid))
            logger.debug("wait music stopped stream_sid=%s", self.stream_sid)

    # -- hanging up --

    async def _hang_up_after_goodbye(self) -> str:
        """After ``end_call``: wait for the goodbye to be generated, then for the phone to
        echo its last mark (every byte played, or cleared by a barge-in), then end the call.

        The safety deadline is measured from the goodbye audio (what is still unplayed, plus
        ``GOODBYE_MARGIN_S``), not from the tool call.
        """
        await self._hangup_requested.wait()
        try:
            async with asyncio.timeout(GOODBYE_RESPONSE_TIMEOUT_S):
                await self._goodbye_done.wait()
        except TimeoutError:
            logger.warning(
                "no goodbye within %.0f s of end_call stream_sid=%s", GOODBYE_RESPONSE_TIMEOUT_S, self.stream_sid
            )
        deadline_s = self.playback.unplayed_ms(time.monotonic()) / 1000 + GOODBYE_MARGIN_S
        try:
            async with asyncio.timeout(deadline_s):
                while self.playback.marks_pending:
                    self._playback_changed.clear()
                    await self._playback_changed.wait()
        except TimeoutError:
            logger.warning(
                "goodbye marks not echoed within %.1f s; hanging up stream_sid=%s", deadline_s, self.stream_sid
            )
        return f"end_call: {self.hangup_reason}"

    # -- sending --

    async def _send_realtime(self, event: dict[str, Any]) -> None:
        await self._send_realtime_text(json.dumps(event))

    async def _send_realtime_text(self, text: str) -> None:
        assert self.realtime is not None
        try:
            await self.realtime.send(text)
        except ConnectionClosed:
            raise EndCall("realtime closed") from None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s stream_sid=%s", message, self.stream_sid or "-")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- Entry point ------------------------------------------------------------------------


def startup_warnings(config: Config) -> list[str]:
    """What an operator should know before taking calls."""
    notes = []
    if not config.primary_numbers and not config.secondary_numbers and not config.allow_all_callers:
        notes.append(
            "PRIMARY_USER_PHONE_NUMBERS and SECONDARY_USER_PHONE_NUMBERS are empty: every caller "
            "is refused (set ALLOW_ALL_CALLERS=true to let anyone in)"
        )
    if config.allow_all_callers:
        notes.append("ALLOW_ALL_CALLERS=true: any caller reaches the assistant")
    if not config.twilio_auth_token:
        notes.append(
            "TWILIO_AUTH_TOKEN is not set: webhook and media-stream signatures are not checked, "
            "so anyone who finds this server can open a call"
        )
    return notes


@contextlib.asynccontextmanager
async def serving(config: Config, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the relay on ``host:port`` inside the current event loop (tests, the simulator).

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.
    """
    runner = web.AppRunner(make_app(config), handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()


def main() -> None:
    """``python relay.py``: serve on 0.0.0.0:$PORT until SIGINT/SIGTERM (exit 0)."""
    load_dotenv(Path.cwd() / ".env")  # the working directory's .env; real env vars win
    try:
        config = Config.from_env(os.environ)
        app = make_app(config)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        sys.exit(1)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for note in startup_warnings(config):
        logger.warning("%s", note)
    logger.info(
        "relay listening on 0.0.0.0:%d (realtime %s, model %s)",
        config.port,
        urlsplit(config.realtime_url).netloc,
        config.realtime_model,
    )
    # Modules and config live for the whole process: keep them out of full collections, which
    # otherwise stall every live call's audio for ~10 ms (gc docs: gc.freeze).
    gc.freeze()
    web.run_app(
        app,
        host="0.0.0.0",
        port=config.port,
        shutdown_timeout=5.0,
        print=None,
        access_log_format='%a "%r" %s %Tfs',
    )


if __name__ == "__main__":
    main()

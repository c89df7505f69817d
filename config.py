"""Configuration: ``Config`` from the environment, caller lookup by E.164 number, what callers hear
first, and the warnings an operator sees at startup.

Nothing here touches a socket. ``Config.from_env`` reports every missing or malformed variable in
one ``ConfigError``; tests build ``Config(...)`` directly.
"""

from __future__ import annotations

import enum
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from openai.types.live.built_in_voice import BuiltInVoice as LiveVoice
from openai.types.realtime.realtime_audio_config_output import Voice as RealtimeVoice

from envreader import EnvReader
from mailserver import SmtpServer

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, capable voice assistant on a phone call. Speak naturally and keep "
    "answers short (one to three sentences) unless the caller asks for more; the caller "
    "cannot see anything, so never read out URLs, markdown or lists of symbols. If you are "
    "interrupted, stop and listen. Answer in the caller's language."
)


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


class LogFormat(enum.StrEnum):
    """How log lines are written (``LOG_FORMAT``)."""

    TEXT = "text"
    JSON = "json"
    """One JSON object per line, for log platforms."""


class VoiceApi(enum.StrEnum):
    """The OpenAI voice API that serves the calls (``VOICE_API``)."""

    REALTIME = "realtime"
    """The Realtime API (GA): ``wss://api.openai.com/v1/realtime?model=...``."""
    LIVE = "live"
    """GPT-Live: ``wss://api.openai.com/v1/live/sessions``."""


class PrewarmMode(enum.StrEnum):
    """What the voice webhook does for the call it admits (``PREWARM``; ``bridge.prewarm``)."""

    GREETING = "greeting"
    """Open and configure the model session, and ask for the greeting: its audio waits for the stream."""
    SESSION = "session"
    """Open and configure the model session only."""
    OFF = "off"
    """Nothing: the session is opened when the stream starts."""


class VoicemailMode(enum.StrEnum):
    """What an outbound call does when answering machine detection finds a machine (``VOICEMAIL``)."""

    LEAVE = "leave"
    """Leave one short message about the call's purpose after the greeting, then hang up."""
    HANGUP = "hangup"
    """Hang up at once."""


class EventLoop(enum.StrEnum):
    """The asyncio event loop implementation (``EVENT_LOOP``)."""

    UVLOOP = "uvloop"
    """uvloop where it is installed (a declared dependency except on Windows), else asyncio's own."""
    ASYNCIO = "asyncio"


EAGERNESS = ("low", "medium", "high", "auto")
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
"""``REASONING_EFFORT`` values (``openai.types.realtime.RealtimeReasoningEffort``)."""
TOOL_NAMES = ("end_call", "update_mic_distance", "send_email", "gpt_web_search", "transfer_call")
"""The tools ``TOOLS`` may name, in the order ``tools.TOOLS`` defines them (a test holds the two together)."""
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
REALTIME_VOICES: tuple[str, ...] = next(
    typing.get_args(kind) for kind in typing.get_args(RealtimeVoice) if typing.get_origin(kind) is typing.Literal
)
"""The Realtime API's built-in voices, as the ``openai`` package's types list them (``VOICE``)."""
LIVE_VOICES: tuple[str, ...] = typing.get_args(LiveVoice)
"""GPT-Live's built-in voices (``openai.types.live.BuiltInVoice``)."""
LIVE_IGNORES = ("VAD_TYPE", "VAD_EAGERNESS", "VAD_THRESHOLD", "VAD_PREFIX_PADDING_MS", "VAD_SILENCE_DURATION_MS",
                "VAD_INTERRUPT_RESPONSE", "NOISE_REDUCTION", "TRANSCRIPTION_MODEL", "REASONING_EFFORT",
                "OPENAI_REALTIME_MODEL")
"""Settings GPT-Live has no place for (its model takes its own turns, always transcribes, and has no input
noise reduction or reasoning effort): with ``VOICE_API=live`` they are ignored, with one startup warning."""
MIN_CONSOLE_TOKEN_CHARS = 16
"""``CONSOLE_TOKEN`` guards the console and ``/metrics`` with HTTP Basic auth: a short one is guessable."""
DEFAULT_WAIT_MUSIC = Path(__file__).resolve().parent / "assets" / "wait_music.wav"
_HEADER_TOKEN = re.compile(r"[!#-&(-~]+")
"""Printable ASCII without spaces or quotes: what an ``Authorization: Bearer`` token can carry."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the relay reads from the environment, validated once at startup.

    Build with ``Config.from_env(os.environ)``; tests build it directly.
    """

    openai_api_key: str = field(repr=False)
    host: str = "0.0.0.0"
    """The address ``python relay.py`` listens on (``HOST``, or ``--host``)."""
    port: int = 10000
    max_calls: int = 150
    """Calls one process takes at once; beyond it the webhook answers busy (``capacity.Capacity``)."""
    workers: int = 1
    """Processes serving the port (``workers.py``); each takes ``max_calls`` and drains on its own."""
    event_loop: EventLoop = EventLoop.UVLOOP
    max_queued_audio_s: float = 120.0
    """The most assistant audio queued at the phone ahead of real time; the excess is dropped."""
    prewarm: PrewarmMode = PrewarmMode.GREETING
    """Open the model session at the voice webhook, while the caller hears the welcome (``PREWARM``)."""
    drain_timeout_s: float = 25.0
    """On SIGTERM, how long live calls may go on before each is ended with a spoken line."""
    session_rollover_s: float = 3300.0
    """Seconds into a Realtime session (limit: 60 minutes) after which the call moves to a new one at
    its next quiet moment, the conversation replayed as text; 0: never (the service's expiry still
    rolls the call over)."""
    metrics: bool = False
    """Serve ``/metrics`` (Prometheus text format)."""
    console_token: str | None = field(default=None, repr=False)
    """HTTP Basic auth password (any user name) for the operator pages (``/metrics``)."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) to serve https/wss directly; with ``tls_key_file``."""
    tls_key_file: str | None = None
    ngrok_authtoken: str | None = field(default=None, repr=False)
    """Open an ngrok tunnel at startup and use its URL as ``public_url`` (``tunnel.py``)."""
    ngrok_domain: str | None = None
    """A reserved ngrok domain for the tunnel (e.g. ``relay.ngrok.app``); None: ngrok assigns one."""
    allow_unsigned_webhooks: bool = False
    """Serve networks without their credentials, unchecked (local tests only; refused with a public URL)."""
    public_url: str | None = None
    """Public origin Twilio uses (``https://relay.example.com``); None: the Host header."""
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    realtime_model: str = "gpt-realtime-2.1"
    """The Realtime model (``OPENAI_REALTIME_MODEL``); ``gpt-realtime`` is shut down on 2027-01-20."""
    voice_api: VoiceApi = VoiceApi.REALTIME
    """Which voice API serves the calls (``VOICE_API``)."""
    live_url: str = "wss://api.openai.com/v1/live/sessions"
    live_model: str = "gpt-live-1.1"
    """The GPT-Live model (``OPENAI_LIVE_MODEL``)."""
    live_backend_model: str = "gpt-5.6-luna"
    """The Responses model GPT-Live delegates tool calls to (``LIVE_BACKEND_MODEL``)."""
    ignored_settings: tuple[str, ...] = ()
    """Variables set in the environment that the chosen voice API has no place for (``LIVE_IGNORES``)."""
    reasoning_effort: str | None = None
    """``reasoning.effort`` for a model that reasons (the ``gpt-realtime-2`` family): ``minimal`` to
    ``xhigh``; None: the service's default."""
    voice: str = "cedar"
    instructions: str = DEFAULT_INSTRUCTIONS
    vad_type: VadType = VadType.SEMANTIC
    vad_eagerness: str = "auto"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_interrupt_response: bool = True
    noise_reduction: NoiseReduction = NoiseReduction.NEAR_FIELD
    log_transcripts: bool = True
    """One INFO line per finished turn with what the caller or the assistant said."""
    transcription_model: str | None = "gpt-transcribe"
    """Caller transcription (``audio.input.transcription.model``), for the replay after a session
    rollover and for observers; None: off."""
    twilio_account_sid: str | None = field(default=None, repr=False)
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_api_key: str | None = field(default=None, repr=False)
    twilio_api_secret: str | None = field(default=None, repr=False)
    twilio_api_base_url: str = "https://api.twilio.com"
    """Twilio's REST API (SMS threads and replies); a stand-in's URL in tests."""
    plivo_auth_id: str | None = field(default=None, repr=False)
    plivo_auth_token: str | None = field(default=None, repr=False)
    twilio_phone_number: str | None = None
    """The number outbound Twilio calls come from and transfers show (E.164); None: no outbound Twilio calls."""
    plivo_phone_number: str | None = None
    plivo_api_base_url: str = "https://api.plivo.com"
    """Plivo's REST API origin (outbound calls and transfers); a stand-in's URL in tests."""
    outbound_allowed_numbers: tuple[str, ...] = ()
    """E.164 numbers ``POST /calls`` may dial besides the allowlists' (no open dialer)."""
    outbound_max_per_hour: int = 20
    """Calls placed per hour at most (per process)."""
    voicemail: VoicemailMode = VoicemailMode.LEAVE
    transfer_to: str | None = None
    """Where ``transfer_call`` puts a caller through: E.164 or a ``sip:`` URI; None: no transfers."""
    primary_transfer_to: str | None = None
    """``TRANSFER_TO`` for the primary caller group (None: ``transfer_to``)."""
    secondary_transfer_to: str | None = None
    transfer_whisper: bool = False
    """Warm transfer: the person who picks up hears a one-sentence summary before being connected."""
    telnyx_public_key: str | None = None
    """Telnyx's Ed25519 public key (base64, 32 bytes): turns the Telnyx routes on and checks their webhooks."""
    """Plivo's routes (``/plivo/answer``, ``/plivo/media-stream``) answer only when this is set."""
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
    """The relay's own loggers."""
    log_level_libraries: str | None = None
    """Every other logger (aiohttp, openai...); None: INFO, or ``log_level`` when quieter."""
    log_format: LogFormat = LogFormat.TEXT
    tools: tuple[str, ...] = TOOL_NAMES
    """Tool names offered to the model (``TOOLS``), in ``tools.TOOLS`` order."""
    openai_base_url: str = "https://api.openai.com/v1"
    """REST base URL for the Responses API (web search)."""
    web_search_model: str = "gpt-5.2"
    web_search_timeout_s: float = 15.0
    sms_model: str | None = None
    """Responses model for SMS replies; None: ``web_search_model``."""
    smtp: SmtpServer | None = None
    """Where ``send_email`` sends from; None: email is not configured."""
    primary_to_email: str | None = None
    secondary_to_email: str | None = None
    database_url: str | None = None
    """Where the call records go (``DATABASE_URL``: ``sqlite:///…`` or ``postgresql://…``); None: no records
    (``RECORDS=off``)."""
    record_numbers_full: bool = False
    """Records keep whole numbers (``RECORD_NUMBERS=full``), else masked as in the logs."""
    records_retention_days: int = 30
    daily_budget_usd: float | None = None
    """New calls are refused once today's estimated spend (UTC) reaches this; None: no limit."""
    caller_memory: bool = False
    """A call's instructions get a digest of the caller's last calls and texts from the records."""
    prices_file: str | None = None
    """The price table that reckons each call's cost (None: the bundled ``assets/prices.json``)."""
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
        reader = EnvReader(env, problems)
        default = {f.name: f.default for f in fields(cls)}
        checked = _checked_values(reader, env, default)
        config = cls(**checked, **_operation_values(reader, default), **_voice_values(reader, default),
                     **_network_values(reader, checked["default_region"]))
        signed = [name for name, token in (("TWILIO_AUTH_TOKEN", config.twilio_auth_token),
                                           ("PLIVO_AUTH_TOKEN", config.plivo_auth_token),
                                           ("TELNYX_PUBLIC_KEY", config.telnyx_public_key)) if token]
        public_host = urlsplit(config.public_url or "").hostname
        if config.allow_unsigned_webhooks and public_host and public_host not in LOOPBACK_HOSTS:
            problems.append("ALLOW_UNSIGNED_WEBHOOKS=true is for local tests: it is refused with a public PUBLIC_URL "
                            "(set the networks' credentials instead)")
        if signed and not config.public_url and not config.ngrok_authtoken:
            problems.append(
                f"PUBLIC_URL is required when {' or '.join(signed)} is set: signatures are checked against this "
                "server's public URL, which would otherwise be rebuilt from the Host header a client chooses "
                "(a request signed for another app on the same account would pass); set PUBLIC_URL to this "
                "server's public https origin"
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

    def twilio_rest_credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for Twilio's REST API: the API key and secret when set, else the
        account SID and auth token; None without an account SID (SMS replies are then off)."""
        if not self.twilio_account_sid:
            return None
        if self.twilio_api_key and self.twilio_api_secret:
            return self.twilio_api_key, self.twilio_api_secret
        if self.twilio_auth_token:
            return self.twilio_account_sid, self.twilio_auth_token
        return None

    def realtime_connect_url(self) -> str:
        """``OPENAI_REALTIME_URL`` with ``model`` added to its query unless already there."""
        parts = urlsplit(self.realtime_url)
        query = parse_qsl(parts.query)
        if not any(key == "model" for key, _ in query):
            query.append(("model", self.realtime_model))
        return urlunsplit(parts._replace(query=urlencode(query)))


def _checked_values(reader: EnvReader, env: Mapping[str, str], default: dict[str, Any]) -> dict[str, Any]:
    """The values checked beyond their type: the API key, region, zone, URLs, files and pairs."""
    problems = reader.problems
    api_key = env.get("OPENAI_API_KEY", "").strip()
    if not api_key:
        problems.append("OPENAI_API_KEY is required (your OpenAI API key)")
    elif not _HEADER_TOKEN.fullmatch(api_key):
        problems.append(
            "OPENAI_API_KEY has characters an API key cannot have (quotes, spaces, line breaks or "
            "non-ASCII letters); paste the key alone"
        )
    region = reader.text("DEFAULT_REGION", "US").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        problems.append("DEFAULT_REGION must be an ISO country code such as US or GB")
        region = "US"
    timezone = reader.text("TIMEZONE", "") or None
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append("TIMEZONE must be an IANA zone such as Europe/Paris")
    public_url = reader.text("PUBLIC_URL", "").rstrip("/") or None
    public = urlsplit(public_url or "")
    if public_url and public.scheme not in ("http", "https"):
        problems.append("PUBLIC_URL must start with https:// (or http:// for local tests)")
    elif public_url and public.scheme == "http" and public.hostname not in LOOPBACK_HOSTS:
        problems.append("PUBLIC_URL must be https:// for a public host (plain http:// is for loopback tests: "
                        "127.0.0.1, localhost, ::1)")
    realtime_url = reader.url("OPENAI_REALTIME_URL", default["realtime_url"], ("ws", "wss"),
                              "OPENAI_REALTIME_URL must be a ws:// or wss:// URL")
    live_url = reader.url("OPENAI_LIVE_URL", default["live_url"], ("ws", "wss"),
                          "OPENAI_LIVE_URL must be a ws:// or wss:// URL")
    transcription: str | None = reader.text("TRANSCRIPTION_MODEL", default["transcription_model"] or "")
    if transcription and transcription.lower() in ("none", "off"):
        transcription = None
    base_url = reader.url("OPENAI_BASE_URL", default["openai_base_url"], ("http", "https"),
                          "OPENAI_BASE_URL must be an http(s):// URL")
    twilio_api = reader.url("TWILIO_API_BASE_URL", default["twilio_api_base_url"], ("http", "https"),
                            "TWILIO_API_BASE_URL must be an http(s):// URL")
    if bool(reader.text("TWILIO_API_KEY", "")) != bool(reader.text("TWILIO_API_SECRET", "")):
        problems.append("TWILIO_API_KEY and TWILIO_API_SECRET go together: set both or neither")
    tls_cert = reader.text("TLS_CERT_FILE", "") or None
    tls_key = reader.text("TLS_KEY_FILE", "") or None
    if bool(tls_cert) != bool(tls_key):
        problems.append("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
    for name, path in (("TLS_CERT_FILE", tls_cert), ("TLS_KEY_FILE", tls_key)):
        if path and not Path(path).is_file():
            problems.append(f"{name} names no readable file")
    if reader.text("NGROK_AUTHTOKEN", "") and reader.text("WORKERS", "1") not in ("", "1"):
        problems.append("NGROK_AUTHTOKEN works with WORKERS=1 only (one tunnel per process)")
    music_file: str | None = reader.text("WAIT_MUSIC_FILE", default["wait_music_file"])
    if music_file and music_file.lower() in ("none", "off"):
        music_file = None
    return {
        "openai_api_key": api_key, "default_region": region, "timezone": timezone, "public_url": public_url,
        "realtime_url": realtime_url, "live_url": live_url, "transcription_model": transcription or None,
        "openai_base_url": base_url,
        "twilio_api_base_url": twilio_api, "tls_cert_file": tls_cert, "tls_key_file": tls_key,
        "wait_music_file": music_file,
    }


def _operation_values(reader: EnvReader, default: dict[str, Any]) -> dict[str, Any]:
    """How the process runs: port, capacity, drain, rollover, operator pages, logs, music levels."""
    return {
        "host": reader.text("HOST", default["host"]),
        "port": reader.integer("PORT", default["port"], 1, 65535),
        "max_calls": reader.integer("MAX_CALLS", default["max_calls"], 1, 100_000),
        "workers": reader.integer("WORKERS", default["workers"], 1, 256),
        "event_loop": reader.choice("EVENT_LOOP", EventLoop, default["event_loop"]),
        "drain_timeout_s": reader.number("DRAIN_TIMEOUT_S", default["drain_timeout_s"], 0.0, 3600.0),
        "prewarm": reader.choice("PREWARM", PrewarmMode, default["prewarm"]),
        "max_queued_audio_s": reader.number("MAX_QUEUED_AUDIO_S", default["max_queued_audio_s"], 5.0, 3600.0),
        "session_rollover_s": reader.number("SESSION_ROLLOVER_S", default["session_rollover_s"], 0.0, 3540.0),
        "metrics": reader.boolean("METRICS", default["metrics"]),
        "console_token": reader.secret("CONSOLE_TOKEN", MIN_CONSOLE_TOKEN_CHARS),
        "ngrok_authtoken": reader.text("NGROK_AUTHTOKEN", "") or None,
        "ngrok_domain": reader.text("NGROK_DOMAIN", "") or None,
        "log_level": reader.choice_text("LOG_LEVEL", LEVELS, "INFO", upper=True),
        "log_level_libraries": reader.choice_text("LOG_LEVEL_LIBRARIES", LEVELS, "", upper=True) or None,
        "log_format": reader.choice("LOG_FORMAT", LogFormat, default["log_format"]),
        "wait_music_threshold_ms": reader.integer(
            "WAIT_MUSIC_THRESHOLD_MS", default["wait_music_threshold_ms"], 0, 60_000
        ),
        "wait_music_volume": reader.number("WAIT_MUSIC_VOLUME", default["wait_music_volume"], 0.0, 1.0),
    }


def _voice_values(reader: EnvReader, default: dict[str, Any]) -> dict[str, Any]:
    """The voice model and what it is told and offered: API, model, voice, prompt, VAD, tools."""
    api = reader.choice("VOICE_API", VoiceApi, default["voice_api"])
    live = api is VoiceApi.LIVE
    return {
        "realtime_model": reader.text("OPENAI_REALTIME_MODEL", default["realtime_model"]),
        "voice_api": api,
        "live_model": reader.text("OPENAI_LIVE_MODEL", default["live_model"]),
        "live_backend_model": reader.text("LIVE_BACKEND_MODEL", default["live_backend_model"]),
        "ignored_settings": tuple(name for name in LIVE_IGNORES if reader.text(name, "")) if live else (),
        "reasoning_effort": reader.choice_text("REASONING_EFFORT", REASONING_EFFORTS, "") or None,
        "voice": reader.choice_text("VOICE", LIVE_VOICES if live else REALTIME_VOICES, default["voice"]),
        "instructions": reader.text("INSTRUCTIONS", DEFAULT_INSTRUCTIONS),
        "vad_type": reader.choice("VAD_TYPE", VadType, default["vad_type"]),
        "vad_eagerness": reader.choice_text("VAD_EAGERNESS", EAGERNESS, default["vad_eagerness"]),
        "vad_threshold": reader.number("VAD_THRESHOLD", default["vad_threshold"], 0.0, 1.0),
        "vad_prefix_padding_ms": reader.integer("VAD_PREFIX_PADDING_MS", default["vad_prefix_padding_ms"], 0, 10_000),
        "vad_silence_duration_ms": reader.integer(
            "VAD_SILENCE_DURATION_MS", default["vad_silence_duration_ms"], 0, 10_000
        ),
        "vad_interrupt_response": reader.boolean("VAD_INTERRUPT_RESPONSE", default["vad_interrupt_response"]),
        "noise_reduction": reader.choice("NOISE_REDUCTION", NoiseReduction, default["noise_reduction"]),
        "log_transcripts": reader.boolean("LOG_TRANSCRIPTS", default["log_transcripts"]),
        "tools": reader.names("TOOLS", TOOL_NAMES, default["tools"], "tool name"),
        "web_search_model": reader.text("WEB_SEARCH_MODEL", default["web_search_model"]),
        "web_search_timeout_s": reader.number("WEB_SEARCH_TIMEOUT_S", default["web_search_timeout_s"], 1.0, 120.0),
        "sms_model": reader.text("SMS_MODEL", "") or None,
        "prices_file": reader.text("PRICES_FILE", "") or None,
        **_records_values(reader),
    }


def _records_values(reader: EnvReader) -> dict[str, Any]:
    """The call records, the daily budget and the callers' memory."""
    url = reader.text("DATABASE_URL", "sqlite:///relay.db")
    sqlite_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if sqlite_file in ("", ":memory:") or (
            sqlite_file is None and not url.startswith(("postgres://", "postgresql://", "postgresql+asyncpg://"))):
        reader.problems.append("DATABASE_URL must be sqlite:///<file> or postgresql://user:password@host/db")
    budget = reader.number("DAILY_BUDGET_USD", 0.0, 0.0, 1_000_000.0)
    return {
        "database_url": url if reader.boolean("RECORDS", True) else None,
        "record_numbers_full": reader.choice_text("RECORD_NUMBERS", ("masked", "full"), "masked") == "full",
        "records_retention_days": reader.integer("RECORDS_RETENTION_DAYS", 30, 1, 36_500),
        "daily_budget_usd": budget or None,
        "caller_memory": reader.boolean("CALLER_MEMORY", False),
    }


def _network_values(reader: EnvReader, region: str) -> dict[str, Any]:
    """The phone networks' credentials, the callers on the allowlists, and where email goes."""
    return {
        "twilio_account_sid": reader.text("TWILIO_ACCOUNT_SID", "") or None,
        "twilio_auth_token": reader.text("TWILIO_AUTH_TOKEN", "") or None,
        "twilio_api_key": reader.text("TWILIO_API_KEY", "") or None,
        "twilio_api_secret": reader.text("TWILIO_API_SECRET", "") or None,
        "plivo_auth_id": reader.text("PLIVO_AUTH_ID", "") or None,
        "plivo_auth_token": reader.text("PLIVO_AUTH_TOKEN", "") or None,
        "telnyx_public_key": reader.ed25519_key("TELNYX_PUBLIC_KEY"),
        **_outbound_values(reader, region),
        "primary_numbers": reader.phone_list("PRIMARY_USER_PHONE_NUMBERS", region),
        "secondary_numbers": reader.phone_list("SECONDARY_USER_PHONE_NUMBERS", region),
        "primary_first_name": reader.text("PRIMARY_USER_FIRST_NAME", "") or None,
        "secondary_first_name": reader.text("SECONDARY_USER_FIRST_NAME", "") or None,
        "allow_all_callers": reader.boolean("ALLOW_ALL_CALLERS", False),
        "allow_unsigned_webhooks": reader.boolean("ALLOW_UNSIGNED_WEBHOOKS", False),
        "smtp": reader.smtp_server(),
        "primary_to_email": reader.email("PRIMARY_TO_EMAIL"),
        "secondary_to_email": reader.email("SECONDARY_TO_EMAIL"),
    }


def _outbound_values(reader: EnvReader, region: str) -> dict[str, Any]:
    """Outbound calls and transfers: the numbers calls come from, where they may go, and to whom a caller is
    put through."""
    return {
        "twilio_phone_number": reader.phone("TWILIO_PHONE_NUMBER", region),
        "plivo_phone_number": reader.phone("PLIVO_PHONE_NUMBER", region),
        "plivo_api_base_url": reader.url("PLIVO_API_BASE_URL", "https://api.plivo.com", ("http", "https"),
                                         "PLIVO_API_BASE_URL must be an http(s):// origin"),
        "outbound_allowed_numbers": reader.phone_list("OUTBOUND_ALLOWED_NUMBERS", region),
        "outbound_max_per_hour": reader.integer("OUTBOUND_MAX_PER_HOUR", 20, 0, 10_000),
        "voicemail": reader.choice("VOICEMAIL", VoicemailMode, VoicemailMode.LEAVE),
        "transfer_to": reader.destination("TRANSFER_TO", region),
        "primary_transfer_to": reader.destination("PRIMARY_TRANSFER_TO", region),
        "secondary_transfer_to": reader.destination("SECONDARY_TRANSFER_TO", region),
        "transfer_whisper": reader.boolean("TRANSFER_WHISPER", False),
    }


def startup_warnings(config: Config) -> list[str]:
    """What an operator should know before taking calls, one sentence each."""
    notes = []
    if not config.primary_numbers and not config.secondary_numbers and not config.allow_all_callers:
        notes.append(
            "PRIMARY_USER_PHONE_NUMBERS and SECONDARY_USER_PHONE_NUMBERS are empty: every caller "
            "is refused (set ALLOW_ALL_CALLERS=true to let anyone in)"
        )
    if config.workers > 1 and config.prewarm is not PrewarmMode.OFF:
        notes.append(
            f"WORKERS={config.workers} with PREWARM={config.prewarm}: a stream lands on any worker, so about "
            f"{(config.workers - 1) * 100 // config.workers}% of calls miss the session their webhook pre-warmed "
            "(they open their own; the other is closed when its token expires, 30 s later)"
        )
    if config.allow_all_callers:
        notes.append("ALLOW_ALL_CALLERS=true: any caller reaches the assistant")
    if config.workers > 1 and (config.twilio_phone_number or config.plivo_phone_number):
        notes.append(f"WORKERS={config.workers} with TWILIO_PHONE_NUMBER or PLIVO_PHONE_NUMBER: a placed call's "
                     "stream and callbacks may reach a worker that did not place it, which refuses the stream "
                     "(place calls from a relay with WORKERS=1)")
    transfers = config.transfer_to or config.primary_transfer_to or config.secondary_transfer_to
    if transfers and not (config.twilio_rest_credentials() or (config.plivo_auth_id and config.plivo_auth_token)):
        notes.append("TRANSFER_TO is set but no network has REST credentials (TWILIO_ACCOUNT_SID with its token, or "
                     "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN): transfer_call is not offered")
    if (config.twilio_phone_number or config.plivo_phone_number) and not config.console_token:
        notes.append("TWILIO_PHONE_NUMBER or PLIVO_PHONE_NUMBER is set without CONSOLE_TOKEN: POST /calls is off "
                     "(it is served behind the operator's token only)")
    if config.caller_memory and config.database_url is None:
        notes.append("CALLER_MEMORY=true with RECORDS=off: there are no records to remember calls from")
    if config.metrics and not config.console_token:
        notes.append("METRICS=true without CONSOLE_TOKEN: /metrics is public (set CONSOLE_TOKEN to put it behind "
                     "a password)")
    if config.allow_unsigned_webhooks:
        notes.append(
            "ALLOW_UNSIGNED_WEBHOOKS=true: networks without credentials are served with no signature check, "
            "so anyone who reaches this server can open a call (local tests only)"
        )
    elif not (config.twilio_auth_token or config.plivo_auth_token or config.telnyx_public_key):
        notes.append(
            "no phone network is on: set TWILIO_AUTH_TOKEN, PLIVO_AUTH_TOKEN or TELNYX_PUBLIC_KEY (their routes "
            "answer 404 until then), or ALLOW_UNSIGNED_WEBHOOKS=true for local tests"
        )
    return notes


"""Log redaction and the console log format: no secret from the environment reaches the console.

``patch_logs()`` (installed first thing by ``python relay.py`` and ``python simulate.py``) wraps
``sys.stdout`` and ``sys.stderr`` so that every write (``print``, direct writes, every logging
handler on them) has the values of the secret variables replaced by ``[secure]``;
``LogFormatter`` redacts each record's message, arguments, traceback and stack before formatting
it as text or as one JSON object per line (where the stream would no longer recognise an escaped
secret). ``configure_logging`` sets the levels: the relay's own loggers at ``LOG_LEVEL``, every
library at ``LOG_LEVEL_LIBRARIES``.

Not covered (say so rather than pretend): bytes written to ``sys.stdout.buffer`` or to file
descriptors directly, and a secret split across two separate writes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

SECRET_ENV_KEYS = (
    "OPENAI_API_KEY",
    "NGROK_AUTHTOKEN",
    "CONSOLE_TOKEN",
    "SMTP_PASS",
    "SMTP_USER",
    "SENDER_FROM_EMAIL",
    "PRIMARY_TO_EMAIL",
    "SECONDARY_TO_EMAIL",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_API_KEY",
    "TWILIO_API_SECRET",
    "PLIVO_AUTH_ID",
    "PLIVO_AUTH_TOKEN",
    "SECRET_ENV_VAR",
)
"""Variables whose values are always redacted; ``REDACT_ENV_KEYS`` names more."""
MASK = "[secure]"
MIN_SECRET_CHARS = 4
"""Shorter values are never used as patterns: ``on`` or ``25`` would mask half the log."""
OWN_LOGGERS = (
    "relay", "bridge", "phones", "model", "ops", "tools", "config", "simulate", "standins",
)
"""The relay's loggers, set to ``LOG_LEVEL``; every other logger is a library's."""


def secret_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """``SECRET_ENV_KEYS`` plus the comma-separated names in ``REDACT_ENV_KEYS``."""
    extra = [name.strip() for name in env.get("REDACT_ENV_KEYS", "").split(",") if name.strip()]
    return (*SECRET_ENV_KEYS, *extra)


def secret_values(keys: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """The values to mask: each variable's value, and each item of a comma-separated one
    (``PRIMARY_TO_EMAIL=a@x.com,b@y.com``), stripped; blank and short (< 4 characters) values
    skipped; longest first, so a secret that contains another is masked whole."""
    found: set[str] = set()
    for key in keys:
        raw = env.get(key) or ""
        for value in (raw, *raw.split(",")):
            value = value.strip()
            if len(value) >= MIN_SECRET_CHARS:
                found.add(value)
    return sorted(found, key=lambda value: (-len(value), value))


class Redactor:
    """Replaces every occurrence of the secret values with ``[secure]``: one compiled alternation,
    one pass over the text, however many secrets."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def __bool__(self) -> bool:
        return self._pattern is not None


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written and passes it on; everything else (``fileno``,
    ``encoding``, ``isatty``, ``buffer``...) is the wrapped stream's."""

    def __init__(self, stream: TextIO, redact: Redactor) -> None:
        self.stream = stream
        self.redact = redact

    def write(self, text: str) -> int:
        self.stream.write(self.redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def patch_logs(keys: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Redact secret values from ``sys.stdout`` and ``sys.stderr`` from now on.

    Args:
        keys: the variables whose values are secret; None: ``SECRET_ENV_KEYS`` and the names in
            ``REDACT_ENV_KEYS``.
        env: where the values are read (default ``os.environ``).

    Returns:
        A function that puts the original streams back (in ``sys`` and in every root logging
        handler that was switched to the redacting ones).
    """
    env = os.environ if env is None else env
    redact = Redactor(secret_values(secret_keys(env) if keys is None else keys, env))
    originals = {"stdout": sys.stdout, "stderr": sys.stderr}
    wrapped = {name: RedactingStream(stream, redact) for name, stream in originals.items()}
    sys.stdout, sys.stderr = wrapped["stdout"], wrapped["stderr"]
    switched: list[tuple[logging.StreamHandler[Any], TextIO]] = []
    for handler in logging.root.handlers:
        if isinstance(handler, logging.StreamHandler):
            for name, stream in originals.items():
                if handler.stream is stream:
                    handler.setStream(wrapped[name])
                    switched.append((handler, stream))

    def restore() -> None:
        sys.stdout, sys.stderr = originals["stdout"], originals["stderr"]
        for handler, stream in switched:
            handler.setStream(stream)

    return restore


class LogFormatter(logging.Formatter):
    """The console format, text (``2026-11-22 10:00:00,123 INFO bridge: call started ...``) or
    JSON (one object per line: ``time``, ``level``, ``logger``, ``message``, and ``stream_sid`` /
    ``call_sid`` when the record carries them, ``exc_info`` / ``stack_info`` when present), with
    every field redacted before it is encoded."""

    TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, json_lines: bool = False, redact: Redactor | None = None) -> None:
        super().__init__(self.TEXT)
        self.json_lines = json_lines
        self.redact = redact or Redactor(())

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            return self.redact(super().format(record))
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for key in ("stream_sid", "call_sid"):
            value = getattr(record, key, None)
            if value:
                out[key] = self.redact(str(value))
        if record.exc_info:
            out["exc_info"] = self.redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack_info"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(
    level: str,
    libraries_level: str | None = None,
    json_lines: bool = False,
    redact: Redactor | None = None,
) -> None:
    """One handler on the root logger, writing to ``sys.stderr`` with ``LogFormatter``.

    Args:
        level: ``LOG_LEVEL``, for the relay's own loggers (``OWN_LOGGERS``).
        libraries_level: ``LOG_LEVEL_LIBRARIES``, for every other logger (aiohttp,
            openai, httpx2, twilio...); None: INFO, or ``level`` when that is quieter. Libraries'
            DEBUG lines carry whole frames and headers, so they are off unless asked for.
        json_lines: ``LOG_FORMAT=json``.
        redact: masks secret values in every record.
    """
    if libraries_level is None:
        libraries_level = max(logging.INFO, logging.getLevelName(level))
    stream = sys.stderr
    if redact and isinstance(stream, RedactingStream):
        stream = stream.stream  # the formatter masks every field already: once per line is enough
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter(json_lines, redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(libraries_level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def redaction_disabled(env: Mapping[str, str]) -> bool:
    """``DISABLE_LOG_REDACTION`` is set to a true value."""
    return env.get("DISABLE_LOG_REDACTION", "").strip().lower() in ("1", "true", "yes", "on")


def install(env: Mapping[str, str] | None = None) -> Redactor | None:
    """Start redacting ``sys.stdout`` and ``sys.stderr`` (``patch_logs``) unless
    ``DISABLE_LOG_REDACTION`` is true; call it before anything is printed or logged.

    Returns:
        The redactor for ``configure_logging``; None when redaction is turned off (the caller
        logs a warning once logging is configured).
    """
    env = os.environ if env is None else env
    if redaction_disabled(env):
        return None
    patch_logs(env=env)
    return Redactor(secret_values(secret_keys(env), env))


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for one call: every line ends with ``stream_sid=...``, and records
    carry ``stream_sid`` and ``call_sid`` as attributes for structured log formats."""

    def __init__(self, logger: logging.Logger, stream_sid: str = "", call_sid: str = "") -> None:
        super().__init__(logger, {"stream_sid": stream_sid, "call_sid": call_sid})
        self._held: dict[str, list[float]] = {}
        """Per kind of line: [when the next one may be written, how many were held back]."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = self.extra
        return f"{msg} stream_sid={self.extra['stream_sid'] or '-'}", kwargs

    def once_a_second(self, level: int, kind: str, msg: str, *args: Any) -> None:
        """Log at most one line of ``kind`` per second for this call; the next line written says
        how many were held back. A peer can send events far faster than anyone can read them."""
        if not self.isEnabledFor(level):
            return
        now = time.monotonic()
        held = self._held.get(kind)
        if held is not None and now < held[0]:
            held[1] += 1
            return
        if held is not None and held[1]:
            msg, args = msg + " (%d more held back in the last second)", (*args, int(held[1]))
        self._held[kind] = [now + 1.0, 0]
        self.log(level, msg, *args)


def describe(exc: BaseException) -> str:
    """An exception for the log: its type, and its message when it has one (never a traceback)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

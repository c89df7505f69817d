"""Typed environment variables: ``EnvReader`` reads text, numbers, choices, URLs, phone lists and the SMTP
settings, collecting every problem in one list; ``to_e164`` normalises phone numbers.

Nothing here knows which variables the relay has (``config`` does) or touches a socket.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import phonenumbers

from mailserver import WELL_KNOWN_SMTP, SmtpSecurity, SmtpServer

_EMAIL = re.compile(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+")
_SIP_URI = re.compile(r"sips?:[^@\s<>\"'&]+@[A-Za-z0-9.\-\[\]:]+(;[^\s<>\"'&]*)?", re.IGNORECASE)
_E = TypeVar("_E", bound=enum.StrEnum)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvReader:
    """Reads typed values from the environment, collecting problems instead of stopping at the first:
    each method returns the default (or None) for a malformed value and appends one sentence naming the
    variable and what is allowed to ``problems``."""

    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        self.env = env
        self.problems = problems

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name)
        return default if value is None or not value.strip() else value.strip()

    def ed25519_key(self, name: str) -> str | None:
        value = self.text(name, "") or None
        try:
            if value is not None and len(base64.b64decode(value, validate=True)) != 32:
                raise ValueError
        except ValueError:
            self.problems.append(f"{name} must be a base64 Ed25519 public key (32 bytes), as Telnyx shows it")
            return None
        return value

    def secret(self, name: str, min_chars: int) -> str | None:
        value = self.text(name, "") or None
        if value is not None and len(value) < min_chars:
            self.problems.append(f"{name} must be at least {min_chars} characters (it is a password)")
            return None
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...], problem: str) -> str:
        value = self.text(name, default).rstrip("/") if "http" in schemes else self.text(name, default)
        if urlsplit(value).scheme not in schemes:
            self.problems.append(problem)
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            self.problems.append(f"{name} must be a whole number from {low} to {high}")
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
            self.problems.append(f"{name} must be a number from {low:g} to {high:g}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None or not raw.strip():  # blank means "use the default", as for text
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.problems.append(f"{name} must be true or false")
        return default

    def choice(self, name: str, kind: type[_E], default: _E) -> _E:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            return kind(raw.lower())
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            self.problems.append(f"{name} must be one of {allowed}")
            return default

    def choice_text(self, name: str, allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        raw = self.text(name, "")
        value = raw.upper() if upper else raw.lower()
        if not raw:
            return default
        if value not in allowed:
            self.problems.append(f"{name} must be one of {', '.join(allowed)}")
            return default
        return value

    def names(self, name: str, known: tuple[str, ...], default: tuple[str, ...], what: str = "name") -> tuple[str, ...]:
        """A comma-separated subset of ``known`` (``none``: empty), in ``known``'s order; ``what`` names an
        item in the problem (``tool name``)."""
        raw = self.text(name, "")
        if not raw:
            return default
        if raw.lower() == "none":
            return ()
        wanted = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = sorted(wanted - set(known))
        if unknown:
            self.problems.append(
                f"{name} has {len(unknown)} unknown {what}(s); known: {', '.join(known)}, or none"
            )
        return tuple(item for item in known if item in wanted)

    def email(self, name: str) -> str | None:
        raw = self.text(name, "")
        if not raw:
            return None
        if not _EMAIL.fullmatch(raw):
            self.problems.append(f"{name} must be an email address such as name@example.com")
            return None
        return raw

    def smtp_server(self) -> SmtpServer | None:
        """``SMTP_*`` and ``SENDER_FROM_EMAIL``: a service id (``gmail``) or an explicit host;
        explicit ``SMTP_HOST``/``SMTP_PORT``/``SMTP_SECURITY`` override the service's."""
        service = self.text("SMTP_NODEMAILER_SERVICE_ID", "").lower()
        known = WELL_KNOWN_SMTP.get(service)
        if service and known is None:
            self.problems.append(
                f"SMTP_NODEMAILER_SERVICE_ID is not a known service ({', '.join(WELL_KNOWN_SMTP)}); "
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

    def phone(self, name: str, region: str) -> str | None:
        """One phone number as E.164; None when unset (or malformed, with a problem)."""
        raw = self.text(name, "")
        number = to_e164(raw, region) if raw else None
        if raw and number is None:
            self.problems.append(f"{name} is not a valid phone number")
        return number

    def destination(self, name: str, region: str) -> str | None:
        """A number (E.164) or a ``sip:`` URI to put a call through to; None when unset (or malformed)."""
        raw = self.text(name, "")
        if raw.lower().startswith("sip:"):
            if _SIP_URI.fullmatch(raw):
                return raw
            self.problems.append(f"{name} must be a phone number or a sip:user@host URI")
            return None
        return self.phone(name, region)

    def phone_list(self, name: str, region: str) -> tuple[str, ...]:
        numbers = []
        for position, raw in enumerate(self.text(name, "").split(","), start=1):
            if not raw.strip():
                continue
            number = to_e164(raw, region)
            if number is None:
                self.problems.append(f"{name} item {position} is not a valid phone number")
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

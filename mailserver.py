"""Where and how email is sent: an SMTP server's settings, and the well-known services by id.

Read from the environment by ``config`` (``SMTP_*``), used by ``tools.send_email``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SmtpSecurity(enum.StrEnum):
    """How the SMTP connection is protected."""

    SSL = "ssl"
    """Implicit TLS from the first byte (port 465)."""
    STARTTLS = "starttls"
    """Plain connect, then STARTTLS before login (port 587); refused if the server lacks it."""
    NONE = "none"
    """No TLS: only for a relay on the same host or a test server."""


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to send email."""

    host: str
    port: int
    security: SmtpSecurity
    sender: str
    """The From address (``SENDER_FROM_EMAIL``)."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)


WELL_KNOWN_SMTP: dict[str, tuple[str, int, SmtpSecurity]] = {
    # Nodemailer's well-known services (lib/well-known/services.json), ids and aliases in
    # lower case. Port 587 entries are sent with STARTTLS required.
    "gmail": ("smtp.gmail.com", 465, SmtpSecurity.SSL),
    "googlemail": ("smtp.gmail.com", 465, SmtpSecurity.SSL),
    "proton": ("smtp.protonmail.ch", 587, SmtpSecurity.STARTTLS),
    "protonmail": ("smtp.protonmail.ch", 587, SmtpSecurity.STARTTLS),
    "outlook": ("smtp-mail.outlook.com", 587, SmtpSecurity.STARTTLS),
    "hotmail": ("smtp-mail.outlook.com", 587, SmtpSecurity.STARTTLS),
    "outlook365": ("smtp.office365.com", 587, SmtpSecurity.STARTTLS),
    "yahoo": ("smtp.mail.yahoo.com", 465, SmtpSecurity.SSL),
    "icloud": ("smtp.mail.me.com", 587, SmtpSecurity.STARTTLS),
    "zoho": ("smtp.zoho.com", 465, SmtpSecurity.SSL),
    "fastmail": ("smtp.fastmail.com", 465, SmtpSecurity.SSL),
    "aol": ("smtp.aol.com", 587, SmtpSecurity.STARTTLS),
    "gmx": ("mail.gmx.com", 587, SmtpSecurity.STARTTLS),
    "yandex": ("smtp.yandex.ru", 465, SmtpSecurity.SSL),
    "sendgrid": ("smtp.sendgrid.net", 587, SmtpSecurity.STARTTLS),
    "mailgun": ("smtp.mailgun.org", 465, SmtpSecurity.SSL),
    "ses": ("email-smtp.us-east-1.amazonaws.com", 465, SmtpSecurity.SSL),
}
"""Service id -> (host, port, security)."""

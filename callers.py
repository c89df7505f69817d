"""The callers: who may call (the allowlists, by E.164 number), how a number is shown in logs, and what a
caller hears before the assistant (the welcome, or why the call is refused)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from config import Config
from envreader import to_e164


def mask_number(number: str) -> str:
    """A phone number fit for logs: the last four digits only (``+*******0100``)."""
    return number[:1] + "*" * max(len(number) - 5, 0) + number[-4:] if len(number) > 4 else "****"


class CallerGroup(enum.StrEnum):
    """Which allowlist a caller is on."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
    ANYONE = "anyone"
    """Not listed, but let in by ``ALLOW_ALL_CALLERS``."""


@dataclass(frozen=True, slots=True)
class AllowedCaller:
    """A caller the allowlists let in."""

    number: str
    """E.164."""
    group: CallerGroup
    first_name: str
    """The group's first name, or "legend" when unset."""


def find_caller(config: Config, raw_number: str | None) -> AllowedCaller | None:
    """The allowed caller for a number, or None when the line is restricted for it.

    Args:
        config: the allowlists, names and ``DEFAULT_REGION``.
        raw_number: the number as the phone network reports it (any format; None or
            ``anonymous`` match no list).

    With both allowlists empty everyone is refused unless ``ALLOW_ALL_CALLERS`` is set.
    """
    number = to_e164(raw_number or "", config.default_region)
    if number is not None and number in config.primary_numbers:
        return AllowedCaller(number, CallerGroup.PRIMARY, config.primary_first_name or "legend")
    if number is not None and number in config.secondary_numbers:
        return AllowedCaller(number, CallerGroup.SECONDARY, config.secondary_first_name or "legend")
    if config.allow_all_callers:
        return AllowedCaller(number or "unknown", CallerGroup.ANYONE, "legend")
    return None



RESTRICTED_MESSAGE = "Sorry, this line is restricted. Goodbye."
"""What a caller on neither allowlist hears before the hang-up."""
ADMITTED_MESSAGE = "This call is already connected. Goodbye."
"""The answer to a repeated webhook for a call whose stream has started (a replayed request)."""
BUSY_MESSAGE = "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."
"""What a caller hears when the process is at ``MAX_CALLS``."""
DRAINING_MESSAGE = "Sorry, this line is restarting. Please call again in a minute. Goodbye."
"""What a new caller hears while the process drains for a restart."""


def find_callee(config: Config, number: str) -> AllowedCaller | None:
    """Whom ``POST /calls`` may dial: a number on an allowlist (with its group's first name, "" when unset) or
    in ``OUTBOUND_ALLOWED_NUMBERS`` (group ``anyone``, no name); None for any other. ``ALLOW_ALL_CALLERS``
    opens no dialer.

    Args:
        number: E.164.
    """
    if number in config.primary_numbers:
        return AllowedCaller(number, CallerGroup.PRIMARY, config.primary_first_name or "")
    if number in config.secondary_numbers:
        return AllowedCaller(number, CallerGroup.SECONDARY, config.secondary_first_name or "")
    if number in config.outbound_allowed_numbers:
        return AllowedCaller(number, CallerGroup.ANYONE, "")
    return None


def greeting_for(when: datetime) -> str:
    """ "Good morning" (before 12:00), "Good afternoon" (before 18:00) or "Good evening"."""
    if when.hour < 12:
        return "Good morning"
    return "Good afternoon" if when.hour < 18 else "Good evening"


def welcome_message(config: Config, caller: AllowedCaller, now: datetime | None = None) -> str:
    """What an allowed caller hears before the assistant: ``"Good afternoon, Jordan. Connecting you
    to your assistant."`` in ``TIMEZONE`` (the server's local time when unset)."""
    if now is None:
        now = datetime.now(ZoneInfo(config.timezone) if config.timezone else None)
    return f"{greeting_for(now)}, {caller.first_name}. Connecting you to your assistant."


def email_for(config: Config, group: CallerGroup) -> str | None:
    """The ``send_email`` recipient for a caller group (``*_TO_EMAIL``); None for a group
    with none, and for callers let in by ``ALLOW_ALL_CALLERS``."""
    if group is CallerGroup.PRIMARY:
        return config.primary_to_email
    if group is CallerGroup.SECONDARY:
        return config.secondary_to_email
    return None



def transfer_for(config: Config, group: CallerGroup) -> str | None:
    """Where ``transfer_call`` puts a caller of ``group`` through: ``PRIMARY_TRANSFER_TO`` or
    ``SECONDARY_TRANSFER_TO`` when set, else ``TRANSFER_TO``; None: no transfers for this caller."""
    if group is CallerGroup.PRIMARY and config.primary_transfer_to:
        return config.primary_transfer_to
    if group is CallerGroup.SECONDARY and config.secondary_transfer_to:
        return config.secondary_transfer_to
    return config.transfer_to

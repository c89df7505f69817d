"""``DAILY_BUDGET_USD``: today's estimated spend (UTC days) against a limit. Fed by every call's end (its
``cost_usd``) and, with the records on, refreshed from them each minute, so every worker and host sharing the
database counts every call. Once it is reached, new calls are told the assistant is unavailable today
(``routes.calls``) and outbound calls are refused, until midnight UTC."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from bridge.events import CallEvent, CallEventKind

logger = logging.getLogger("relay")

UNAVAILABLE_MESSAGE = "Sorry, the assistant is unavailable today. Please try again tomorrow. Goodbye."


def today_start(now: float) -> dt.datetime:
    """Midnight UTC of the day ``now`` (epoch seconds) falls in."""
    return dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class DailyBudget:
    """Today's spend and the limit.

    Args:
        limit_usd: ``DAILY_BUDGET_USD``.
        spent_since: the records' sum of the calls' costs since a time; None without records (this process's
            calls only).
        now: the wall clock, epoch seconds (tests pass their own).
    """

    def __init__(self, limit_usd: float, spent_since: Callable[[dt.datetime], Awaitable[float]] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.limit_usd = limit_usd
        self._spent_since = spent_since
        self._now = now
        self._day = today_start(now())
        self._spent = 0.0
        self._warned_day: dt.datetime | None = None

    @property
    def spent_usd(self) -> float:
        self._roll()
        return self._spent

    @property
    def exhausted(self) -> bool:
        """Today's spend has reached the limit (said in the log once a day)."""
        if self.spent_usd < self.limit_usd:
            return False
        if self._warned_day != self._day:
            self._warned_day = self._day
            logger.warning("DAILY_BUDGET_USD=%.2f reached (%.2f spent today, UTC): new calls are told the assistant "
                           "is unavailable until midnight UTC", self.limit_usd, self._spent)
        return True

    def on_event(self, event: CallEvent) -> None:
        """The calls' hook: each call's cost as it ends."""
        if event.kind is CallEventKind.ENDED:
            cost = event.data.get("cost_usd")  # type: ignore[union-attr]
            if cost:
                self._roll()
                self._spent += cost

    async def refresh(self) -> None:
        """Today's spend from the records (every worker's calls). Raises what the database raises."""
        if self._spent_since is None:
            return
        self._roll()
        day = self._day
        spent = await self._spent_since(day)
        if day == self._day:
            self._spent = max(self._spent, spent)

    def health(self) -> dict[str, object]:
        """``/health``'s ``budget``."""
        return {"daily_usd": self.limit_usd, "spent_today_usd": round(self.spent_usd, 4),
                "exhausted": self.exhausted}

    def _roll(self) -> None:
        day = today_start(self._now())
        if day != self._day:
            self._day, self._spent = day, 0.0

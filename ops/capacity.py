"""How much one relay process takes on: calls (``MAX_CALLS``), file descriptors, and what the event
loop says when the descriptors run out."""

from __future__ import annotations

import bisect
import errno
import logging
import resource
import time
from collections import deque
from typing import Any

from ops.tokens import TOKEN_TTL_S

logger = logging.getLogger("relay")

DESCRIPTORS_PER_CALL = 3
"""A call holds the phone's socket and the Realtime socket, plus a webhook now and then."""
ACCEPT_ERROR_LOG_INTERVAL_S = 10.0
"""One line per this many seconds when ``accept()`` fails for want of descriptors."""


class Capacity:
    """Calls this process takes at once: live media streams plus calls a webhook has answered whose
    stream has not opened yet (each reservation lasts as long as its stream token).

    ``MAX_CALLS`` is checked twice: the voice webhook answers a busy message when ``full``, and a media
    stream beyond ``max_calls`` open streams is closed 1013 (try again later).
    """

    def __init__(self, max_calls: int, reservation_s: float = TOKEN_TTL_S) -> None:
        self.max_calls = max_calls
        self.streams = 0
        """Media websockets open now (started or not)."""
        self._reservation_s = reservation_s
        self._answered: deque[float] = deque()  # expiry times, oldest first

    @property
    def answered(self) -> int:
        """Calls answered by a webhook whose stream has not opened yet."""
        now = time.monotonic()
        while self._answered and self._answered[0] < now:
            self._answered.popleft()
        return len(self._answered)

    @property
    def in_use(self) -> int:
        return self.streams + self.answered

    @property
    def full(self) -> bool:
        return self.in_use >= self.max_calls

    def answer(self, hold_s: float | None = None) -> bool:
        """Reserve room for a call the webhook is about to answer (or a call being placed, which rings first:
        ``hold_s`` seconds instead of a stream token's life); False when full (answer busy)."""
        if self.full:
            return False
        expiry = time.monotonic() + (self._reservation_s if hold_s is None else hold_s)
        if self._answered and expiry < self._answered[-1]:  # kept in expiry order
            self._answered.insert(bisect.bisect(self._answered, expiry), expiry)
        else:
            self._answered.append(expiry)
        return True

    def open_stream(self) -> bool:
        """Count a media stream in (it takes the oldest reservation); False beyond ``max_calls``."""
        if self.streams >= self.max_calls:
            return False
        self.streams += 1
        if self.answered:
            self._answered.popleft()
        return True

    def close_stream(self) -> None:
        self.streams -= 1


def raise_open_files_limit(max_calls: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (many systems start processes at 1,024,
    which 300 calls and a few hundred idle clients exhaust), and warn when even that is short of
    ``max_calls``.

    Returns:
        (soft, hard) limits after the change.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:  # e.g. a container that refuses it
            logger.warning("could not raise the open-file limit from %d: %s", soft, exc)
    needed = max_calls * DESCRIPTORS_PER_CALL + 64
    if soft < needed:
        logger.warning(
            "the open-file limit (%d) is short of MAX_CALLS=%d (needs about %d); raise it (ulimit -n) or "
            "lower MAX_CALLS", soft, max_calls, needed,
        )
    return soft, hard


class LoopErrors:
    """The event loop's exception handler: ``accept()`` failing for want of descriptors (EMFILE,
    ENFILE, ENOBUFS, ENOMEM) is one WARNING line per ``ACCEPT_ERROR_LOG_INTERVAL_S`` with a count,
    not a traceback per attempt (asyncio retries every accept at once: thousands a second).
    Everything else goes to asyncio's default handler."""

    RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self) -> None:
        self._last = -ACCEPT_ERROR_LOG_INTERVAL_S
        self._suppressed = 0

    def __call__(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in self.RESOURCE_ERRNOS:
            now = time.monotonic()
            if now - self._last < ACCEPT_ERROR_LOG_INTERVAL_S:
                self._suppressed += 1
                return
            logger.warning(
                "cannot accept connections: %s (%d more since the last report); new calls wait until "
                "descriptors free up", exc.strerror, self._suppressed,
            )
            self._last, self._suppressed = now, 0
            return
        loop.default_exception_handler(context)

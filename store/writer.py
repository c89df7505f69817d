"""Writes to the records' database off the calls' path: a bounded queue drained by one task, each write under
a deadline. A slow or failing database never delays a call: when the queue is full, or a write fails or
overruns, that record is dropped, counted (``dropped``; ``relay_records_dropped_total``) and warned about at
most once a minute (``Throttle``, which the records' other warnings use too)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redact import describe

logger = logging.getLogger("relay.records")

MAX_QUEUED = 2_000
"""Writes waiting at once (a call makes two, a text one)."""
WRITE_DEADLINE_S = 10.0
"""How long one write may take before it is given up."""
WARN_EVERY_S = 60.0
CLOSE_DEADLINE_S = 5.0
"""At shutdown, how long the writes still queued may take."""

Write = Callable[[], Awaitable[object]]


class Throttle:
    """One kind of warning, logged at most once every ``every_s``; the next one logged says how many were held."""

    def __init__(self, every_s: float = WARN_EVERY_S) -> None:
        self._every_s = every_s
        self._logged_at = -every_s
        self._held = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at < self._every_s:
            self._held += 1
            return
        if self._held:
            msg, args = msg + " (%d more since the last warning)", (*args, self._held)
        logger.warning(msg, *args)
        self._logged_at, self._held = now, 0


class RecordWriter:
    """The queue and its task (``start``, ``close``). ``put`` never blocks.

    Args:
        on_drop: told of each dropped write (the metrics' counter); None: nothing to tell.
    """

    def __init__(self, on_drop: Callable[[], None] | None = None, max_queued: int = MAX_QUEUED,
                 deadline_s: float = WRITE_DEADLINE_S) -> None:
        self._queue: asyncio.Queue[tuple[str, Write]] = asyncio.Queue(max_queued)
        self._on_drop = on_drop
        self._deadline_s = deadline_s
        self._task: asyncio.Task[None] | None = None
        self._warnings = Throttle()
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="record writer")

    def put(self, what: str, write: Write) -> None:
        """Queue ``write`` (a coroutine function), described as ``what`` for the log; dropped when full."""
        try:
            self._queue.put_nowait((what, write))
        except asyncio.QueueFull:
            self._drop(what, f"{self._queue.maxsize} writes already queued")

    async def close(self, deadline_s: float = CLOSE_DEADLINE_S) -> None:
        """Finish the queued writes for up to ``deadline_s``, then drop the rest."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(deadline_s):
                await self._queue.join()
        except TimeoutError:
            pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        while not self._queue.empty():
            what, _ = self._queue.get_nowait()
            self._drop(what, "shutting down")

    async def _run(self) -> None:
        while True:
            what, write = await self._queue.get()
            try:
                async with asyncio.timeout(self._deadline_s):
                    await write()
                self.written += 1
            except TimeoutError:
                self._drop(what, f"the database took over {self._deadline_s:g} s")
            except Exception as exc:  # the database's or the driver's: the record goes, the relay stays
                self._drop(what, describe(exc)[:200])
            finally:
                self._queue.task_done()

    def _drop(self, what: str, why: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        self._warnings.warn("record dropped (%s): %s", what, why)

"""The records, as the relay runs them: the database opened and migrated at startup, the writer, the calls'
recorder, the texts, stream-token nonces spent across workers, and the daily deletion of old records
(``RECORDS_RETENTION_DAYS``). A database that is down or slow costs no call: the relay serves on, says so in
``/health`` and the log, and drops the records it cannot write."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from callers import mask_number
from config import Config
from redact import describe
from store.database import Database
from store.memory import CallerMemory
from store.recorder import CallRecorder
from store.writer import RecordWriter, Throttle

logger = logging.getLogger("relay.records")

STARTUP_DEADLINE_S = 15.0
"""How long connecting and migrating may take at startup."""
NONCE_DEADLINE_S = 1.0
"""How long spending a stream token's nonce may take before the call goes on with this process's check."""
RETRY_S = 30.0
"""How often a database that could not be used is tried again."""
RETENTION_EVERY_S = 24 * 3600.0


class Records:
    """Everything the relay does with its database (see the module).

    Args:
        config: ``DATABASE_URL`` (set: records on), ``RECORD_NUMBERS``, ``LOG_TRANSCRIPTS``,
            ``RECORDS_RETENTION_DAYS``, ``CALLER_MEMORY``.
        key: the deployment's shared secret (``caller_key``).
        on_drop: told of each record dropped (the metrics' counter).
    """

    def __init__(self, config: Config, key: bytes, on_drop: Callable[[], None] | None = None) -> None:
        assert config.database_url is not None
        self.db = Database(config.database_url, key)
        self.writer = RecordWriter(on_drop)
        self.recorder = CallRecorder(self.db, self.writer, config.record_numbers_full, config.log_transcripts,
                                     str(config.voice_api))
        self.memory = CallerMemory(self.db) if config.caller_memory else None
        self.ready = False
        """Migrated and writing; False until the database could be used (tried again every ``RETRY_S``)."""
        self._config = config
        self._tasks: list[asyncio.Task[None]] = []
        self._nonce_warnings = Throttle()

    async def start(self) -> bool:
        """Connect and migrate (under ``STARTUP_DEADLINE_S``), then start writing and the daily deletion. False,
        logged once, when the database cannot be used: the relay serves without records meanwhile, and the
        database is tried again every ``RETRY_S`` until it can be."""
        failure = await self._migrate()
        if failure is None:
            self._begin()
            return True
        logger.error("records are off until the database can be used (tried again every %g s): %s", RETRY_S, failure)
        self._tasks.append(asyncio.create_task(self._retry(), name="records retry"))
        return False

    async def _migrate(self) -> str | None:
        """Connect and migrate: None once done, else what failed."""
        try:
            async with asyncio.timeout(STARTUP_DEADLINE_S):
                await self.db.migrate()
        except Exception as exc:  # the driver's, the migration's, or the deadline
            return describe(exc)[:200]
        return None

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            if await self._migrate() is None:
                self._begin()
                return

    def _begin(self) -> None:
        self.ready = True
        self.writer.start()
        self._tasks.append(asyncio.create_task(self._retain(), name="records retention"))
        logger.info("records on (%s, kept %d days)", "SQLite" if self.db.sqlite else "PostgreSQL",
                    self._config.records_retention_days)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.writer.close()
        await self.db.close()

    @property
    def recording(self) -> CallRecorder | None:
        """The calls' recorder while the records are ready (a call started before then goes unrecorded)."""
        return self.recorder if self.ready else None

    @property
    def recall(self) -> Callable[[str], Awaitable[str]] | None:
        """``CALLER_MEMORY``'s digest by E.164 number while the records are ready; None when it is off."""
        return self.memory.digest if self.ready and self.memory is not None else None

    def on_text(self, direction: str, number: str, body: str) -> None:
        """An SMS in or out (``phones.sms.SmsReplies.on_text``)."""
        if not self.ready:
            return
        row = {"at": dt.datetime.now(dt.UTC), "direction": direction,
               "body": body[:2000] if self._config.log_transcripts else "",
               "number": number if self._config.record_numbers_full else mask_number(number),
               "number_key": self.db.key_of(number)}
        self.writer.put("text", lambda: self.db.insert_sms(row))

    async def spend_nonce(self, nonce: str, expires: float) -> bool | None:
        """Spend a stream token's nonce across workers: True the first time, False when spent before, None when
        the database did not answer in time (the caller's process checked it already)."""
        if not self.ready:
            return None
        try:
            async with asyncio.timeout(NONCE_DEADLINE_S):
                return await self.db.spend_nonce(nonce, dt.datetime.fromtimestamp(expires, dt.UTC))
        except Exception as exc:  # the database's: this process's own check stands
            self._nonce_warnings.warn("stream token not checked across workers: the database did not answer (%s)",
                                      describe(exc)[:200])
            return None

    def health(self) -> dict[str, object]:
        """``/health``'s ``records``."""
        return {"ready": self.ready, "written": self.writer.written, "dropped": self.writer.dropped}

    async def _retain(self) -> None:
        """Delete records older than ``RECORDS_RETENTION_DAYS`` now and once a day."""
        while True:
            now = dt.datetime.now(dt.UTC)
            cutoff = now - dt.timedelta(days=self._config.records_retention_days)
            try:
                async with asyncio.timeout(60.0):
                    gone = await self.db.delete_before(cutoff, now)
                if gone:
                    logger.info("records: %d older than %d days deleted", gone, self._config.records_retention_days)
            except Exception as exc:  # the database's: tried again tomorrow
                logger.warning("records: old records not deleted (%s); trying again in a day", describe(exc)[:200])
            await asyncio.sleep(RETENTION_EVERY_S)

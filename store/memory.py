"""``CALLER_MEMORY``: a short digest of a caller's last calls and texts, added to a new call's instructions so
"what did I ask you yesterday?" has an answer. Newest first, bounded in size, read under a deadline (a slow
database costs the call its memory, never its start)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from typing import Any

from redact import describe
from store.database import Database

logger = logging.getLogger("relay.records")

CALLS = 3
"""Past calls in a digest."""
TEXTS = 5
"""Past texts (either way) in a digest."""
TURN_CHARS = 200
"""Each turn or text, at most (longer ones end with "…")."""
MAX_CHARS = 2_000
"""The whole digest, at most."""
DEADLINE_S = 1.0
"""How long the lookup may take."""
CACHE_S = 120.0
"""A digest is read once for a call's webhook and its stream's start (and a prompt call-back)."""
CACHE_SIZE = 1_000

HEADER = ("Memory of earlier conversations with this caller (from this service's records, newest first; use it "
          "only when it helps, and say so if asked what you remember):")


class CallerMemory:
    """Digests by caller number, cached briefly."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def digest(self, number: str) -> str:
        """The digest for ``number`` (E.164): "" for a caller with no past, or when the records do not answer
        within ``DEADLINE_S``."""
        if not number:
            return ""
        now = time.monotonic()
        cached = self._cache.get(number)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = self._db.key_of(number)
        try:
            async with asyncio.timeout(DEADLINE_S):
                calls, texts = await asyncio.gather(self._db.recent_details(key, CALLS),
                                                    self._db.recent_texts(key, TEXTS))
        except Exception as exc:  # the database's: the call goes on without its memory
            logger.warning("caller memory not read (%s)", describe(exc)[:200])
            return ""
        text = render(calls, texts)
        self._cache[number] = (now + CACHE_S, text)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return text


def render(calls: list[dict[str, Any]], texts: list[dict[str, Any]]) -> str:
    """The digest's text: a header, then each past call's turns and each text, newest first, cut at ``MAX_CHARS``
    (whole lines only)."""
    lines = []
    for call in calls:
        lines.append(f"- Call on {_when(call['started_at'])}:")
        for turn in call["turns"]:
            if turn.get("text"):
                who = "Caller" if turn["role"] == "user" else "You"
                lines.append(f"  {who}: {_short(turn['text'])}")
    for text in texts:
        who = "Caller texted" if text["direction"] == "in" else "You texted"
        lines.append(f"- {who} on {_when(text['at'])}: {_short(text['body'])}")
    if not lines:
        return ""
    kept, size = [HEADER], len(HEADER)
    for line in lines:
        size += len(line) + 1
        if size > MAX_CHARS:
            break
        kept.append(line)
    return "\n".join(kept)


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "an unknown date"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TURN_CHARS else text[: TURN_CHARS - 1] + "…"

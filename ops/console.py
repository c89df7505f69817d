"""The live call console: every call's events, fanned out to the browsers watching ``/console``.

``Console.on_event`` is the bridge's call-event hook (``bridge.CallEvent``). It keeps a bounded
history per call (live calls, and the last ``ENDED_KEPT`` ended ones) so a page that connects
mid-call first gets the state of every call (``snapshot``), then each event as it happens. Each
event is serialised once and put, without waiting, into each watcher's bounded queue; a watcher
whose queue is full (a stalled browser) is dropped, its socket aborted: a call never waits for a
browser. With no watcher, nothing is serialised.

Feed messages (JSON text frames):

- ``{"type": "snapshot", "calls": [call, ...]}`` first, oldest call first; a call is
  ``{"stream_sid", "live", "events": [event, ...]}``.
- then one ``event`` per message: ``{"type": <bridge.CallEventKind value>, "stream_sid", "at"
  (epoch seconds), ...the event's data}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from bridge.events import CallEvent, CallEventKind

logger = logging.getLogger(__name__)

ENDED_KEPT = 20
"""Ended calls kept for the page."""
EVENTS_KEPT = 400
"""Events kept per call for a late watcher (the oldest go first)."""
WATCHER_QUEUE = 2000
"""Messages queued for one watcher; a browser this far behind is dropped."""
MAX_WATCHERS = 50
NOT_KEPT = frozenset({CallEventKind.TRANSCRIPT_DELTA})
"""Sent live but not kept: the final transcript event supersedes them."""


@dataclass(slots=True)
class _CallHistory:
    live: bool = True
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))


class Watcher:
    """One browser's feed: a bounded queue of serialised messages, and a way to cut it off."""

    def __init__(self, abort: Any) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(WATCHER_QUEUE)
        self._abort = abort
        self.dropped = False

    def drop(self) -> None:
        """The browser stopped reading: abort its socket (the send it is blocked in fails)."""
        if not self.dropped:
            self.dropped = True
            self._abort()


class Console:
    """Call histories and the watchers of the feed (see the module docstring)."""

    def __init__(self) -> None:
        self._calls: OrderedDict[str, _CallHistory] = OrderedDict()
        self._watchers: set[Watcher] = set()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def on_event(self, event: CallEvent) -> None:
        """The bridge's hook: remember the event and hand it to every watcher (never blocks)."""
        message = {"type": event.kind.value, "stream_sid": event.stream_sid, "at": event.at, **event.data}
        message.pop("number", None)  # the whole number is for the records; the console shows the masked one
        if event.kind not in NOT_KEPT:
            history = self._calls.get(event.stream_sid)
            if history is None:
                history = self._calls[event.stream_sid] = _CallHistory()
            history.events.append(message)
            if event.kind is CallEventKind.ENDED:
                history.live = False
                self._calls.move_to_end(event.stream_sid)
                self._forget_old_calls()
        if not self._watchers:
            return
        text = json.dumps(message, default=str)
        for watcher in list(self._watchers):
            try:
                watcher.queue.put_nowait(text)
            except asyncio.QueueFull:
                logger.warning("console watcher %d messages behind; dropped", WATCHER_QUEUE)
                self.remove(watcher)
                watcher.drop()

    def snapshot(self) -> str:
        """Every kept call with its events, as the first feed message."""
        calls = [
            {"stream_sid": sid, "live": history.live, "events": list(history.events)}
            for sid, history in self._calls.items()
        ]
        return json.dumps({"type": "snapshot", "calls": calls}, default=str)

    def add(self, watcher: Watcher) -> bool:
        """Start feeding ``watcher``; False when ``MAX_WATCHERS`` are watching already."""
        if len(self._watchers) >= MAX_WATCHERS:
            return False
        self._watchers.add(watcher)
        return True

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def drop_all(self) -> None:
        """Cut every feed (shutdown)."""
        for watcher in list(self._watchers):
            self.remove(watcher)
            watcher.drop()

    def _forget_old_calls(self) -> None:
        ended = [sid for sid, history in self._calls.items() if not history.live]
        for sid in ended[: max(len(ended) - ENDED_KEPT, 0)]:
            del self._calls[sid]

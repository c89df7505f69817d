"""How long the caller waits for the assistant, sans-I/O: the first word of the call, and each answer.

- **First word**: from the phone's start to the first assistant audio sent to the phone.
- **Each answer**: from the end of the caller's turn to the first assistant audio sent after it. The end of the
  turn is the model's own word for it: Realtime's ``speech_stopped`` (its VAD, a silence after the last
  word), or for GPT-Live, which sends none, the arrival of the caller's last transcript fragment before the
  assistant speaks. Speech resumed before the answer starts the wait again.

Times in are monotonic seconds; figures out are milliseconds. Nothing here runs per audio frame but a bool
check (``waiting``).
"""

from __future__ import annotations

import statistics
from typing import TypedDict

MAX_TURNS = 500
"""Answers remembered per call (a long call keeps its latest)."""


class LatencyData(TypedDict):
    first_word_ms: float | None
    """None when the assistant never spoke."""
    turns_ms: list[float]
    """Each answer's wait, in order."""
    p50_ms: float | None
    p95_ms: float | None


class Latency:
    """One call's waits."""

    def __init__(self) -> None:
        self._stream_started_at: float | None = None
        self._turn_ended_at: float | None = None
        self.first_word_ms: float | None = None
        self.turns_ms: list[float] = []
        self.waiting = False
        """The next assistant audio ends a wait (the first word, or an answer): the one check per delta."""

    def stream_started(self, now: float) -> None:
        self._stream_started_at = now
        self.waiting = True

    def caller_turn_ended(self, now: float) -> None:
        """The caller's turn ended (or, for GPT-Live, more of it was transcribed) at ``now``."""
        self._turn_ended_at = now
        self.waiting = True

    def caller_resumed(self) -> None:
        """The caller speaks again before the answer: the wait starts at the turn's new end."""
        self._turn_ended_at = None
        self.waiting = self.first_word_ms is None

    def assistant_audio(self, now: float) -> None:
        """Assistant audio is sent to the phone at ``now`` (called while ``waiting``)."""
        if self.first_word_ms is None and self._stream_started_at is not None:
            self.first_word_ms = (now - self._stream_started_at) * 1000
        if self._turn_ended_at is not None:
            self.turns_ms.append((now - self._turn_ended_at) * 1000)
            del self.turns_ms[:-MAX_TURNS]
            self._turn_ended_at = None
        self.waiting = False

    def summary(self) -> LatencyData:
        turns = sorted(self.turns_ms)
        return {
            "first_word_ms": None if self.first_word_ms is None else round(self.first_word_ms, 1),
            "turns_ms": [round(ms, 1) for ms in self.turns_ms],
            "p50_ms": round(statistics.median(turns), 1) if turns else None,
            "p95_ms": round(turns[min(len(turns) - 1, int(len(turns) * 0.95))], 1) if turns else None,
        }

"""The stand-in phone's playback buffer: what a phone network plays, and when it echoes each mark."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from audio import SAMPLE_RATE_HZ


@dataclass(slots=True)
class PlayedChunk:
    """One media message in the phone's buffer."""

    start: float
    """When it starts (started) playing, monotonic seconds."""
    data: bytes
    tag: tuple[str, int] | None
    """(item_id, byte offset) of the assistant audio it carries, when known."""
    music: bool = False
    """Waiting music, not the assistant's voice."""
    cut_at: float | None = None
    """When a ``clear`` dropped the rest of it."""

    def played_bytes(self, until: float) -> int:
        """Bytes played by ``until`` (after a clear: by the clear)."""
        end = until if self.cut_at is None else min(until, self.cut_at)
        return max(0, min(len(self.data), int((end - self.start) * SAMPLE_RATE_HZ)))


class PhonePlayback:
    """A phone network's outbound buffer as Twilio's and Plivo's docs describe it (sans-I/O;
    times are monotonic s).

    Media is "buffered and played in the order received" at 8000 bytes/s; a mark (Plivo: a
    checkpoint) is due when the audio before it has played, at once when nothing is buffered;
    ``clear`` drops the buffered audio and returns the pending marks (Twilio echoes them at once,
    Plivo answers none of them).
    """

    def __init__(self) -> None:
        self.chunks: list[PlayedChunk] = []
        self.end = 0.0
        """When the last buffered byte will have played."""
        self._marks: deque[tuple[float, str]] = deque()
        self.clears: list[float] = []

    def enqueue_media(self, now: float, data: bytes, tag: tuple[str, int] | None = None, music: bool = False) -> None:
        start = max(now, self.end)
        self.chunks.append(PlayedChunk(start, data, tag, music))
        self.end = start + len(data) / SAMPLE_RATE_HZ

    def enqueue_mark(self, now: float, name: str) -> list[str]:
        """Queue a mark; returns it at once when nothing is buffered."""
        if self.end <= now and not self._marks:
            return [name]
        self._marks.append((max(now, self.end), name))
        return []

    def due_marks(self, now: float) -> list[str]:
        out = []
        while self._marks and self._marks[0][0] <= now:
            out.append(self._marks.popleft()[1])
        return out

    def next_mark_at(self) -> float | None:
        return self._marks[0][0] if self._marks else None

    def clear(self, now: float) -> list[str]:
        """Drop buffered audio; returns every pending mark (echoed now: discarded, not played)."""
        for chunk in self.chunks:
            if chunk.cut_at is None and chunk.start + len(chunk.data) / SAMPLE_RATE_HZ > now:
                chunk.cut_at = now
        self.end = min(self.end, now)
        self.clears.append(now)
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def playing(self, now: float) -> bool:
        return self.end > now

    def heard_bytes_by_item(self, until: float) -> dict[str, int]:
        heard: dict[str, int] = {}
        for chunk in self.chunks:
            if chunk.tag is not None:
                heard[chunk.tag[0]] = heard.get(chunk.tag[0], 0) + chunk.played_bytes(until)
        return heard

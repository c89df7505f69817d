"""Playback accounting, sans-I/O: what the phone has played of the assistant's audio, per item.

Nothing here touches a socket or a clock: callers pass ``now`` (monotonic seconds) in.

Sources: Twilio Media Streams docs (marks are echoed when the audio before them has played, and at once
for audio a ``clear`` discarded); Plivo Audio Streams docs (``checkpoint`` / ``playedStream``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from audio import BYTES_PER_MS, SAMPLE_RATE_HZ
from model.session import Truncation


def b64_decoded_len(payload: str) -> int:
    """Bytes encoded by a padded base64 string, without decoding it (µ-law: 8 bytes per ms)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")



@dataclass(slots=True)
class _ItemAudio:
    start: int
    """Offset of the item's first byte in the outbound stream (bytes since the call began)."""
    sent: int = 0
    """µ-law bytes of this item sent to the phone."""
    closed: bool = False
    """The model finished this item's audio (``AssistantAudioDone``)."""

    def heard_ms(self, played: int) -> int:
        """Milliseconds of this item heard when the stream has played up to offset ``played``,
        clamped to what was sent for it."""
        return min(max(played - self.start, 0), self.sent) // BYTES_PER_MS


class Playback:
    """What the phone has played of the assistant's audio, per item.

    The outbound audio is one stream of µ-law bytes; every byte has an offset (bytes since
    the call began). After each media message the relay sends a mark named
    ``"<generation>.<end offset>"``. An echo of a mark of the current generation means the
    phone has played up to that offset at the echo's arrival; between echoes the play
    position advances with the wall clock at 8 bytes per ms (playback is real time),
    anchored at the last echo or at the moment audio was sent into an empty queue, and
    never past what was sent. ``clear`` starts a new generation, so the echoes Twilio sends
    for the cleared marks (Twilio docs: marks are echoed on clear) never count as played.

    Plivo's checkpoints are marks by another name (``playedStream`` answers one once the audio
    before it has played; none is answered after ``clearAudio``).

    Each item records the offset of its first byte, so later responses are measured from
    their own start, never from the first response's.
    """

    MAX_ITEMS = 16
    """Items remembered; older ones are long played out."""
    MAX_PENDING_MARKS = 4096
    """Marks awaiting their echo (about 7 minutes of deltas); past it the oldest is forgotten, so a
    phone that never echoes cannot grow the relay's memory."""
    MAX_MARK_DIGITS = 15

    def __init__(self, max_ahead_ms: int | None = None) -> None:
        """``max_ahead_ms``: the most audio that may be queued at the phone ahead of real time (None: no
        bound); audio past it is refused by ``on_audio_sent``, so the accounting holds only what was sent."""
        self._max_ahead = max_ahead_ms * BYTES_PER_MS if max_ahead_ms else None
        self.generation = 0
        self.sent_total = 0
        """Offset one past the last byte sent to the phone."""
        self._anchor_offset = 0
        self._anchor_time = 0.0
        self._pending_marks: deque[int] = deque()
        """End offsets of this generation's marks not yet echoed, oldest first."""
        self._pending_set: set[int] = set()
        """The same offsets, for an O(1) check of each echo."""
        self._items: OrderedDict[str, _ItemAudio] = OrderedDict()

    def played(self, now: float) -> int:
        """Estimated stream offset the phone has played up to at ``now`` (bytes)."""
        elapsed = round((now - self._anchor_time) * SAMPLE_RATE_HZ)
        return min(self.sent_total, self._anchor_offset + max(elapsed, 0))

    def is_playing(self, now: float) -> bool:
        """True while assistant audio is queued at the phone (an echo is still due, or the
        clock estimate has not reached the end of what was sent)."""
        return bool(self._pending_marks) or self.played(now) < self.sent_total

    @property
    def marks_pending(self) -> bool:
        """True until the phone has echoed every mark of the current generation (everything
        sent has been played, or was cleared)."""
        return bool(self._pending_marks)

    def unplayed_ms(self, now: float) -> int:
        """Estimated milliseconds of sent audio the phone has not played yet at ``now``."""
        return (self.sent_total - self.played(now)) // BYTES_PER_MS

    def on_audio_sent(self, item_id: str, nbytes: int, now: float) -> str | None:
        """Account ``nbytes`` µ-law bytes of ``item_id`` about to be sent to the phone.

        Returns:
            The name of the mark to send right after that media message; None when the audio would queue
            more than ``max_ahead_ms`` ahead of real time (nothing is accounted: do not send it).
        """
        if not self._pending_marks and self.played(now) >= self.sent_total:
            # The queue had run dry: this audio starts playing now.
            self._anchor_offset, self._anchor_time = self.sent_total, now
        elif self._max_ahead is not None and (  # queued after this audio, by the clock estimate (played() inlined)
            self.sent_total + nbytes - self._anchor_offset - (now - self._anchor_time) * SAMPLE_RATE_HZ
            > self._max_ahead
        ):
            return None
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _ItemAudio(start=self.sent_total)
            while len(self._items) > self.MAX_ITEMS:
                self._items.popitem(last=False)
        item.sent += nbytes
        self.sent_total += nbytes
        self._pending_marks.append(self.sent_total)
        self._pending_set.add(self.sent_total)
        if len(self._pending_marks) > self.MAX_PENDING_MARKS:
            self._pending_set.discard(self._pending_marks.popleft())
        return f"{self.generation}.{self.sent_total}"

    def on_mark(self, name: str, now: float) -> bool:
        """Account a mark echo from the phone.

        Returns:
            True when it proves playback up to its offset; False for an echo of a cleared
            generation or a name this relay did not make (ignored).
        """
        generation, _, offset_text = name.partition(".")
        if (
            generation != str(self.generation)
            or not offset_text.isascii()  # "²".isdigit() is true, and int() refuses it
            or not offset_text.isdigit()
            or len(offset_text) > self.MAX_MARK_DIGITS
        ):
            return False
        offset = int(offset_text)
        if offset not in self._pending_set:
            return False
        while self._pending_marks and self._pending_marks[0] <= offset:  # echoes come in order
            self._pending_set.discard(self._pending_marks.popleft())
        self._anchor_offset, self._anchor_time = offset, now
        return True

    def forget_items(self) -> None:
        """The Realtime session was replaced: its items are not in the new one, so a later barge-in
        truncates none of them (what is queued at the phone still plays and is still accounted)."""
        self._items.clear()

    def close_item(self, item_id: str) -> None:
        """The model will send no more audio for ``item_id`` (``AssistantAudioDone``)."""
        item = self._items.get(item_id)
        if item is not None:
            item.closed = True

    def heard_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of ``item_id`` played by ``now`` (0 for an unknown item)."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        return item.heard_ms(self.played(now))

    def barge_in(self, now: float) -> list[Truncation]:
        """The phone's queue is being cleared at ``now``: close the generation.

        Returns:
            One truncation per item with audio not yet played or still being generated: the
            item being heard at its heard position, items queued behind it at 0 ms. Items
            fully played and closed need none.
        """
        played = self.played(now)
        cuts = [
            Truncation(item_id, item.heard_ms(played), item.sent // BYTES_PER_MS)
            for item_id, item in self._items.items()
            if item.start + item.sent > played or not item.closed
        ]
        self.generation += 1
        self._pending_marks.clear()
        self._pending_set.clear()
        self._anchor_offset, self._anchor_time = self.sent_total, now
        self._items.clear()
        return cuts

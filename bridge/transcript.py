"""The conversation as text: what the caller said, and what the caller heard the assistant say.

Sans-I/O. The bridge feeds it Realtime events (the caller's committed turns and their input
transcriptions, the assistant's audio transcripts, barge-in cuts); it is read to replay the
conversation into a new Realtime session (rollover, reconnect) and by observers (the console).

Turns are kept in conversation order: a caller turn takes its place when its audio is committed
(``input_audio_buffer.committed``), though its transcript comes later; an assistant turn when its
first transcript text arrives. A barge-in keeps only the share of the assistant's words the caller
heard (``heard_ms / sent_ms`` of them: the transcript has no timings, so the cut is proportional),
ending in ``…``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_TURNS = 200
"""Turns remembered per call; older ones are dropped (a replay uses far fewer)."""
MAX_TURN_CHARS = 4000
"""Longest text kept for one turn (a peer could send an endless transcript)."""
REPLAY_MAX_TURNS = 40
"""At most this many of the latest turns are replayed into a new session."""
REPLAY_MAX_CHARS = 8000
"""...and at most this many characters of them (about 2,000 tokens)."""
CUT_MARK = "…"


@dataclass(slots=True)
class Turn:
    """One turn of the conversation."""

    role: str
    """``user`` (the caller) or ``assistant``."""
    item_id: str
    text: str = ""
    final: bool = False
    """The text is complete: transcribed (caller), done or cut (assistant)."""
    cut: bool = False
    """A barge-in cut the assistant here: ``text`` is the part heard, ending in ``…``."""
    heard_share: float = 1.0
    """Of a cut turn: the share of its audio (sent so far) the caller heard."""
    unheard: str = ""
    """Of a cut turn: the words the caller did not hear (as far as the text is known)."""


class Transcript:
    """The call's turns in order, bounded by ``MAX_TURNS``."""

    def __init__(self) -> None:
        self._turns: OrderedDict[str, Turn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._turns)

    def turns(self) -> list[Turn]:
        """Every remembered turn, oldest first (those without text included)."""
        return list(self._turns.values())

    def caller_committed(self, item_id: str) -> None:
        """The caller's turn ``item_id`` is in the conversation (its transcript comes later)."""
        self._turn("user", item_id)

    def caller_said(self, item_id: str, text: str) -> Turn:
        """The transcript of the caller's turn ``item_id`` (a turn not seen committed is added now)."""
        turn = self._turn("user", item_id)
        turn.text, turn.final = text.strip()[:MAX_TURN_CHARS], True
        return turn

    def assistant_delta(self, item_id: str, delta: str) -> None:
        """More of the assistant's text for ``item_id`` (ignored once the turn is final)."""
        turn = self._turn("assistant", item_id)
        if not turn.final and len(turn.text) < MAX_TURN_CHARS:
            turn.text += delta

    def assistant_done(self, item_id: str, text: str) -> Turn:
        """The whole text of ``item_id`` as generated. For a turn a barge-in cut, the heard part stands
        and the rest of ``text`` becomes ``unheard``."""
        turn = self._turn("assistant", item_id)
        text = text.strip()[:MAX_TURN_CHARS]
        if not turn.cut:
            turn.text, turn.final = text, True
            return turn
        words = text.split()
        heard = len(turn.text.removesuffix(CUT_MARK).split()) if turn.text else round(len(words) * turn.heard_share)
        if not turn.text and heard:  # the cut came before any text
            turn.text = " ".join(words[:heard]) + (CUT_MARK if heard < len(words) else "")
        turn.unheard = " ".join(words[heard:])
        return turn

    def cut(self, item_id: str, heard_ms: int, sent_ms: int) -> Turn:
        """A barge-in cut ``item_id`` after ``heard_ms`` of the ``sent_ms`` sent to the phone: keep
        that share of the words received so far (or of the whole text, when it comes later) as
        ``text``, the rest as ``unheard``."""
        turn = self._turn("assistant", item_id)
        if not turn.cut:
            turn.heard_share = min(heard_ms / sent_ms, 1.0) if sent_ms > 0 else 0.0
            words = turn.text.split()
            keep = round(len(words) * turn.heard_share)
            turn.text = " ".join(words[:keep]) + (CUT_MARK if keep and keep < len(words) else "")
            turn.unheard = " ".join(words[keep:])
            turn.final = turn.cut = True
        return turn

    def replay(self, max_turns: int = REPLAY_MAX_TURNS, max_chars: int = REPLAY_MAX_CHARS) -> list[Turn]:
        """The latest turns with text, oldest first: at most ``max_turns`` of them and ``max_chars``
        characters in all (the newest turns win)."""
        chosen: list[Turn] = []
        chars = 0
        for turn in reversed(self._turns.values()):
            if not turn.text:
                continue
            if len(chosen) == max_turns or chars + len(turn.text) > max_chars:
                break
            chosen.append(turn)
            chars += len(turn.text)
        chosen.reverse()
        return chosen

    def _turn(self, role: str, item_id: str) -> Turn:
        turn = self._turns.get(item_id)
        if turn is None:
            turn = self._turns[item_id] = Turn(role, item_id)
            while len(self._turns) > MAX_TURNS:
                self._turns.popitem(last=False)
        return turn


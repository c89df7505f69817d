"""The goodbye after ``end_call``, sans-I/O: which turn is the goodbye, and when the call may hang up."""

from __future__ import annotations

import enum
from collections.abc import Callable


class GoodbyeState(enum.StrEnum):
    """Where a call is on its way to hanging up after ``end_call``."""

    NONE = "none"
    """The model has not called ``end_call``."""
    REQUESTED = "requested"
    """``end_call`` ran; the function calls of its response are being answered."""
    ASKED = "asked"
    """The relay asked the model for its goodbye (asked now, or once the current turn ends)."""
    SPEAKING = "speaking"
    """The goodbye response is being generated."""
    SPOKEN = "spoken"
    """The goodbye is generated (or was spoken with ``end_call``): hang up once it has played."""


class Goodbye:
    """The goodbye after ``end_call``, sans-I/O: an explicit state, moved by the model's turns and the
    tool answers; ``on_change`` (optional) is told of every move, so the call can wake its hang-up."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.state = GoodbyeState.NONE
        self.reason: str | None = None
        self.by_model = False
        """``end_call`` asked for it (False: the relay is ending the call with a closing line)."""
        self.response_id: str | None = None
        self._on_change = on_change

    def request(self, reason: str, by_model: bool = True) -> bool:
        """``end_call`` ran (``by_model``), or the relay ends the call with a closing line. False when
        a goodbye was already under way (nothing changes)."""
        if self.state is not GoodbyeState.NONE:
            return False
        self.reason = f"end_call: {reason}" if by_model else reason
        self.by_model = by_model
        self._enter(GoodbyeState.REQUESTED)
        return True

    def after_tools(self, spoke: bool) -> bool:
        """A response's function calls are answered. True: ask the model for a response (its
        next answer, or the goodbye itself).

        Args:
            spoke: the response that made the calls already held assistant audio; after
                ``end_call`` that audio was the goodbye ("Goodbye!" then the call).
        """
        if self.state is GoodbyeState.NONE:
            return True
        if self.state is GoodbyeState.REQUESTED:
            self._enter(GoodbyeState.SPOKEN if spoke else GoodbyeState.ASKED)
            return not spoke
        return False  # the goodbye is already under way: no more answers

    def on_response_created(self, response_id: str, ours: bool) -> None:
        """The model began a turn; ``ours``: the one the relay asked for."""
        if self.state is GoodbyeState.ASKED and ours:
            self.response_id = response_id
            self._enter(GoodbyeState.SPEAKING)

    def on_response_done(self, response_id: str) -> None:
        """The model finished a turn."""
        if self.state is GoodbyeState.SPEAKING and response_id == self.response_id:
            self._enter(GoodbyeState.SPOKEN)

    def reset(self) -> None:
        """Back to no goodbye: the line was spoken but the call goes on (a transfer the network refused)."""
        self.reason, self.by_model, self.response_id = None, False, None
        self._enter(GoodbyeState.NONE)

    @property
    def under_way(self) -> bool:
        """``end_call`` ran or the relay is ending the call with a closing line."""
        return self.state is not GoodbyeState.NONE

    def _enter(self, state: GoodbyeState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change()

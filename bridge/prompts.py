"""What the model is told that the caller did not say: the greeting cue, key presses, a replayed
conversation's opening; and the key presses collected into sequences."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redact import CallLog

DTMF_SEQUENCE_GAP_S = 1.5
"""Key presses closer together than this are one sequence ("pressed 1, 2, 3 and #")."""
DTMF_MAX_DIGITS = 32
"""A sequence this long is sent at once, however fast the keys come."""
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def greeting_instruction(first_name: str) -> str:
    """What the model is told once the first session is ready, to greet the caller by name."""
    return (
        f"The caller, whose first name is {first_name}, has just been connected. Greet them "
        "by name in one short sentence and ask how you can help. Do not wait for them to speak first."
    )


def outbound_brief(purpose: str, first_name: str) -> str:
    """What an outbound call's session is told after the deployment's instructions: whom it calls, why, and
    to let them speak first."""
    whom = f"{first_name}" if first_name else "the person who answers"
    return (
        f"This is an outbound phone call that you placed to {whom}. Its purpose: {purpose}\n"
        "Wait for them to answer and speak first; do not talk over them. Then say briefly that you are their "
        "assistant calling, and why. Keep to the purpose, and say goodbye (end_call) once it is done. If an "
        "answering machine answers, wait for its greeting to end, then leave one short message about the purpose "
        "and say goodbye."
    )


def voicemail_instruction(purpose: str) -> str:
    """What the model is told when an answering machine's greeting has ended."""
    return (
        "You have reached an answering machine and its greeting has ended: you are being recorded now. Leave "
        f"one short message (two or three sentences): that you are their assistant calling, and this: {purpose} "
        "Then say goodbye. Do not wait for a reply."
    )


TRANSFER_FAILED_INSTRUCTION = (
    "The transfer did not go through: no one could be reached. Tell the caller in one short sentence that you "
    "could not connect them, and ask how else you can help."
)


def replay_intro(name: str) -> str:
    """The system message that opens a replayed conversation in a new session."""
    return (
        f"This phone call with {name} is already under way on a new connection; the conversation so far "
        "follows. Carry on from where it left off and do not greet the caller again. A turn of yours "
        "ending in … was cut off there because the caller interrupted."
    )


def keypad_text(digits: str) -> str:
    """What the model is told: ``The caller pressed 5.`` / ``The caller pressed 1, 2, 3 and #.``"""
    if len(digits) == 1:
        return f"The caller pressed {digits}."
    return f"The caller pressed {', '.join(digits[:-1])} and {digits[-1]}."


class KeyPresses:
    """Collects DTMF digits into one sequence, handed on ``DTMF_SEQUENCE_GAP_S`` after the last press
    (or at ``DTMF_MAX_DIGITS``). One owned task waits for the gap; ``close`` cancels and awaits it."""

    def __init__(self, on_sequence: Callable[[str], Awaitable[None]], log: CallLog) -> None:
        self._on_sequence = on_sequence
        self._log = log
        self._digits: list[str] = []
        self._pressed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def press(self, digit: str) -> None:
        """One key press; anything but ``0``-``9``, ``*``, ``#``, ``A``-``D`` is dropped."""
        if digit not in DTMF_DIGITS:
            self._log.once_a_second(logging.WARNING, "dtmf", "dtmf digit that is no key dropped")
            return
        self._digits.append(digit)
        self._pressed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._after_gap(), name="dtmf sequence")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _after_gap(self) -> None:
        try:
            while len(self._digits) < DTMF_MAX_DIGITS:
                self._pressed.clear()
                try:
                    async with asyncio.timeout(DTMF_SEQUENCE_GAP_S):
                        await self._pressed.wait()  # another press: the gap starts again
                except TimeoutError:
                    break
        finally:
            self._task = None
        digits, self._digits = "".join(self._digits[:DTMF_MAX_DIGITS]), self._digits[DTMF_MAX_DIGITS:]
        if self._digits:  # more came in the same instant: they start the next sequence
            self._task = asyncio.create_task(self._after_gap(), name="dtmf sequence")
        try:
            await self._on_sequence(digits)
        except Exception:
            self._log.exception("dtmf sequence failed")

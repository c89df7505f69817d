"""GPT-Live's conversation state, sans-I/O: turns told from the stream, and the delegated tool calls.

GPT-Live's voice takes its own turns and sends no turn events, so ``LiveTurns`` makes them from what does
come: the voice's speech and transcript fragments (a turn closes after ``TURN_GAP_S`` without either) and
the caller's transcript fragments (after ``CALLER_TURN_GAP_S``). ``ToolLedger`` keeps the backend's
function calls: each completed call is handed to the call once its response finishes, answered once, and
the outputs are kept within the backend's per-session input budget.

Nothing here touches a socket; the clock is passed in (``now``, monotonic seconds). Both append the
interface's model events (``model.session``) to the queue ``LiveSession`` hands out.

Sources: ``openai.types.live``; OpenAI "Live delegation" guide (128 items, 32 KiB of backend input per
session; ``response.create`` refused until every pending call has its output); pipecat's and LiveKit
Agents' GPT-Live transcript grouping (0.8 s).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model.session import (
    AssistantAudioDone,
    AssistantTranscriptDelta,
    AssistantTranscriptDone,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTranscriptDelta,
    CallerTranscriptDone,
    CallerTurn,
    FunctionCall,
    ModelEvent,
    ResponseDone,
    ResponseStarted,
)

TURN_GAP_S = 0.8
"""The assistant's turn ends after this long without its speech or transcript (pipecat's and LiveKit
Agents' gap for GPT-Live)."""
CALLER_TURN_GAP_S = 1.5
"""The caller's turn ends after this long without a transcript fragment: longer than the assistant's, as
fragments of the caller's words may lag their speech (a turn split in two reads badly in the log and the
replay; nothing waits on its end)."""
ASKED_WINDOW_S = 8.0
"""A turn that starts within this long of a request answers it (the goodbye is told apart this way)."""
MAX_OUTPUT_CHARS = 2500
"""A tool output longer than this is cut: the backend takes 32 KiB of input per session."""
BACKEND_BUDGET = (120, 30_000)
"""Items and UTF-8 bytes of tool output a session sends at most (the backend's limits are 128 and 32,768;
past them it refuses the item and strands the call): beyond, a call gets ``PLACEHOLDER``."""
PLACEHOLDER = '{"ok": false, "error": "no result: the tool output budget of this session is spent"}'
MAX_TURN_CHARS = 4000
"""Transcript kept per turn (a service could send an endless one); the rest is dropped."""
MAX_CALLS_PER_RESPONSE = 16
"""Function calls run per backend response; more are not run (a model does not need them, a flood must not
start a thousand tools)."""
MAX_DELEGATIONS = 32
"""Backend responses followed at once; past it the oldest is forgotten (a service that never finishes them)."""

Events = deque[ModelEvent]


@dataclass(slots=True)
class _Turn:
    """One side's turn as it is heard: its id, its transcript so far, and when it last spoke."""

    id: str
    last_at: float
    parts: list[str] = field(default_factory=list)
    chars: int = 0


class LiveTurns:
    """Both sides' turns, from the stream: each move appends the model events it means to ``events``."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._assistant: _Turn | None = None
        self._caller: _Turn | None = None
        self._count = 0
        self.asked_at: float | None = None
        """When the call last asked the voice to speak (``respond``)."""
        self.continued_at: float | None = None
        """When tool outputs made the backend continue (the voice speaks the result as its next turn)."""

    def assistant_speech(self, now: float) -> str:
        """The voice is speaking at ``now`` (audio or transcript): the id of its turn, opened if need be
        (``ResponseStarted``, ``asked`` when it follows a request within ``ASKED_WINDOW_S``)."""
        turn = self._assistant
        if turn is None:
            self._count += 1
            turn = self._assistant = _Turn(f"live_turn_{self._count}", now)
            self._events.append(ResponseStarted(turn.id, self._recent(self.asked_at, now)))
            self.asked_at = self.continued_at = None
        turn.last_at = now
        return turn.id

    def transcript(self, caller: bool, delta: str, now: float) -> None:
        """A transcript fragment of the caller's speech or of the voice's."""
        if caller:
            turn = self._caller
            if turn is None:
                self._count += 1
                turn = self._caller = _Turn(f"live_caller_{self._count}", now)
                self._events.extend((CallerSpeechStarted(), CallerTurn(turn.id)))
            turn.last_at = now
            self._events.append(CallerTranscriptDelta(turn.id, delta))
        else:
            turn_id = self.assistant_speech(now)
            turn = self._assistant
            assert turn is not None
            self._events.append(AssistantTranscriptDelta(turn_id, delta))
        if turn.chars < MAX_TURN_CHARS:
            turn.parts.append(delta[: MAX_TURN_CHARS - turn.chars])
            turn.chars += len(turn.parts[-1])

    def close_quiet(self, now: float) -> None:
        """End each turn that has been quiet long enough at ``now`` (``float("inf")``: every open turn)."""
        caller, assistant = self._caller, self._assistant
        if caller is not None and now - caller.last_at >= CALLER_TURN_GAP_S:
            self._caller = None
            self._events.extend((CallerTranscriptDone(caller.id, "".join(caller.parts).strip()),
                                 CallerSpeechStopped()))
        if assistant is not None and now - assistant.last_at >= TURN_GAP_S:
            self.end_assistant_turn()

    def end_assistant_turn(self) -> None:
        """End the assistant's turn now: it has been quiet long enough, or the call asked for something new
        (what it says next is the answer)."""
        assistant, self._assistant = self._assistant, None
        if assistant is not None:
            text = "".join(assistant.parts).strip()
            self._events.extend((AssistantAudioDone(assistant.id), AssistantTranscriptDone(assistant.id, text),
                                 ResponseDone(assistant.id, "completed", (), spoke=True)))

    @property
    def speaking(self) -> bool:
        """An assistant turn is open."""
        return self._assistant is not None

    def waiting(self, now: float) -> bool:
        """A request or a tool continuation is waiting for the voice's next turn."""
        return self._recent(self.asked_at, now) or self._recent(self.continued_at, now)

    @staticmethod
    def _recent(at: float | None, now: float) -> bool:
        return at is not None and now - at < ASKED_WINDOW_S


@dataclass(slots=True)
class _Delegation:
    """One delegated backend response: its completed calls, and whether the voice spoke meanwhile."""

    calls: list[FunctionCall] = field(default_factory=list)
    voiced: bool = False


class ToolLedger:
    """The backend's function calls of one session: handed over once, answered once, within budget."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._delegations: dict[str | None, _Delegation] = {}
        self._handed: set[str] = set()
        self._answered: set[str] = set()
        self._stray: set[str] = set()
        """Calls the backend cut short (``status`` not ``completed``): not run, but answered with a
        placeholder if the service says it still waits for them."""
        self._budget = list(BACKEND_BUDGET)

    def voice_spoke(self) -> None:
        """The voice spoke while the delegations under way were running."""
        for delegation in self._delegations.values():
            delegation.voiced = True

    def on_backend(self, delegation_id: str | None, call: FunctionCall | None, call_status: str | None,
                   status: str | None) -> None:
        """One backend event: a function call item done (``call``), or a response finished (``status``:
        then a ``ResponseDone`` with its completed calls; a failed response's calls are refused)."""
        delegation = self._delegations.get(delegation_id)
        if delegation is None:
            if len(self._delegations) >= MAX_DELEGATIONS:
                del self._delegations[next(iter(self._delegations))]
            delegation = self._delegations[delegation_id] = _Delegation()
        if call is not None and call_status == "completed":
            if len(delegation.calls) < MAX_CALLS_PER_RESPONSE:
                delegation.calls.append(call)
        elif call is not None and call.call_id:
            self._stray.add(call.call_id)
        if status is None:
            return
        del self._delegations[delegation_id]
        calls = tuple(delegation.calls) if status == "completed" else ()
        self._handed.update(call.call_id for call in calls if call.call_id)
        self._events.append(ResponseDone(f"backend_{delegation_id}_{len(self._handed)}", status, calls,
                                         delegation.voiced))

    def answer(self, call_id: str, output: str) -> str:
        """Record ``call_id`` answered; returns the output to send: cut to ``MAX_OUTPUT_CHARS``, or
        ``PLACEHOLDER`` once the session's budget is spent."""
        self._answered.add(call_id)
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + " [cut]"
        size = len(output.encode())
        if self._budget[0] < 1 or self._budget[1] < size:
            output, size = PLACEHOLDER, len(PLACEHOLDER)
        self._budget[0] -= 1
        self._budget[1] -= size
        return output

    @property
    def all_answered(self) -> bool:
        """Every call handed over has its output (``response.create`` may go)."""
        return not self._handed - self._answered

    def strays(self) -> list[str]:
        """The cut-short calls not yet answered, now counted as answered (each gets ``PLACEHOLDER``)."""
        due = sorted(self._stray - self._answered)
        self._answered.update(due)
        return due

    @property
    def running(self) -> bool:
        """A delegated response is under way."""
        return bool(self._delegations)

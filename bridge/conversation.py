"""The conversation: what the call does with each model event.

Assistant audio goes to the phone output; a barge-in clears the phone and tells the session what the
caller heard; turns' texts go to the transcript and the observers; the model's function calls are run
and answered, then the model is asked for exactly one response (the goodbye after ``end_call``). The
decisions that need no I/O are in their own sans-I/O pieces: ``bridge.goodbye.Goodbye``,
``bridge.playback.Playback``, ``bridge.transcript.Transcript``, and the session's response slot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from bridge.events import CallCounts, CallEventKind
from bridge.goodbye import Goodbye
from bridge.latency import Latency
from bridge.output import PhoneOutput
from bridge.prompts import keypad_text
from bridge.tool_runner import ToolRunner
from bridge.transcript import Transcript, Turn
from bridge.upstream import Upstream
from model.session import (
    AssistantAudio,
    AssistantAudioDone,
    AssistantTranscriptDelta,
    AssistantTranscriptDone,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTranscriptDelta,
    CallerTranscriptDone,
    CallerTurn,
    FunctionCall,
    ModelError,
    ModelEvent,
    ResponseDone,
    ResponseStarted,
    ToolOutput,
    Truncation,
)
from redact import CallLog

Handler = Callable[[Any], Awaitable[None]]


class Conversation:
    """Handles one call's model events (``dispatch``), session after session.

    Args:
        interrupt_response: a barge-in leaves cancelling the turn to the service's VAD (Realtime
            ``interrupt_response``); False: the call cancels it.
        log_transcripts: one INFO line per finished turn with its text.
    """

    def __init__(
        self,
        output: PhoneOutput,
        upstream: Upstream,
        transcript: Transcript,
        goodbye: Goodbye,
        tools: ToolRunner,
        counts: CallCounts,
        *,
        interrupt_response: bool,
        log_transcripts: bool,
        log: CallLog,
        publish: Callable[..., None],
    ) -> None:
        self._output = output
        self._upstream = upstream
        self._transcript = transcript
        self._goodbye = goodbye
        self._tools = tools
        self._counts = counts
        self._interrupt_response = interrupt_response
        self._log_transcripts = log_transcripts
        self._log = log
        self._publish = publish
        self.caller_speaking = False
        self.latency = Latency()
        """How long the caller waited for the first word and for each answer."""
        self._speaking: str | None = None
        """The assistant turn under way (``ResponseStarted`` without its ``ResponseDone``)."""
        self._cut_by = "the caller"
        """Who cut the assistant last (the caller's barge-in, or the server's closing line), for the log."""
        self._logged_turns: dict[str, bool] = {}
        """Turns whose text has been logged, and whether as cut (a turn logged whole when generated gets
        one more line if the caller then cuts it)."""
        self._handlers: dict[type, Handler] = {
            AssistantAudio: self._on_audio,
            AssistantAudioDone: self._on_audio_done,
            CallerSpeechStarted: self._on_speech_started,
            CallerSpeechStopped: self._on_speech_stopped,
            CallerTurn: self._on_caller_turn,
            CallerTranscriptDelta: self._on_caller_delta,
            CallerTranscriptDone: self._on_caller_transcript,
            AssistantTranscriptDelta: self._on_transcript_delta,
            AssistantTranscriptDone: self._on_transcript_done,
            ResponseStarted: self._on_response_started,
            ResponseDone: self._on_response_done,
            ModelError: self._on_error,
        }

    async def dispatch(self, event: ModelEvent) -> None:
        """Handle one model event. An implementation's subclass of an event is handled as the event
        (looked up once per type)."""
        kind = type(event)
        handler = self._handlers.get(kind)
        if handler is None:
            handler = next((self._handlers[base] for base in kind.__mro__ if base in self._handlers), None)
            if handler is None:
                self._log.once_a_second(logging.DEBUG, kind.__name__, "model event %s ignored", kind.__name__)
                return
            self._handlers[kind] = handler
        await handler(event)

    async def cut(self, now: float, cancel: bool, by: str = "the caller") -> list[Truncation]:
        """Stop the assistant where the caller is: clear the phone, tell the session what was heard of
        each cut item (and, with ``cancel``, to stop its turn), and cut the transcript to match. ``by``:
        who cut it, for the log (``the caller`` on a barge-in, ``the server`` for a closing line)."""
        cuts = await self._output.clear(now)
        if self._upstream.session is not None:
            await self._upstream.session.interrupted(cuts, cancel)
        self._cut_by = by
        for cut in cuts:
            self._said(self._transcript.cut(cut.item_id, cut.audio_end_ms, cut.sent_ms))
        return cuts

    def session_replaced(self) -> None:
        """A new session took over: the caller's speech state and the old session's items are gone."""
        self.caller_speaking = False
        self._output.forget_items()

    async def on_key_presses(self, digits: str) -> None:
        """A DTMF sequence: one note for the model, and a response when none is under way (an answer in
        progress sees the note on its next turn)."""
        session = self._upstream.session
        if session is not None and not session.busy:
            await self._upstream.respond(keypad_text(digits))
        else:
            await self._upstream.note(keypad_text(digits))

    # -- model events --

    async def _on_audio(self, event: AssistantAudio) -> None:
        await self._output.capture(event.item_id, event.payload)
        if self.latency.waiting:
            self.latency.assistant_audio(time.monotonic())

    async def _on_audio_done(self, event: AssistantAudioDone) -> None:
        self._output.close_item(event.item_id)

    async def _on_speech_started(self, event: CallerSpeechStarted) -> None:
        """Barge-in: the caller spoke while assistant audio is queued at the phone."""
        self.caller_speaking = True
        self.latency.caller_resumed()
        await self._output.music.stop()
        now = time.monotonic()
        session = self._upstream.session
        if session is not None and not session.truncates:  # the model yields by itself (GPT-Live): nothing to cut
            if self._speaking is not None:  # its speech is told late, from the transcript: the turn is what counts
                self._counts.barge_ins += 1
                self._log.debug("barge-in: the caller spoke over the assistant")
                self._publish(CallEventKind.BARGE_IN, truncations=[])
            return
        if not self._output.is_playing(now):
            return
        self._counts.barge_ins += 1
        cuts = await self.cut(now, cancel=not self._interrupt_response)
        self._log.debug("barge-in truncations=%s", cuts)
        self._publish(CallEventKind.BARGE_IN, truncations=[asdict(cut) for cut in cuts])

    async def _on_speech_stopped(self, event: CallerSpeechStopped) -> None:
        self.caller_speaking = False
        session = self._upstream.session
        if session is not None and session.truncates:  # the service's VAD: the turn's end (GPT-Live: transcripts)
            self.latency.caller_turn_ended(time.monotonic())

    async def _on_caller_turn(self, event: CallerTurn) -> None:
        self._transcript.caller_committed(event.item_id)
        self._publish(CallEventKind.CALLER_TURN, item_id=event.item_id)

    async def _on_caller_delta(self, event: CallerTranscriptDelta) -> None:
        session = self._upstream.session
        if session is not None and not session.truncates:  # GPT-Live: its last fragment marks the turn's end
            self.latency.caller_turn_ended(time.monotonic())
        self._publish(CallEventKind.TRANSCRIPT_DELTA, role="user", item_id=event.item_id, delta=event.delta)

    async def _on_caller_transcript(self, event: CallerTranscriptDone) -> None:
        self._said(self._transcript.caller_said(event.item_id, event.transcript))

    async def _on_transcript_delta(self, event: AssistantTranscriptDelta) -> None:
        self._transcript.assistant_delta(event.item_id, event.delta)
        self._publish(CallEventKind.TRANSCRIPT_DELTA, role="assistant", item_id=event.item_id, delta=event.delta)

    async def _on_transcript_done(self, event: AssistantTranscriptDone) -> None:
        self._said(self._transcript.assistant_done(event.item_id, event.transcript))

    def _said(self, turn: Turn) -> None:
        """A turn's text is known (or, for a cut one, more of what went unheard): tell observers, and the
        log (``LOG_TRANSCRIPTS``) once per turn."""
        self._publish(CallEventKind.TRANSCRIPT, role=turn.role, item_id=turn.item_id, text=turn.text, cut=turn.cut,
                      unheard=turn.unheard)
        if not self._log_transcripts:
            return
        logged = self._logged_turns.get(turn.item_id)
        if logged is None:
            who = "caller" if turn.role == "user" else "assistant"
            self._log.info("%s said: %s%s", who, turn.text or "-", f" (cut off by {self._cut_by})" if turn.cut else "")
        elif turn.cut and not logged:  # logged whole when generated, then cut
            self._log.info("assistant cut off by %s; heard: %s", self._cut_by, turn.text or "-")
        self._logged_turns[turn.item_id] = turn.cut

    async def _on_response_started(self, event: ResponseStarted) -> None:
        self._speaking = event.response_id
        self._goodbye.on_response_created(event.response_id, event.asked)
        self._counts.responses += 1

    async def _on_response_done(self, event: ResponseDone) -> None:
        if event.response_id == self._speaking:
            self._speaking = None
        self._goodbye.on_response_done(event.response_id)
        calls = self._tools.new_calls(event.function_calls)
        if calls:
            self._tools.spawn(self._answer_calls(calls, event.spoke))
        elif self._tools.batches_running == 0:
            await self._output.music.stop()  # the answer after the tools came without audio

    async def _on_error(self, event: ModelError) -> None:
        self._counts.realtime_errors += 1
        api = self._upstream.api
        if event.harmless:
            self._log.debug("%s error %s (harmless)", api, event.code)
            return
        self._log.once_a_second(
            logging.WARNING, f"error {event.code}", "%s error type=%s code=%s message=%s",
            api, event.type, event.code, event.message,
        )
        self._publish(CallEventKind.REALTIME_ERROR, type=event.type, code=event.code, message=event.message)

    # -- tool calls --

    async def _answer_calls(self, calls: list[FunctionCall], spoke: bool) -> None:
        """Answer every function call of one turn, then ask for exactly one response.

        The calls run concurrently, with waiting music past the threshold; each gets an output (an error
        output when it fails), and only then is a response asked for (queued while another is active).
        After ``end_call`` that response is the goodbye, unless the turn that called it had already
        spoken (that was the goodbye).
        """
        generation = self._upstream.generation  # a replaced session's call_ids mean nothing to the next one
        music = self._output.music
        music.start()
        outputs = await self._tools.run(calls)
        if self._tools.batches_running == 0 and not music.playing:
            await music.cancel()  # done within the threshold: no music at all
        await self._upstream.live()  # a session being replaced: answer the new one
        names = {call.call_id: call.name for call in calls}
        texts = [(call_id, json.dumps(output, ensure_ascii=False)) for call_id, output in outputs]
        session = self._upstream.session
        assert session is not None
        if generation == self._upstream.generation:
            await session.answer_tools([ToolOutput(call_id, text) for call_id, text in texts])
        else:  # the session that made the calls is gone, and the new one knows no call_id
            for call_id, text in texts:
                await session.add_note(f"Your {names[call_id]} call returned: {text}")
        if self._goodbye.after_tools(spoke):
            await self._upstream.respond()

"""The call through an in-memory phone leg, and through an in-memory model session: no phone network, and in
the first test no stand-in server either."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging

import pytest
from support import make_config, speech, start_standin, until

import audio
from bridge.call import Call
from bridge.events import CallEvent, CallEventKind, Stats
from model.prices import TokenUsage
from model.session import (
    AssistantAudio,
    AssistantAudioDone,
    AssistantTranscriptDone,
    CallerSpeechStarted,
    CallerSpeechStopped,
    FunctionCall,
    ModelEvent,
    ResponseDone,
    ResponseStarted,
    SessionEnd,
    ToolOutput,
    Truncation,
    VoiceApi,
)
from phones.leg import PhoneAudio, PhoneEvent, PhoneStart, PhoneStop
from redact import CallLog
from standins.openai_service import AssistantTurn, client_event_problems


class MemoryLeg:
    """The smallest phone leg: events come from a queue, whatever the bridge sends is recorded."""

    network = "memory"

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[PhoneEvent | None] = asyncio.Queue()
        self.sent: list[tuple[str, str]] = []
        """("audio", base64 payload), ("mark", name) or ("clear", "") in the order sent."""
        self.close_code: int | None = None

    def __aiter__(self) -> MemoryLeg:
        return self

    async def __anext__(self) -> PhoneEvent:
        event = await self.inbox.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def send_audio(self, payload: str) -> None:
        self.sent.append(("audio", payload))

    async def send_mark(self, name: str) -> None:
        self.sent.append(("mark", name))

    async def clear(self) -> None:
        self.sent.append(("clear", ""))

    async def close(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.inbox.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    write_stalled = False
    unsent_bytes = 0

    def say(self, ulaw: bytes) -> None:
        """Caller audio, 20 ms frames, faster than real time (the service's VAD reads the audio, not the clock)."""
        for frame in audio.frames(ulaw):
            self.inbox.put_nowait(PhoneAudio(base64.b64encode(frame).decode()))

    def heard(self) -> bytes:
        """Every byte of audio sent to the phone, in order."""
        return b"".join(base64.b64decode(payload) for kind, payload in self.sent if kind == "audio")


class MemorySession:
    """The smallest model session (``model.session.ModelSession``): events come from a queue the test fills,
    whatever the call asks of it is recorded."""

    api = VoiceApi.REALTIME
    truncates = True
    paced_by_input = False

    def __init__(self, noise_reduction: str, log: CallLog) -> None:
        self.inbox: asyncio.Queue[ModelEvent | None] = asyncio.Queue()
        self.asked: list[tuple[str, object]] = []
        """("open"|"note"|"respond"|"tools"|"interrupted"|"noise"|"close", detail) in the order asked."""
        self.audio: list[str] = []
        self._noise_reduction = noise_reduction
        self.closed = False

    async def open(self, connect_timeout_s: float, configure_timeout_s: float) -> None:
        self.asked.append(("open", None))

    def __aiter__(self) -> MemorySession:
        return self

    async def __anext__(self) -> ModelEvent:
        event = await self.inbox.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def send_audio(self, payload: str) -> None:
        self.audio.append(payload)

    async def add_note(self, text: str) -> None:
        self.asked.append(("note", text))

    def replay(self, intro: str, turns: object) -> None:
        self.asked.append(("replay", turns))

    async def respond(self, instruction: str | None = None) -> None:
        self.asked.append(("respond", instruction))

    async def answer_tools(self, outputs: list[ToolOutput]) -> None:
        self.asked.append(("tools", list(outputs)))

    async def interrupted(self, cuts: list[Truncation], cancel: bool) -> None:
        self.asked.append(("interrupted", (list(cuts), cancel)))

    async def set_noise_reduction(self, mode: str) -> None:
        self.asked.append(("noise", mode))
        self._noise_reduction = mode

    @property
    def noise_reduction(self) -> str:
        return self._noise_reduction

    busy = False
    billed_seconds = None
    expires_at = None
    usage = TokenUsage()

    def overdue(self, now: float) -> str | None:
        return None

    @property
    def end(self) -> SessionEnd:
        return SessionEnd(1000, "-", False)

    async def close(self) -> None:
        self.closed = True
        self.inbox.put_nowait(None)

    def asked_for(self, kind: str) -> list[object]:
        return [detail for asked, detail in self.asked if asked == kind]


async def test_a_whole_call_in_memory_on_both_sides(stack: contextlib.AsyncExitStack) -> None:
    """Greeting, barge-in and a tool call with an in-memory phone leg and an in-memory model session: the call
    greets by name and asks for a response, plays the greeting with a mark after each message, clears the phone
    and reports what was heard when the caller speaks over it, runs the tool and answers it, then asks for
    the response that speaks the answer."""
    sessions: list[MemorySession] = []

    def make(noise_reduction: str, log: CallLog) -> MemorySession:
        sessions.append(MemorySession(noise_reduction, log))
        return sessions[-1]

    leg = MemoryLeg()
    events: list[CallEvent] = []
    call = Call(leg, make_config(tools=("update_mic_distance",)), Stats(), None, on_event=events.append,
                sessions=make)
    running = asyncio.create_task(call.run())
    stack.push_async_callback(_hang_up, leg, running)
    leg.inbox.put_nowait(PhoneStart("MEM-9", "CALL-9", {"caller_number": "+14155550100"}))
    await until(lambda: sessions and sessions[0].asked_for("respond"), what="the greeting asked for")
    [session] = sessions
    assert [kind for kind, _ in session.asked] == ["open", "respond"]
    assert "Jordan" in str(session.asked_for("respond")[0])

    greeting = (bytes(range(0, 0x7F)) * 126)[:16_000]  # 2 s
    session.inbox.put_nowait(ResponseStarted("resp_1", asked=True))
    for chunk in audio.frames(greeting, 800):
        session.inbox.put_nowait(AssistantAudio("item_1", base64.b64encode(chunk).decode()))
    session.inbox.put_nowait(AssistantAudioDone("item_1"))
    session.inbox.put_nowait(AssistantTranscriptDone("item_1", "Hello Jordan, how can I help?"))
    await until(lambda: leg.heard() == greeting, what="the greeting at the leg")
    kinds = [kind for kind, _ in leg.sent]
    assert kinds == ["audio", "mark"] * 20
    leg.say(audio.ULAW_SILENCE * 800)
    await until(lambda: len(session.audio) == 5, what="caller audio forwarded unchanged")
    assert base64.b64decode(session.audio[0]) == audio.ULAW_SILENCE * 160

    await asyncio.sleep(0.1)  # the caller hears 100 ms of the greeting, then speaks over it
    session.inbox.put_nowait(CallerSpeechStarted())
    await until(lambda: session.asked_for("interrupted"), what="the barge-in reported to the session")
    [(cuts, cancel)] = session.asked_for("interrupted")  # type: ignore[misc]
    [cut] = cuts
    assert (cut.item_id, cancel, cut.sent_ms) == ("item_1", False, 2000) and 100 <= cut.audio_end_ms < 1000
    assert leg.sent[-1] == ("clear", "")
    said = [e.data for e in events if e.kind is CallEventKind.TRANSCRIPT]
    assert said[-1]["cut"] is True and said[-1]["item_id"] == "item_1"

    session.inbox.put_nowait(CallerSpeechStopped())
    session.inbox.put_nowait(ResponseDone("resp_1", "cancelled", (), True))
    arguments = json.dumps({"mode": "far_field", "reason": "speaker"})
    session.inbox.put_nowait(ResponseStarted("resp_2", asked=False))
    session.inbox.put_nowait(ResponseDone("resp_2", "completed", (FunctionCall("call_1", "update_mic_distance",
                                                                               arguments),), False))
    await until(lambda: session.asked_for("tools"), what="the tool call answered")
    [outputs] = session.asked_for("tools")
    [output] = outputs  # type: ignore[misc]
    result = json.loads(output.output)
    assert (output.call_id, result["ok"], result["mode"]) == ("call_1", True, "far_field")
    assert session.asked_for("noise") == ["far_field"] and call.noise_reduction == "far_field"
    assert [kind for kind, _ in session.asked][-2:] == ["tools", "respond"]

    answer = bytes(range(1, 0x7F)) * 16
    session.inbox.put_nowait(ResponseStarted("resp_3", asked=True))
    session.inbox.put_nowait(AssistantAudio("item_2", base64.b64encode(answer).decode()))
    await until(lambda: leg.heard().endswith(answer), what="the answer after the tool call")
    assert [kind for kind, _ in leg.sent][-3:] == ["clear", "audio", "mark"]

    leg.inbox.put_nowait(PhoneStop())
    end = await asyncio.wait_for(running, 5)
    assert (end.reason, end.failed) == ("memory stop", False)
    assert session.closed and events[-1].data["counts"]["barge_ins"] == 1
    assert [e.kind for e in events if e.kind in (CallEventKind.TOOL_STARTED, CallEventKind.TOOL_FINISHED)] == [
        CallEventKind.TOOL_STARTED, CallEventKind.TOOL_FINISHED]


async def _hang_up(leg: MemoryLeg, running: asyncio.Task[object]) -> None:
    """Whatever the test did, the call ends and its task is awaited."""
    leg.inbox.put_nowait(None)
    await asyncio.wait_for(running, 10)


async def test_greeting_barge_in_and_tool_call_without_a_phone_network(stack: contextlib.AsyncExitStack) -> None:
    """A call through the bridge alone: the greeting reaches the leg with a mark after each delta, the caller's
    barge-in clears the leg and truncates the greeting, a tool call is answered and the answer spoken, and the
    hook hears it all in order."""
    greeting = bytes(range(0, 0x7F)) * 126  # 2 s, no µ-law silence byte
    answer = bytes(range(1, 0x7F)) * 16
    turns = [AssistantTurn(ulaw=greeting, transcript="Hello Jordan"),
             AssistantTurn(function_calls=[("update_mic_distance", {"mode": "far_field", "reason": "speaker"})]),
             AssistantTurn(ulaw=answer, transcript="Switched.")]
    standin, url = await start_standin(stack, turns)
    events: list[CallEvent] = []
    leg = MemoryLeg()
    stats = Stats()
    call = Call(leg, make_config(url, tools=("update_mic_distance",)), stats, None, on_event=events.append)
    running = asyncio.create_task(call.run())
    stack.push_async_callback(_hang_up, leg, running)
    leg.inbox.put_nowait(PhoneStart("MEM-1", "CALL-1", {"caller_number": "+1 415 555 0100"}))

    await until(lambda: leg.sent, what="greeting audio at the leg")
    await asyncio.sleep(0.05)  # the caller hears at least 50 ms of the 2 s greeting
    leg.say(speech("caller_interrupt") + audio.ULAW_SILENCE * 8000)
    await until(lambda: leg.heard().endswith(answer), what="the answer after the tool call")

    [session] = standin.sessions
    # The greeting: session.update first, the caller's name, audio unchanged with a mark after each delta.
    received = [event for _, event in session.received]
    assert received[0]["type"] == "session.update"
    assert "Jordan" in received[1]["item"]["content"][0]["text"]
    assert all(client_event_problems(event) == [] for event in received)
    kinds = [kind for kind, _ in leg.sent]
    first_clear = kinds.index("clear")
    assert kinds[:first_clear] == ["audio", "mark"] * (first_clear // 2)
    assert greeting.startswith(leg.heard()[: len(leg.heard()) - len(answer)])
    # The barge-in: one clear, and the greeting truncated where the bridge says the caller was.
    [truncate] = session.truncates
    greeting_item = next(iter(session.generated))
    assert (truncate.item_id, truncate.error) == (greeting_item, None)
    assert 50 <= truncate.audio_end_ms <= min(truncate.generated_ms, 2000)
    [barge_in] = [e for e in events if e.kind is CallEventKind.BARGE_IN]
    assert barge_in.data == {"truncations": [{"item_id": greeting_item, "audio_end_ms": truncate.audio_end_ms,
                                              "sent_ms": (len(leg.heard()) - len(answer)) // 8}]}
    # The tool call: answered once, applied, then one response.create that brought the answer.
    [output] = session.function_outputs
    result = json.loads(output["output"])
    assert (result["ok"], result["status"], result["mode"]) == (True, "applied", "far_field")
    assert session.session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert kinds.count("clear") == 1 and kinds[-2:] == ["audio", "mark"]
    # The events: transcripts (the caller's come whenever the transcription is ready) among the rest.
    await until(lambda: any(e.data.get("role") == "user" for e in events), what="the caller's transcript")
    said = [e.data for e in events if e.kind is CallEventKind.TRANSCRIPT]
    others = [e for e in events
              if e.kind not in (CallEventKind.TRANSCRIPT, CallEventKind.TRANSCRIPT_DELTA, CallEventKind.CALLER_TURN)]
    assert [e.kind for e in others] == [CallEventKind.STARTED, CallEventKind.BARGE_IN, CallEventKind.TOOL_STARTED,
                                        CallEventKind.TOOL_FINISHED]
    assert others[0].data == {"network": "memory", "caller": "+*******0100", "group": "primary", "call_sid": "CALL-1",
                              "direction": "inbound", "number": "+14155550100"}
    assert others[3].data["ok"] is True and others[3].data["name"] == "update_mic_distance"
    assert {e.stream_sid for e in events} == {"MEM-1"}
    assistant = {d["item_id"]: (d["text"], d["cut"]) for d in said if d["role"] == "assistant"}  # the last of each
    assert len(assistant) == 2 and next(iter(assistant)) == greeting_item
    assert assistant[greeting_item][1] and list(assistant.values())[1] == ("Switched.", False)
    [caller] = [d["text"] for d in said if d["role"] == "user"]
    assert caller.startswith("(caller speech ending at")  # the stand-in's transcript of the barge-in

    leg.inbox.put_nowait(PhoneStop())
    end = await asyncio.wait_for(running, 5)
    assert (end.reason, end.failed) == ("memory stop", False)
    assert events[-1].kind is CallEventKind.ENDED and events[-1].data["reason"] == "memory stop"
    assert events[-1].data["counts"]["barge_ins"] == 1
    assert leg.close_code == 1000 and (stats.active, stats.total, stats.errors) == (0, 1, 0)
    await until(lambda: session.ws.closed, what="the Realtime socket closed")


async def test_a_failing_hook_never_reaches_the_call(stack: contextlib.AsyncExitStack) -> None:
    """An observer that raises is logged once; the call goes on and ends normally."""
    _standin, url = await start_standin(stack, [AssistantTurn(ulaw=b"\x10" * 800)])
    leg = MemoryLeg()

    def broken(event: CallEvent) -> None:
        raise RuntimeError("observer bug")

    running = asyncio.create_task(Call(leg, make_config(url), Stats(), None, on_event=broken).run())
    leg.inbox.put_nowait(PhoneStart("MEM-2", "", {"caller_number": "+14155550100"}))
    await until(lambda: leg.sent, what="greeting audio despite the hook")
    leg.inbox.put_nowait(PhoneStop())
    end = await asyncio.wait_for(running, 5)
    assert (end.reason, end.failed) == ("memory stop", False)


async def test_restricted_caller_is_refused_before_upstream(stack: contextlib.AsyncExitStack) -> None:
    """A start for a caller on no allowlist closes the leg with 1008 and opens no Realtime session."""
    standin, url = await start_standin(stack)
    leg = MemoryLeg()
    running = asyncio.create_task(Call(leg, make_config(url), Stats(), None).run())
    leg.inbox.put_nowait(PhoneStart("MEM-3", "", {"caller_number": "+12125550123"}))
    end = await asyncio.wait_for(running, 5)
    assert (end.reason, end.failed, leg.close_code) == ("restricted caller", False, 1008)
    assert standin.sessions == []


async def test_a_closing_line_is_logged_as_the_servers_cut(stack: contextlib.AsyncExitStack,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A drain's closing line cuts what the assistant was saying: the log says the server cut it, not the caller,
    and the model is asked for the line."""
    caplog.set_level(logging.INFO)
    sessions: list[MemorySession] = []
    leg = MemoryLeg()
    call = Call(leg, make_config(), Stats(), None,
                sessions=lambda nr, log: sessions.append(MemorySession(nr, log)) or sessions[-1])
    running = asyncio.create_task(call.run())
    stack.push_async_callback(_hang_up, leg, running)
    leg.inbox.put_nowait(PhoneStart("MEM-5", "CALL-5", {"caller_number": "+14155550100"}))
    await until(lambda: sessions and sessions[0].asked_for("respond"), what="the greeting asked for")
    [session] = sessions
    session.inbox.put_nowait(AssistantAudio("item_1", base64.b64encode(b"\x10" * 16_000).decode()))
    session.inbox.put_nowait(AssistantTranscriptDone("item_1", "Hello Jordan, here is a long answer."))
    await until(lambda: leg.sent, what="the answer at the leg")
    await until(lambda: "assistant said" in caplog.text, what="the answer logged")
    await call.say_goodbye("server restarting", "Say you must hang up.")
    assert session.asked_for("respond")[-1] == "Say you must hang up." and leg.sent[-1] == ("clear", "")
    await until(lambda: "cut off by" in caplog.text, what="the cut logged")
    assert "assistant cut off by the server; heard: " in caplog.text and "by the caller" not in caplog.text


async def test_a_restricted_callers_prewarmed_session_is_closed_at_once(stack: contextlib.AsyncExitStack) -> None:
    """A stream whose token is good but whose caller is no longer allowed: refused 1008, and the session its
    webhook pre-warmed is closed now rather than at the token's expiry."""
    from bridge.prewarm import Prewarms
    from config import PrewarmMode
    from ops.tokens import StreamTokens

    sessions: list[MemorySession] = []

    def make(noise_reduction: str, log: CallLog) -> MemorySession:
        sessions.append(MemorySession(noise_reduction, log))
        return sessions[-1]

    prewarms = Prewarms(make, PrewarmMode.SESSION, "near_field")
    tokens = StreamTokens(b"key")
    parameters = tokens.issue("+12125550123", "CALL-R")  # the webhook admitted this number then
    prewarms.start(parameters["stream_nonce"], None, ttl_s=30)
    await until(lambda: sessions and sessions[0].asked_for("open"), what="the pre-warmed session")
    leg = MemoryLeg()
    call = Call(leg, make_config(), Stats(), tokens, sessions=make, prewarms=prewarms)  # the number is not listed
    running = asyncio.create_task(call.run())
    stack.push_async_callback(_hang_up, leg, running)
    leg.inbox.put_nowait(PhoneStart("MEM-R", "CALL-R", parameters))
    await until(lambda: leg.close_code == 1008, what="the refusal")
    assert sessions[0].closed and len(prewarms) == 0 and len(sessions) == 1

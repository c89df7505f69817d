"""How a call ends on purpose, and what an outbound call is for.

``Handoff`` owns the end of a call that someone chose to end: the assistant's goodbye after ``end_call``, the
server's closing line (a restart's drain), the message left on an answering machine, and the transfer of the
caller to a person (``transfer_call``). Each is a line the model speaks; once it has played, the call hangs up
or is put through. It also holds an outbound call's order: what the session is told (whom it calls and why, and
to wait for them to speak first) and what answering machine detection said.

The network's part (placing, redirecting, the detection callbacks) sits behind ``Switchboard``
(``phones.dialer.Dialer``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSCloseCode

from bridge.events import Ending, EndReason
from bridge.goodbye import GoodbyeState
from bridge.prompts import TRANSFER_FAILED_INSTRUCTION, outbound_brief, voicemail_instruction
from bridge.transcript import Turn
from bridge.upstream import until_voice_quiet
from callers import AllowedCaller, transfer_for
from config import Config, VoicemailMode
from model.session import CallBrief
from tools import ToolError

if TYPE_CHECKING:
    from bridge.call import Call

GOODBYE_RESPONSE_TIMEOUT_S = 15.0
"""After ``end_call``, how long the model has to finish its goodbye before the line closes anyway."""
TRANSFER_TOOL = "transfer_call"
GREETING_QUIET_WAIT_S = 3.0
"""After a machine's greeting has ended, how long the message waits at most for the model to stop hearing it."""
QUIET_POLL_S = 0.05


class Order(Protocol):
    """An outbound call's order, as the call reads it."""

    purpose: str
    callee: AllowedCaller


class Switchboard(Protocol):
    """The network side of outbound calls and transfers (``phones.dialer.Dialer``)."""

    def attach(self, order_id: str, call_sid: str, listener: Callable[[str], None]) -> Order | None:
        """The stream of ``order_id`` started: ``listener`` hears the detection verdict (``human``, ``machine``
        once a greeting has ended, ``fax``, ``unknown``). None: no such order, or it was taken."""
        ...

    async def transfer(self, network: str, call_sid: str, destination: str, summary: str | None) -> str | None:
        """Put the live call through; None once the network took it, else why not."""
        ...

    def can_transfer(self, network: str) -> bool:
        """Calls on ``network`` can be put through."""
        ...


def callee_replied(turns: list[Turn]) -> bool:
    """Someone answered the assistant: a caller turn (transcribed or not) after an assistant turn heard whole. A
    machine's greeting does not answer (and the assistant's words over it are cut by it)."""
    heard_whole = False
    for turn in turns:
        if turn.role == "assistant" and turn.final and not turn.cut and turn.text:
            heard_whole = True
        elif turn.role == "user" and heard_whole:
            return True
    return False


def transfer_destination(config: Config, switchboard: Switchboard | None, network: str,
                         caller: AllowedCaller) -> str | None:
    """Where ``transfer_call`` would put ``caller`` through: their group's destination, when the network can
    redirect the call; None: no transfers for this call."""
    if switchboard is None or not switchboard.can_transfer(network):
        return None
    return transfer_for(config, caller.group)


def call_brief(destination: str | None, purpose: str | None, caller: AllowedCaller,
               memory: str = "") -> CallBrief | None:
    """A call's brief: an outbound call's purpose, the caller's ``memory`` (``CALLER_MEMORY``), and
    ``transfer_call`` when it has a destination; None for a call with none of these. The webhook's pre-warmed
    session gets the same brief as the call's own."""
    tools = (TRANSFER_TOOL,) if destination else ()
    parts = (outbound_brief(purpose, caller.first_name) if purpose is not None else "", memory)
    instructions = "\n\n".join(part for part in parts if part)
    return CallBrief(instructions, tools) if instructions or tools else None


class Handoff:
    """The end of a call chosen by someone, and an outbound call's order (see the module).

    Args:
        call: the call it ends (its goodbye, upstream, output and conversation).
        switchboard: places and redirects calls; None: no outbound calls and no transfers.
    """

    __slots__ = (
        "_call",
        "_line_ending",
        "_redirecting",
        "_switchboard",
        "_tasks",
        "_transfer_reason",
        "destination",
        "order",
    )

    def __init__(self, call: Call, switchboard: Switchboard | None) -> None:
        self._call = call
        self._switchboard = switchboard
        self.order: Order | None = None
        self.destination: str | None = None  # where transfer_call puts this caller through (None: not offered)
        self._transfer_reason: str | None = None
        self._redirecting = False  # the network was asked to put the call through: the stream's end is the transfer
        self._line_ending: Ending | None = None  # the closing line's ending, once one is asked for
        self._tasks: set[asyncio.Task[None]] | None = None  # the answering machine's work, once a verdict came

    @property
    def greets(self) -> bool:
        """The assistant speaks first (an inbound call); an outbound call waits for the callee."""
        return self.order is None

    def admit(self, order_id: str) -> bool:
        """An outbound call's stream started with its token's order: False when this process has no such order
        (or another stream took it)."""
        if self._switchboard is None:
            return False
        self.order = self._switchboard.attach(order_id, self._call.call_sid, self._on_detection)
        return self.order is not None

    def brief(self, caller: AllowedCaller, memory: str = "") -> CallBrief | None:
        """What this call's sessions are told beyond the deployment's settings (``call_brief``)."""
        call = self._call
        self.destination = transfer_destination(call.config, self._switchboard, call.phone.network, caller)
        return call_brief(self.destination, self.order.purpose if self.order is not None else None, caller, memory)

    async def say_line(self, ending: Ending, instruction: str) -> None:
        """End the call after one short spoken line: what is playing is cut as by a barge-in (where the voice API
        can stop a turn: Realtime; GPT-Live's turn under way ends first), the model is asked for the line
        (``instruction``), and the call ends with ``ending`` once it has played. A call whose session
        is not ready ends now; one already saying its goodbye finishes it."""
        call = self._call
        if not call.session_ready:
            await call.close(ending.close_code or WSCloseCode.OK, ending.text, ending)
            return
        if not call.goodbye.request(ending.text, by_model=False):
            return
        self._line_ending = ending
        call.log.info("ending the call with a closing line: %s", ending.text)
        await call.output.music.stop()
        now = time.monotonic()
        session = call.upstream.session
        truncates = session is not None and session.truncates  # GPT-Live's turn cannot be stopped: it goes on
        if truncates and (call.output.is_playing(now) or self._voice_busy()):
            await call.conversation.cut(now, cancel=True, by="the server")
        call.goodbye.after_tools(spoke=False)
        await call.upstream.respond(instruction)

    def request_transfer(self, reason: str) -> str:
        """``transfer_call``: put the caller through once the assistant's line has played; returns whom the line
        names. Raises ToolError without a destination, or when the call is already ending."""
        call = self._call
        if self.destination is None:
            raise ToolError("transfers are not set up for this caller")
        if not call.goodbye.request(reason):
            raise ToolError("the call is already ending")
        self._transfer_reason = reason
        call.log.info("transfer_call reason=%s", reason)
        return "a colleague"

    async def run(self) -> Ending:
        """Wait for a goodbye, closing line or transfer line to be spoken and played, then end the call (or put
        it through). A transfer the network refuses is told to the caller, and the call goes on."""
        while True:
            await self._until_spoken()
            reason = self._transfer_reason
            if reason is None:
                goodbye = self._call.goodbye
                if goodbye.by_model:
                    return Ending(EndReason.END_CALL, str(goodbye.reason))
                return self._line_ending or Ending(EndReason.CLOSING_LINE, str(goodbye.reason))
            ending = await self._transfer(reason)
            if ending is not None:
                return ending

    def explain(self, ending: Ending) -> Ending:
        """The phone's stream ended (``ending``): while the network is putting the call through, that is the
        transfer (the network ends the stream before it answers the redirect)."""
        phone_ended = (EndReason.PHONE_STOP, EndReason.PHONE_CLOSED, EndReason.PHONE_HUNG_UP)
        if self._redirecting and ending.reason in phone_ended:
            return self._transferred()
        return ending

    async def close(self) -> None:
        tasks = list(self._tasks or ())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _until_spoken(self) -> None:
        """Wait for the line to be spoken, then for the phone to report its last mark (every byte played, or
        cleared by a barge-in). The safety deadline runs from the line's audio, not from the tool call."""
        call = self._call
        goodbye = call.goodbye
        while not goodbye.under_way:
            await call.goodbye_moved()
        try:
            async with asyncio.timeout(GOODBYE_RESPONSE_TIMEOUT_S):
                while goodbye.state is not GoodbyeState.SPOKEN:
                    await call.goodbye_moved()
        except TimeoutError:
            call.log.warning("no closing line within %.0f s of asking for it", GOODBYE_RESPONSE_TIMEOUT_S)
        await until_voice_quiet(call.upstream, GOODBYE_RESPONSE_TIMEOUT_S, call.log)
        await call.output.wait_for_playout("goodbye")

    async def _transfer(self, reason: str) -> Ending | None:
        call = self._call
        assert self._switchboard is not None and self.destination is not None
        summary = reason if call.config.transfer_whisper else None
        self._redirecting = True
        why = await self._switchboard.transfer(call.phone.network, call.call_sid, self.destination, summary)
        self._redirecting = why is None
        if why is None:
            call.log.info("call transferred")
            return self._transferred()
        call.log.warning("transfer failed (%s); the call goes on", why)
        self._transfer_reason = None
        call.goodbye.reset()
        await call.upstream.respond(TRANSFER_FAILED_INSTRUCTION)
        return None

    async def _leave_message(self, purpose: str) -> None:
        """Leave the message once the model no longer hears the greeting (the caller's turn has ended, or
        ``GREETING_QUIET_WAIT_S`` passed): a voice asked to speak while it still hears the caller yields to it. A
        voice already answering the greeting (told of voicemail in its brief) is leaving the message: the call
        hangs up once that turn has played."""
        call = self._call
        for _ in range(round(GREETING_QUIET_WAIT_S / QUIET_POLL_S)):  # polled: once per call, a second or two
            if not call.conversation.caller_speaking or self._voice_busy():
                break
            await asyncio.sleep(QUIET_POLL_S)
        ending = Ending(EndReason.VOICEMAIL, "answering machine: message left")
        if not self._voice_busy():
            await self.say_line(ending, voicemail_instruction(purpose))
        elif call.goodbye.request(ending.text, by_model=False):  # it answered the greeting: that turn is the message
            self._line_ending = ending
            call.log.info("the assistant's turn under way is the voicemail message; hanging up after it")
            call.goodbye.after_tools(spoke=True)

    def _transferred(self) -> Ending:
        return Ending(EndReason.TRANSFERRED, f"transferred: {self._transfer_reason}")

    def _voice_busy(self) -> bool:
        session = self._call.upstream.session
        return session is not None and session.busy

    def _on_detection(self, verdict: str) -> None:
        """Answering machine detection's verdict. A machine whose greeting has ended hears one short message
        about the purpose (``VOICEMAIL=leave``) or none (``hangup``, and any fax); ignored once the callee has
        answered the assistant, and for a human."""
        call = self._call
        if verdict not in ("machine", "fax"):
            return
        if callee_replied(call.transcript.turns()):
            call.log.info("answering machine detection said %s after the callee answered: ignored", verdict)
            return
        assert self.order is not None
        if verdict == "fax" or call.config.voicemail is VoicemailMode.HANGUP:
            ending = Ending(EndReason.VOICEMAIL, f"answering machine ({verdict}): hung up")
            work = call.close(WSCloseCode.OK, ending.text, ending)
        else:
            work = self._leave_message(self.order.purpose)
        task = asyncio.create_task(work, name="answering machine")
        self._tasks = self._tasks or set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

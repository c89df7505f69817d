"""The call: one phone call between a phone leg and a voice-model session, in owned parts.

``Call.run`` holds a call from the phone's start to the hang-up:

1. Wait for the phone's start; check its stream token and look the caller up again (a restricted
   one is refused, 1008).
2. ``Upstream`` (the session's lifetime) opens and configures the model session, caller audio held
   until it is ready; then the assistant greets the caller by name.
3. Two pumps: caller audio from the phone leg to the upstream (``_pump_phone``); model events from the
   upstream to the ``Conversation`` (``_pump_model``), which plays the assistant through the
   ``PhoneOutput``, handles barge-in, transcripts and tool calls.
4. ``Handoff`` ends the call once a goodbye (``end_call``), a closing line or a voicemail message has been
   spoken and has played, or puts the caller through to a person (``transfer_call``).
5. Whichever task ends first ends the call: the others are cancelled and awaited, both sockets closed.

Its parts, each the one owner of its state: ``PhoneOutput`` (what the caller hears), ``Upstream`` (the
model session), ``Conversation`` (what each model event does), ``ToolRunner``, ``KeyPresses``,
``Goodbye``, ``Handoff`` (the chosen end, an outbound call's order), ``Transcript``. Observers get typed
``bridge.events.CallEvent``s through one hook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

import openai
from aiohttp import WSCloseCode

from bridge.conversation import Conversation
from bridge.events import CallCounts, CallEnd, CallEventHook, CallEventKind, Ending, EndReason, HangUp, Publisher, Stats
from bridge.goodbye import Goodbye, GoodbyeState
from bridge.handoff import Handoff, Switchboard
from bridge.output import PhoneOutput
from bridge.prewarm import Prewarms
from bridge.prompts import KeyPresses, greeting_instruction
from bridge.tool_runner import ToolRunner
from bridge.transcript import Transcript
from bridge.upstream import Upstream
from bridge.watchdog import watch
from callers import AllowedCaller, email_for, find_callee, find_caller, mask_number
from config import Config, VoiceApi
from model.factory import session_factory
from model.prices import PriceTable
from model.session import ModelRefused, ModelUnavailable, SessionFactory
from model.websocket import RealtimeClient
from ops.tokens import StreamTokens
from phones.leg import PhoneAudio, PhoneDtmf, PhoneLeg, PhoneMarkPlayed, PhoneStart, PhoneStop
from redact import CallLog
from tools import ToolContext, ToolError

logger = logging.getLogger("bridge")
"""Every line of a call is logged under the package's name, whichever part of the call writes it."""

START_TIMEOUT_S = 10.0
"""How long the phone has to send its start after the websocket opens."""

def _report_end(call: Call, end: CallEnd) -> None:
    """The call's last log line and its ``ENDED`` event: counters, latency, usage and what it cost (USD, from the
    price table; None for a model it does not price)."""
    c, latency = call.counts, call.conversation.latency.summary()
    config = call.config
    model = config.live_model if call.upstream.api == VoiceApi.LIVE else config.realtime_model
    cost = call.prices.cost(model, c.usage, c.billed_s) if call.prices is not None else None
    call.log.info(
        "call ended call_sid=%s duration=%.1fs reason=%s frames_in=%d frames_out=%d marks_acked=%d "
        "responses=%d barge_ins=%d realtime_errors=%d sessions=%d%s first_word_ms=%s latency_p50_ms=%s%s",
        call.call_sid, end.duration_s, end.reason, c.frames_in, c.frames_out, c.marks_acked, c.responses,
        c.barge_ins, c.realtime_errors, c.sessions, f" billed_s={c.billed_s:.1f}" if c.billed_s else "",
        latency["first_word_ms"], latency["p50_ms"], f" cost_usd={cost:.4f}" if cost is not None else "",
    )
    call._publish(CallEventKind.ENDED, reason=end.reason, kind=str(end.kind), failed=end.failed,
                  duration_s=end.duration_s, counts=asdict(c), latency=latency, model=model, cost_usd=cost)


class Call:
    """One phone call bridged to the voice model; implements ``tools.CallControl`` for the tools.

    Args:
        phone: the phone leg.
        stream_tokens: checks the start's single-use token; None only for a leg the caller already
            trusts (tests).
        wait_music: base64 µ-law 20 ms frames played while a slow tool runs (empty: none).
        realtime_client: the process's pool of model websockets (``relay`` shares one); without one
            the call opens and closes its own.
        sessions: makes the call's model sessions; default: ``model.factory.session_factory``.
        prewarms: sessions opened at the webhook (``bridge.prewarm``); the stream's token names its own.
        prices: what the call's model costs (``model.prices``); None: not reckoned.
        switchboard: outbound calls' orders and transfers (``phones.dialer.Dialer``); None: neither.
        recall: what is remembered of a caller from earlier calls and texts (``store.memory``), by E.164 number;
            None: nothing (``CALLER_MEMORY`` off).
    """

    def __init__(
        self,
        phone: PhoneLeg,
        config: Config,
        stats: Stats,
        stream_tokens: StreamTokens | None,
        *,
        wait_music: tuple[str, ...] = (),
        openai_client: openai.AsyncOpenAI | None = None,
        realtime_client: RealtimeClient | None = None,
        on_event: CallEventHook | None = None,
        sessions: SessionFactory | None = None,
        prewarms: Prewarms | None = None,
        switchboard: Switchboard | None = None,
        prices: PriceTable | None = None,
        recall: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.phone = phone
        self.config = config
        self.stats = stats
        self.stream_tokens = stream_tokens
        self.stream_sid = ""
        self.call_sid = ""
        self.caller: AllowedCaller | None = None
        self.counts = CallCounts()
        self.prices = prices
        self._prewarms = prewarms
        self._recall = recall
        self._nonce = ""
        """The stream token's nonce: it names the session pre-warmed for this call."""
        self.log = CallLog(logger)
        self._publish = Publisher(on_event, self.log)
        self._close_code: int | None = None
        self._close_ending: Ending | None = None
        self._closing = asyncio.Event()
        self._goodbye_moved = asyncio.Event()
        self._own_client = None if realtime_client is not None or sessions is not None else RealtimeClient()
        self.transcript = Transcript()
        self.goodbye = Goodbye(self._goodbye_moved.set)
        self.output = PhoneOutput(phone, self.counts, (wait_music, config.wait_music_threshold_ms / 1000),
                                  self._on_music, self.log, config.max_queued_audio_s)
        self.upstream = Upstream(
            sessions or session_factory(config, realtime_client or self._own_client),  # type: ignore[arg-type]
            self.output, self.transcript, rollover_s=config.session_rollover_s, quiet=self._quiet,
            on_replaced=lambda: self.conversation.session_replaced(), noise_reduction=config.noise_reduction.value,
            stats=stats, counts=self.counts, log=self.log, publish=self._publish,
        )
        context = ToolContext(call=self, smtp=config.smtp, openai_client=openai_client,
                              web_search_model=config.web_search_model,
                              timeouts={"gpt_web_search": config.web_search_timeout_s})
        self.tools = ToolRunner(context, config.tools, self.log, self._publish)
        self.conversation = Conversation(
            self.output, self.upstream, self.transcript, self.goodbye, self.tools, self.counts,
            interrupt_response=config.vad_interrupt_response, log_transcripts=config.log_transcripts,
            log=self.log, publish=self._publish,
        )
        self.keys = KeyPresses(self.conversation.on_key_presses, self.log)
        self.handoff = Handoff(self, switchboard)

    @property
    def session_ready(self) -> bool:
        """The first session is configured (the caller is being greeted)."""
        return self.counts.sessions > 0

    async def run(self) -> CallEnd:
        """Serve the call until either side ends. Never raises (errors are logged)."""
        started = time.monotonic()
        self.stats.active += 1
        self.stats.total += 1
        try:
            ending = await self._run()
        except HangUp as hang_up:
            ending = hang_up.ending
        except Exception:
            ending = Ending(EndReason.INTERNAL_ERROR, "internal error", failed=True)
            self.log.exception("call failed")
        finally:
            self.stats.active -= 1
        self.stats.errors += ending.failed
        await self._close(ending)
        end = CallEnd(ending.text, ending.failed, time.monotonic() - started, ending.reason)
        if self.stream_sid:
            _report_end(self, end)
        return end

    async def say_goodbye(self, reason: str, instruction: str) -> None:
        """End the call from outside after one short spoken line (a restart's drain timeout), closing 1001 going
        away (``Handoff.say_line``)."""
        self._close_code = WSCloseCode.GOING_AWAY
        if not self.session_ready:
            await self.close(WSCloseCode.GOING_AWAY, reason)
            return
        await self.handoff.say_line(Ending(EndReason.CLOSING_LINE, reason, close_code=WSCloseCode.GOING_AWAY),
                                    instruction)

    async def close(self, code: int, reason: str, ending: Ending | None = None) -> None:
        """End the call from outside: close the phone socket with ``code``; the call ends with ``ending``
        (default: the server is shutting down)."""
        self._close_code = code
        self._close_ending = ending
        self._closing.set()
        await self.phone.close(code, reason)

    async def _run(self) -> Ending:
        refused = await self._admit()
        if refused is not None:
            return refused
        tasks = [
            asyncio.create_task(self._pump_phone(), name="phone->model"),
            asyncio.create_task(self._pump_model(), name="model->phone"),
            asyncio.create_task(watch(self.phone, self.counts, self.upstream, self.log), name="watchdog"),
            asyncio.create_task(self.handoff.run(), name="hang up"),
            asyncio.create_task(self.upstream.rollover_when_due(), name="session rollover"),
            asyncio.create_task(self._closing.wait(), name="close request"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, self.tools.close(), self.keys.close(), self.handoff.close(),
                                 return_exceptions=True)
            await self.output.close()
        if self._closing.is_set():  # the close also ends the phone pump: report the cause
            return self._close_ending or Ending(EndReason.SHUTTING_DOWN, "server shutting down")
        finished = done.pop()
        exc = finished.exception()
        if exc is not None:
            raise exc
        ending: Ending = finished.result()
        return self.handoff.explain(ending)

    async def _admit(self) -> Ending | None:
        """The phone's start, its stream token and the caller: None when the call may go on."""
        network = self.phone.network
        start = await self._await_start()
        if start is None:
            return Ending(EndReason.NO_START, f"no start from {network}")
        self.stream_sid, self.call_sid = start.stream_sid, start.call_sid
        self.conversation.latency.stream_started(time.monotonic())
        self._publish.stream_sid = start.stream_sid
        self.log.extra.update(stream_sid=start.stream_sid, call_sid=start.call_sid)  # type: ignore[union-attr]
        number = start.custom_parameters.get("caller_number")
        if self.stream_tokens is not None:
            verdict = await self.stream_tokens.spend(start.custom_parameters, start.call_sid)
            if verdict.caller_number is None:
                self.log.warning("media stream refused: %s", verdict.reason)
                await self.phone.close(WSCloseCode.POLICY_VIOLATION, "invalid stream token")
                return Ending(EndReason.INVALID_TOKEN, "invalid stream token")
            number = verdict.caller_number
            self._nonce = start.custom_parameters.get("stream_nonce", "")
            if verdict.order and not self.handoff.admit(verdict.order):
                self.log.warning("media stream refused: no outbound order %s here", verdict.order)
                await self.phone.close(WSCloseCode.POLICY_VIOLATION, "unknown order")
                return Ending(EndReason.INVALID_TOKEN, "unknown outbound order")
        outbound = not self.handoff.greets  # the allowlists again: they may have changed
        self.caller = find_callee(self.config, number or "") if outbound else find_caller(self.config, number)
        if self.caller is None:
            self.log.warning("media stream for a restricted caller refused")
            if self._prewarms is not None and self._nonce:  # its pre-warmed session is of no use now
                await self._prewarms.discard(self._nonce)
            await self.phone.close(WSCloseCode.POLICY_VIOLATION, "restricted")
            return Ending(EndReason.RESTRICTED, "restricted caller")
        self.tools.context.email_to = email_for(self.config, self.caller.group)
        self.upstream.caller_name = self.caller.first_name or "the caller"
        memory = await self._recall(self.caller.number) if self._recall is not None else ""
        self.upstream.brief = self.handoff.brief(self.caller, memory)
        direction = "outbound" if outbound else "inbound"
        self.log.info("call started call_sid=%s network=%s direction=%s caller=%s group=%s", self.call_sid, network,
                      direction, mask_number(self.caller.number), self.caller.group)
        self._publish(CallEventKind.STARTED, network=network, caller=mask_number(self.caller.number),
                      group=str(self.caller.group), call_sid=self.call_sid, direction=direction,
                      number=self.caller.number)
        return None

    async def _await_start(self) -> PhoneStart | None:
        """Read phone events until the start (anything before it is ignored); None on timeout or close."""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                async for event in self.phone:
                    if type(event) is PhoneStart:
                        return event
        except TimeoutError:
            logger.warning("no %s start within %.0fs; closing", self.phone.network, START_TIMEOUT_S)
        return None

    async def _pump_phone(self) -> Ending:
        """Forward caller audio and account mark echoes until the phone stops or closes."""
        send_audio, network = self.upstream.send_audio, self.phone.network
        async for event in self.phone:
            if type(event) is PhoneAudio:  # the hot path: 50 a second
                self.counts.frames_in += 1
                await send_audio(event.payload)
            elif type(event) is PhoneMarkPlayed:
                self.output.on_mark(event.name, time.monotonic())
            elif type(event) is PhoneStop:
                return Ending(EndReason.PHONE_STOP, f"{network} stop")
            elif type(event) is PhoneDtmf:
                self.log.debug("dtmf %s", event.digit)
                self.keys.press(event.digit)
                self._publish(CallEventKind.DTMF, digit=event.digit)
            else:
                self.log.debug("%s %s ignored after start", network, type(event).__name__)
        return Ending(EndReason.PHONE_CLOSED, f"{network} closed")

    async def _pump_model(self) -> Ending:
        """Open the session and greet the caller, then hand model events to the conversation, session
        after session; when none can be had, the caller hears the apology and the call ends."""
        prewarms = self._prewarms
        greets = self.handoff.greets
        prewarmed = await prewarms.take(self._nonce) if prewarms is not None and self._nonce and greets else None
        try:
            await self.upstream.start(prewarmed)
        except ModelUnavailable as exc:
            unavailable = Ending(EndReason.MODEL_UNAVAILABLE, f"{self.upstream.api} unavailable")
            return await self.upstream.lost(str(exc), unavailable)
        if greets and (prewarmed is None or not prewarmed.greeted):
            name = self.caller.first_name if self.caller else None
            await self.upstream.respond(greeting_instruction(name or "there"))
        try:
            return await self.upstream.serve(self.conversation.dispatch, lambda: self.goodbye.under_way)
        except ConnectionResetError:  # the caller hung up while audio was being sent: a normal end
            return Ending(EndReason.PHONE_HUNG_UP, f"{self.phone.network} hung up")

    async def goodbye_moved(self) -> None:
        """Return at the goodbye's next move (``Goodbye``'s ``on_change``)."""
        self._goodbye_moved.clear()
        await self._goodbye_moved.wait()

    def _quiet(self, now: float) -> bool:
        """The call is quiet for a rollover: the caller not speaking, no tool running, no goodbye under
        way, nothing left to play."""
        return (not self.conversation.caller_speaking and self.tools.batches_running == 0
                and self.goodbye.state is GoodbyeState.NONE and not self.output.is_playing(now))

    async def _close(self, ending: Ending) -> None:
        await self.upstream.close()
        if self._own_client is not None:
            await self._own_client.close()
        if not self.phone.closed:
            await self.phone.close(ending.close_code or self._close_code or WSCloseCode.OK)

    def _on_music(self, playing: bool) -> None:
        self.log.debug("wait music %s", "started" if playing else "stopped")
        self._publish(CallEventKind.MUSIC_STARTED if playing else CallEventKind.MUSIC_STOPPED)

    # CallControl (what tools.py may ask of this call)

    @property
    def noise_reduction(self) -> str:
        """The noise reduction the service has confirmed (near_field, far_field, off)."""
        session = self.upstream.session
        return session.noise_reduction if session is not None else self.config.noise_reduction.value

    def hang_up_after_goodbye(self, reason: str) -> None:
        """Hang up once the goodbye has played (``Handoff.run``)."""
        if self.goodbye.request(reason):
            self.log.info("end_call reason=%s", reason)

    def transfer_after_line(self, reason: str) -> str:
        """Put the caller through once the line has played (``Handoff.request_transfer``)."""
        return self.handoff.request_transfer(reason)

    async def switch_noise_reduction(self, mode: str) -> None:
        """Switch the model session's noise reduction; returns once the service confirms ``mode``.
        Raises ToolError on refusal or no confirmation."""
        session = self.upstream.session
        if session is None:
            raise ToolError("no session to switch")
        try:
            await session.set_noise_reduction(mode)
        except ModelRefused as exc:
            raise ToolError(str(exc)) from None

"""Whom a placed call reaches: a person or an answering machine, behind the REST stand-ins.

``Callees`` runs each call the relay places (``TwilioRestStandIn.on_call``, ``PlivoRestStandIn.on_call``) as
the network would: the progress callbacks (signed), the callee's ``PhoneCaller`` on the stream the call carries
(Twilio: the TwiML sent with it; Plivo: the answer URL's XML), answering machine detection's verdict once the
callee's first utterance has ended (a machine: its greeting and beep), and the end. A transfer (Twilio
``calls(sid).update`` with a ``<Dial>``; Plivo's ``aleg_url``) is recorded in ``dials`` and ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from standins.phone_dialects import (
    CallFailed,
    Plivo,
    Twilio,
    plivo_signature_headers,
    twilio_signature,
)
from standins.phone_network import CallerTurn, Line, PhoneCaller, Timeline


@dataclass(slots=True)
class CalleeScript:
    """What the callee does once it picks up."""

    turns: list[CallerTurn]
    hangup: dict[str, Any] = field(default_factory=lambda: {"by": "assistant"})
    answered_by: str = "human"
    """Twilio's ``AnsweredBy`` verdict (``human``, ``machine_end_beep``, ``fax``...); Plivo hears ``Machine``."""
    detection_delay_ms: int = 300
    """How long after the callee's first utterance ends the verdict comes."""
    max_duration_s: float = 90.0


class Callees:
    """The callees of the calls a relay places, on both networks' REST stand-ins.

    Args:
        auth_token: signs the callbacks as the network would (Twilio's auth token, or Plivo's).
        script: what every callee does.
        resolve: which assistant item a payload carries (the Realtime stand-in's ``resolve``).
    """

    def __init__(self, http: aiohttp.ClientSession, auth_token: str, script: CalleeScript, timeline: Timeline,
                 resolve: Callable[[str], tuple[str, int] | None] | None = None, line: Line | None = None) -> None:
        self.http = http
        self.auth_token = auth_token
        self.script = script
        self.timeline = timeline
        self.resolve = resolve
        self.line = line
        self.callers: dict[str, PhoneCaller] = {}
        """The callee's phone by call id (Twilio ``CallSid``, Plivo ``CallUUID``); a test may add an inbound one."""
        self.callbacks: list[tuple[str, dict[str, str], int]] = []
        """``(url, form, HTTP status)`` of every callback sent to the relay."""
        self.dials: list[str] = []
        """The ``<Dial>`` documents transfers received."""
        self.failures: list[BaseException] = []
        self.live: set[str] = set()
        """Plivo ``CallUUID``s in progress (share it as ``PlivoRestStandIn.live``)."""
        self.ended = asyncio.Event()

    # -- Twilio --

    async def twilio(self, call: dict[str, Any]) -> None:
        """``TwilioRestStandIn.on_call``: ring, answer, stream, detect, end."""
        form, sid = call["_form"], call["sid"]
        base = {"CallSid": sid, "AccountSid": call["account_sid"], "From": form["From"], "To": form["To"],
                "Direction": "outbound-api"}
        status_url = form.get("StatusCallback", "")
        events = form.get("StatusCallbackEvent", "").split()
        for status, event in (("initiated", "initiated"), ("ringing", "ringing"), ("in-progress", "answered")):
            call["status"] = status
            if event in events:
                await self._post_twilio(status_url, {**base, "CallStatus": status})
        network = Twilio()
        network.messages.call_sid = sid
        answer = network.read_answer(form["Twiml"])
        amd = form.get("AsyncAmdStatusCallback", "")

        def verdict() -> dict[str, str]:
            return {**base, "AnsweredBy": self.script.answered_by, "MachineDetectionDuration": "2300"}

        await self._run(sid, network, form["To"], answer, lambda: self._post_twilio(amd, verdict()))
        call["status"] = "completed"
        await self._post_twilio(status_url, {**base, "CallStatus": "completed", "CallDuration": "10"})
        self.ended.set()

    async def twilio_update(self, call: dict[str, Any], form: dict[str, str]) -> None:
        """``TwilioRestStandIn.on_update``: new TwiML replaces the stream (a ``<Dial>``: the transfer)."""
        twiml = form.get("Twiml", "")
        if "<Dial" in twiml:
            self.dials.append(twiml)
        caller = self.callers.get(call["sid"])
        if caller is not None and twiml:
            await caller.end_stream(f"call updated: {twiml}")

    async def _post_twilio(self, url: str, params: dict[str, str]) -> None:
        if url:
            await self._post(url, params, {"X-Twilio-Signature": twilio_signature(self.auth_token, url, params)})

    # -- Plivo --

    async def plivo(self, body: dict[str, Any]) -> None:
        """``PlivoRestStandIn.on_call``: fetch the answer URL, stream, detect, then the hangup URL."""
        call_uuid, request_uuid = str(uuid.uuid4()), body["_request_uuid"]
        base = {"CallUUID": call_uuid, "RequestUUID": request_uuid, "From": body["from"], "To": body["to"],
                "Direction": "outbound"}
        network = Plivo()
        network.messages.call_id = call_uuid
        xml = await self._post_plivo(body["answer_url"], {**base, "CallStatus": "in-progress"})
        try:
            answer = network.read_answer(xml)
        except CallFailed as exc:
            self.failures.append(exc)
            self.ended.set()
            return
        machine = "false" if self.script.answered_by == "human" else "true"
        detection = body.get("machine_detection_url", "")
        self.live.add(call_uuid)
        await self._run(call_uuid, network, "+" + body["to"], answer,
                        lambda: self._post_plivo(detection, {**base, "Machine": machine}))
        self.live.discard(call_uuid)
        await self._post_plivo(body.get("hangup_url", ""), {**base, "CallStatus": "completed", "Duration": "10"})
        self.ended.set()

    async def plivo_update(self, call_uuid: str, body: dict[str, Any]) -> None:
        """``PlivoRestStandIn.on_update``: the A leg fetches ``aleg_url`` (the ``<Dial>``) and leaves the stream."""
        xml = await self._post_plivo(body.get("aleg_url", ""), {"CallUUID": call_uuid, "CallStatus": "in-progress"})
        if "<Dial" in xml:
            self.dials.append(xml)
        caller = self.callers.get(call_uuid)
        if caller is not None:
            await caller.end_stream(f"call transferred: {xml}")

    async def _post_plivo(self, url: str, params: dict[str, str]) -> str:
        if not url:
            return ""
        return await self._post(url, params, plivo_signature_headers(self.auth_token, "POST", url, params))

    # -- both --

    async def _run(self, call_id: str, network: Twilio | Plivo, number: str, answer: Any,
                   detect: Callable[[], Any]) -> None:
        script = self.script
        caller = PhoneCaller(network, number, script.turns, script.hangup, script.max_duration_s, self.timeline,
                             auth_token=self.auth_token, resolve=self.resolve, line=self.line)
        self.callers[call_id] = caller
        self.timeline.add(network.name, f"callee {number} picks up")
        detection = asyncio.create_task(self._detect(caller, detect))
        try:
            await caller.run(self.http, "", answer)
        except (CallFailed, aiohttp.ClientError) as exc:
            self.failures.append(exc)
        finally:
            detection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await detection

    async def _detect(self, caller: PhoneCaller, detect: Callable[[], Any]) -> None:
        """The verdict, ``detection_delay_ms`` after the callee's first utterance has gone down the line."""
        await caller.script.first_utterance_sent()
        await asyncio.sleep(self.script.detection_delay_ms / 1000)
        self.timeline.add(caller.network.name, f"answering machine detection: {self.script.answered_by}")
        await detect()

    async def _post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> str:
        started = time.monotonic()
        try:
            async with self.http.post(url, data=params, headers=headers) as resp:
                text = await resp.text()
                self.callbacks.append((url, params, resp.status))
                return text
        except aiohttp.ClientError as exc:
            self.failures.append(exc)
            self.callbacks.append((url, params, 0))
            return ""
        finally:
            if time.monotonic() - started > 5:
                self.failures.append(TimeoutError(f"callback {url} took over 5 s"))

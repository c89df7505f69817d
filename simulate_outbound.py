"""``python simulate.py --outbound human|machine``: the relay places a call, offline, and a scripted callee
answers it.

The relay starts here with the OpenAI stand-ins and a stand-in for the network's REST API (Twilio's Calls
resource, or Plivo's); ``POST /calls`` places the call. The stand-in rings the callee (``standins.callee``): a
person who says hello first (``human``), or an answering machine that plays its greeting and a beep
(``machine``), answering machine detection's verdict following. The call is then checked like an inbound one:
the assistant spoke only after the callee, and hung up itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import relay
import simulate
from config import Config, VoiceApi
from standins.callee import Callees, CalleeScript
from standins.openai_service import RealtimeStandIn, realtime_standin
from standins.phone_dialects import CallFailed
from standins.phone_network import Line, PhoneCaller, Timeline
from standins.plivo_rest import PlivoRestStandIn, plivo_rest_standin
from standins.scenario import Scenario, load_scenario
from standins.twilio_rest import TwilioRestStandIn, twilio_rest_standin

HERE = Path(__file__).resolve().parent
SCENARIOS = {kind: HERE / "scenarios" / f"outbound_{kind}.json" for kind in ("human", "machine")}
VERDICTS = {"human": "human", "machine": "machine_end_beep"}
"""Answering machine detection's verdict for each kind of callee (Twilio's ``AnsweredBy``)."""
OUR_NUMBER = "+14155550199"
"""The number placed calls come from (``TWILIO_PHONE_NUMBER``, ``PLIVO_PHONE_NUMBER``)."""
PURPOSE = "Remind Jordan about the 3 pm dentist appointment today."


@dataclass
class OutboundRig:
    """A relay that places calls through REST stand-ins, with the callees behind them."""

    relay_url: str
    config: Config
    standin: RealtimeStandIn
    rest: TwilioRestStandIn | PlivoRestStandIn
    callees: Callees
    http: aiohttp.ClientSession

    async def place(self, to: str, purpose: str = PURPOSE, network: str | None = None,
                    token: str | None = None) -> tuple[int, dict[str, Any]]:
        """``POST /calls`` with the console token as a Bearer token; the status and the JSON answer."""
        body: dict[str, Any] = {"to": to, "purpose": purpose, **({"network": network} if network else {})}
        headers = {"Authorization": f"Bearer {token or self.config.console_token}"}
        async with self.http.post(self.relay_url + "/calls", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def _rest_standin(stack: contextlib.AsyncExitStack, phone: str,
                        callees: Callees) -> tuple[TwilioRestStandIn | PlivoRestStandIn, dict[str, Any]]:
    """The network's REST stand-in on loopback (``twilio`` or ``plivo``) with ``callees`` behind it (the calls
    placed, the transfers), signing with their auth token; and the relay settings that reach it."""
    token = callees.auth_token
    if phone == "plivo":
        auth_id = "MA" + secrets.token_hex(9).upper()
        plivo, origin = await stack.enter_async_context(plivo_rest_standin(auth_id, token))
        plivo.on_call, plivo.on_update, plivo.live = callees.plivo, callees.plivo_update, callees.live
        return plivo, {"plivo_auth_id": auth_id, "plivo_api_base_url": origin, "plivo_phone_number": OUR_NUMBER}
    account = "AC" + secrets.token_hex(16)
    twilio, origin = await stack.enter_async_context(twilio_rest_standin(account, token))
    twilio.on_call, twilio.on_update = callees.twilio, callees.twilio_update
    return twilio, {"twilio_account_sid": account, "twilio_api_base_url": origin, "twilio_phone_number": OUR_NUMBER}


@contextlib.asynccontextmanager
async def outbound_rig(scenario: Scenario, callee: CalleeScript, phone: str = "twilio",
                       voice_api: VoiceApi = VoiceApi.REALTIME, timeline: Timeline | None = None,
                       seed: int | None = None, **overrides: Any) -> AsyncIterator[OutboundRig]:
    """Start the stand-ins and a relay that can place calls on ``phone`` (``twilio`` or ``plivo``)."""
    timeline = timeline or Timeline()
    token = secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        standin, realtime_url = await stack.enter_async_context(
            realtime_standin(scenario.assistant, timeline.add, seed, scenario.web_search))
        standin.caller_transcripts = scenario.caller_words()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        line = Line(scenario.network_delay_ms, scenario.network_jitter_ms, scenario.line_noise_dbfs, seed or 0)
        callees = Callees(http, token, callee, timeline, standin.resolve, line)
        rest, network = await _rest_standin(stack, phone, callees)
        port = simulate.free_port()
        values: dict[str, Any] = {
            "port": port, "public_url": f"http://127.0.0.1:{port}", "twilio_auth_token": token,
            "plivo_auth_token": token, "console_token": secrets.token_urlsafe(18),
            "primary_numbers": (scenario.caller_number,), "primary_first_name": scenario.caller_name, **network,
        }
        config = simulate.relay_config(realtime_url, **{**values, "voice_api": voice_api, **overrides})
        relay_url = await stack.enter_async_context(relay.serving(config, port=port))
        yield OutboundRig(relay_url, config, standin, rest, callees, http)


async def simulate_outbound(kind: str, phone: str = "twilio", voice_api: VoiceApi = VoiceApi.REALTIME,
                            timeline: Timeline | None = None, seed: int | None = None,
                            scenario: Scenario | None = None) -> simulate.CallResult:
    """Place one call to a scripted ``human`` or ``machine`` and check it."""
    scenario = scenario or load_scenario(SCENARIOS[kind])
    timeline = timeline or Timeline()
    callee = CalleeScript(scenario.caller, scenario.hangup, VERDICTS[kind], max_duration_s=scenario.max_duration_s)
    async with outbound_rig(scenario, callee, phone, voice_api, timeline, seed) as rig:
        timeline.t0 = time.monotonic()  # the call begins now, the relay being up
        timeline.add("operator", f"POST /calls to {scenario.caller_number}: {PURPOSE!r}")
        status, body = await rig.place(scenario.caller_number)
        timeline.add("relay", f"answered {status} {body}")
        problems = [] if status == 202 else [f"POST /calls answered {status}: {body}"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(scenario.max_duration_s):
                await rig.callees.ended.wait()
        callers = list(rig.callees.callers.values())
        if not callers:
            raise CallFailed("; ".join([*problems, "the callee's phone never rang"]))
        caller = callers[0]
        problems += [str(exc) or type(exc).__name__ for exc in rig.callees.failures]
        problems += simulate.check_call(caller, rig.standin, scenario, voice_api)
        problems += spoke_first(caller)
        return simulate.CallResult(timeline, caller, rig.standin, problems, len(caller.barge_ins))


@contextlib.asynccontextmanager
async def rest_network(phone: str, register: bool = True) -> AsyncIterator[tuple[Any, Callees, dict[str, Any]]]:
    """The network's REST stand-in and the callees behind it, for a call dialled in (``simulate.simulate_call``):
    yields the stand-in, the callees and the keyword arguments that point a relay at them (REST credentials and
    base URL, the number, the auth token both sign with, and ``before_call``, which registers the call with the
    network: unregistered (``register`` False), a redirect of it is refused 404)."""
    token = secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        callees = Callees(http, token, CalleeScript([]), Timeline())
        rest, settings = await _rest_standin(stack, phone, callees)

        def before_call(caller: PhoneCaller, _url: str) -> None:
            messages = caller.network.messages
            sid = messages.call_id if isinstance(rest, PlivoRestStandIn) else messages.call_sid  # type: ignore[union-attr]
            callees.callers[sid] = caller
            if register and isinstance(rest, PlivoRestStandIn):
                callees.live.add(sid)
            elif register:
                rest.add_call(sid, OUR_NUMBER, caller.number)

        yield rest, callees, {"auth_token": token, "before_call": before_call, **settings}


async def simulate_transfer(scenario: Scenario, phone: str = "twilio", voice_api: VoiceApi = VoiceApi.REALTIME,
                            timeline: Timeline | None = None, seed: int | None = None) -> simulate.CallResult:
    """A call dialled in whose scenario ends with a transfer (``transfer_to``): the network's REST stand-in takes
    the redirect and shows the ``<Dial>``; the call passes when the caller was put through."""
    async with rest_network(phone) as (_rest, callees, settings):
        result = await simulate.simulate_call(scenario, seed=seed, phone=phone, timeline=timeline, voice_api=voice_api,
                                              transfer_to=scenario.transfer_to, **settings)
        if not callees.dials:
            result.problems.append("the network received no <Dial>: the caller was not put through")
        return result


def spoke_first(caller: PhoneCaller) -> list[str]:
    """The callee spoke before any assistant audio reached them (a placed call does not greet into a
    voicemail greeting); the problem otherwise."""
    first_audio = next((c.start for c in caller.playback.chunks if not c.music), None)
    connected = caller.connected_at
    first_word = connected + caller.spoken[0].start_ms / 1000 if caller.spoken and connected is not None else None
    if first_audio is not None and (first_word is None or first_audio < first_word):
        return ["the assistant spoke before the callee did"]
    return []


STANDIN_TOKEN = "standin-auth-token"
"""The auth token of the stand-in networks the two-terminal recipe serves (the relay is given it)."""


@contextlib.asynccontextmanager
async def network_standins(app: web.Application, kind: str, timeline: Timeline,
                           resolve: Any) -> AsyncIterator[list[str]]:
    """``python simulate.py standins --outbound human|machine``: mount Twilio's and Plivo's REST stand-ins on the
    stand-ins' ``app`` (under ``/twilio`` and ``/plivo``), their callees answering each call the relay places; yields
    the variables to give the relay, as ``NAME=value`` lines with their origin left as ``{origin}``."""
    found = load_scenario(SCENARIOS[kind])
    async with aiohttp.ClientSession() as http:
        callees = Callees(http, STANDIN_TOKEN, CalleeScript(found.caller, found.hangup, VERDICTS[kind]), timeline,
                          resolve)
        account, auth_id = "AC" + "0" * 31 + "1", "MA" + "0" * 17 + "1"
        twilio_rest = TwilioRestStandIn(account, STANDIN_TOKEN, on_call=callees.twilio, on_update=callees.twilio_update)
        plivo_rest = PlivoRestStandIn(auth_id, STANDIN_TOKEN, on_call=callees.plivo, on_update=callees.plivo_update)
        plivo_rest.live = callees.live
        app.add_subapp("/twilio", twilio_rest.app())
        app.add_subapp("/plivo", plivo_rest.app())
        yield [f"TWILIO_ACCOUNT_SID={account}", f"TWILIO_AUTH_TOKEN={STANDIN_TOKEN}",
               "TWILIO_API_BASE_URL={origin}/twilio", f"TWILIO_PHONE_NUMBER={OUR_NUMBER}",
               f"PLIVO_AUTH_ID={auth_id}", f"PLIVO_AUTH_TOKEN={STANDIN_TOKEN}", "PLIVO_API_BASE_URL={origin}/plivo",
               f"PLIVO_PHONE_NUMBER={OUR_NUMBER}", f"PRIMARY_USER_PHONE_NUMBERS={found.caller_number}",
               f"PRIMARY_USER_FIRST_NAME={found.caller_name}"]

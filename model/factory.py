"""The deployment's model sessions: which voice API serves the calls, configured from ``Config``."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import tools
from config import Config, VoiceApi
from model.live import LiveOptions, LiveSession
from model.realtime import RealtimeOptions, RealtimeSession
from model.realtime_wire import takes_reasoning
from model.session import CallBrief, ModelSession, SessionFactory
from model.websocket import RealtimeClient
from redact import CallLog

PER_CALL_TOOLS = ("transfer_call",)
"""Tools offered only to the calls whose brief names them (``model.session.CallBrief``)."""


def _offered(config: Config, left_out: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """The deployment's tool definitions for every call: ``TOOLS`` but the per-call ones and ``left_out``."""
    return tuple(tools.definitions(tuple(n for n in config.tools if n not in PER_CALL_TOOLS + left_out)))


_Options = TypeVar("_Options", RealtimeOptions, LiveOptions)


def briefed(options: _Options, brief: tuple[CallBrief, ...], config: Config) -> _Options:
    """``options`` with a call's brief: its instructions after the deployment's, its tools (those ``TOOLS``
    offers) after the deployment's."""
    if not brief:
        return options
    extra = tuple(tools.definitions(tuple(n for n in brief[0].tools if n in config.tools)))
    instructions = options.instructions + ("\n\n" + brief[0].instructions if brief[0].instructions else "")
    return dataclasses.replace(options, instructions=instructions, tools=options.tools + extra)


def realtime_options(config: Config) -> RealtimeOptions:
    """The Realtime session settings of ``config`` (``reasoning.effort`` only for a model that takes it)."""
    effort = config.reasoning_effort if takes_reasoning(config.realtime_model) else None
    return RealtimeOptions(
        url=config.realtime_connect_url(),
        api_key=config.openai_api_key,
        instructions=config.instructions,
        voice=config.voice,
        turn_detection=config.turn_detection(),
        transcription_model=config.transcription_model,
        tools=_offered(config),
        reasoning_effort=effort,
    )


LIVE_TOOLS_LEFT_OUT = ("update_mic_distance",)
"""Tools GPT-Live has no use for: it has no input noise reduction to switch."""


def live_options(config: Config) -> LiveOptions:
    """The GPT-Live session settings of ``config``: its tools (but ``LIVE_TOOLS_LEFT_OUT``) go to the backend."""
    return LiveOptions(
        url=config.live_url,
        api_key=config.openai_api_key,
        model=config.live_model,
        instructions=config.instructions,
        voice=config.voice,
        backend_model=config.live_backend_model,
        tools=_offered(config, LIVE_TOOLS_LEFT_OUT),
    )


def session_factory(config: Config, client: RealtimeClient) -> SessionFactory:
    """Makes each call's sessions of ``VOICE_API`` over ``client`` (the process's websocket pool)."""
    if config.voice_api is VoiceApi.LIVE:
        live = live_options(config)

        def make_live(noise_reduction: str, log: CallLog, /, *brief: CallBrief) -> ModelSession:
            return LiveSession(client, briefed(live, brief, config), log)

        return make_live
    options = realtime_options(config)

    def make(noise_reduction: str, log: CallLog, /, *brief: CallBrief) -> ModelSession:
        return RealtimeSession(client, briefed(options, brief, config), noise_reduction, log)

    return make


def startup_warnings(config: Config) -> list[str]:
    """What an operator should know about the voice model before taking calls, one sentence each."""
    notes = []
    if config.voice_api is VoiceApi.LIVE:
        if config.ignored_settings:
            notes.append(f"VOICE_API=live: {', '.join(config.ignored_settings)} ignored: GPT-Live has no place for "
                         "them (its model takes its own turns, always transcribes, has no input noise reduction "
                         "and no reasoning effort)")
        return notes
    if config.reasoning_effort and not takes_reasoning(config.realtime_model):
        notes.append(f"REASONING_EFFORT is ignored: {config.realtime_model} does not take a reasoning effort "
                     "(the gpt-realtime-2 family does)")
    if config.realtime_model == "gpt-realtime":
        notes.append("OPENAI_REALTIME_MODEL=gpt-realtime is shut down on 2027-01-20; its replacement is "
                     "gpt-realtime-2.1")
    return notes

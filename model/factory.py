"""The deployment's model sessions: which voice API serves the calls, configured from ``Config``."""

from __future__ import annotations

import tools
from config import Config
from model.realtime import RealtimeOptions, RealtimeSession
from model.realtime_wire import takes_reasoning
from model.session import ModelSession, SessionFactory
from model.websocket import RealtimeClient
from redact import CallLog


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
        tools=tuple(tools.definitions(config.tools)),
        reasoning_effort=effort,
    )


def session_factory(config: Config, client: RealtimeClient) -> SessionFactory:
    """Makes each call's sessions over ``client`` (the process's websocket pool)."""
    options = realtime_options(config)

    def make(noise_reduction: str, log: CallLog) -> ModelSession:
        return RealtimeSession(client, options, noise_reduction, log)

    return make


def startup_warnings(config: Config) -> list[str]:
    """What an operator should know about the voice model before taking calls, one sentence each."""
    notes = []
    if config.reasoning_effort and not takes_reasoning(config.realtime_model):
        notes.append(f"REASONING_EFFORT is ignored: {config.realtime_model} does not take a reasoning effort "
                     "(the gpt-realtime-2 family does)")
    if config.realtime_model == "gpt-realtime":
        notes.append("OPENAI_REALTIME_MODEL=gpt-realtime is shut down on 2027-01-20; its replacement is "
                     "gpt-realtime-2.1")
    return notes

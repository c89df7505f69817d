"""The stand-ins' checks: every Realtime event and Responses request validated against the ``openai`` package's
own types."""

from __future__ import annotations

import functools
import gc
import typing
from typing import Annotated, Any

from openai.types.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError


def _discriminated(alias: Any) -> TypeAdapter[Any]:
    # The SDK's unions carry PropertyInfo(discriminator=...) metadata that pydantic ignores;
    # re-annotate so a bad event yields one precise error (pydantic discriminated unions).
    return TypeAdapter(Annotated[typing.get_args(alias)[0], Field(discriminator="type")])


@functools.cache
def _event_adapter(side: str) -> TypeAdapter[Any]:
    """The validator of ``RealtimeClientEvent`` (``side="client"``), ``RealtimeServerEvent`` (``server``),
    or GPT-Live's ``ClientEvent`` (``live-client``) and ``ServerEvent`` (``live-server``), built on first
    use (a few hundred ms)."""
    if side.startswith("live-"):
        from openai.types.live import ClientEvent, ServerEvent

        return _discriminated(ClientEvent if side == "live-client" else ServerEvent)
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

    return _discriminated(RealtimeClientEvent if side == "client" else RealtimeServerEvent)


def _event_problems(side: str, event: dict[str, Any]) -> list[str]:
    try:
        model = _event_adapter(side).validate_python(event)
    except ValidationError as exc:
        return _problems(exc)
    return [f"unknown field {name}" for name in _unknown_fields(model)]


def _unknown_fields(model: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    if isinstance(model, BaseModel):
        out += [f"{path}.{key}" for key in (model.model_extra or {})]
        for name in type(model).model_fields:
            out += _unknown_fields(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, value in enumerate(model):
            out += _unknown_fields(value, f"{path}[{i}]")
    return out


def _problems(exc: ValidationError) -> list[str]:
    """One ``"<path>: <error type>"`` line per pydantic error."""
    return [f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()]


def warm_up_validators() -> None:
    """Build the pydantic validators now (~450 ms) rather than mid-call, then move the import-time
    heap out of the collector's reach: with the openai types loaded a full collection takes ~50 ms,
    long enough to skew the simulated clocks (``gc.freeze``). Once per process.

    The stand-ins share the event loop with the relay in tests, so a validator built on first use
    stalls the relay's audio: the Responses stand-in's first answer (108 ms to build ``Response``)
    used to land in the waiting music and leave a 50 ms gap the caller heard.
    """
    if _event_adapter.cache_info().currsize == 4:
        return
    client_event_problems({"type": "response.cancel"})
    server_event_problems({"type": "session.created"})
    live_client_event_problems({"type": "session.close"})
    live_server_event_problems({"type": "session.usage.updated", "event_id": "warm-up", "usage": {"seconds": 0}})
    responses_request_problems({"model": "warm-up", "input": "warm-up", "tools": [{"type": "web_search"}],
                                "tool_choice": "required"})
    Response.model_validate({"id": "resp_warm_up", "object": "response", "created_at": 0, "status": "completed",
                             "model": "warm-up", "output": [], "parallel_tool_calls": True,
                             "tool_choice": "required", "tools": []})
    gc.freeze()


def client_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GA Realtime client event ([] when it is).

    Validates against ``openai.types.realtime.RealtimeClientEvent`` discriminated on
    ``type``, and reports keys the model does not define (the SDK models allow extras, so
    beta-era names such as ``session.input_audio_format`` would otherwise pass).
    """
    return _event_problems("client", event)


def server_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GA Realtime server event ([] when it is)."""
    return _event_problems("server", event)


def live_client_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GPT-Live client event ([] when it is): ``openai.types.live.ClientEvent``
    discriminated on ``type``, and no key the models do not define (``session`` is strict at the service)."""
    return _event_problems("live-client", event)


def live_server_event_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` is not a valid GPT-Live server event ([] when it is): ``openai.types.live.ServerEvent``."""
    return _event_problems("live-server", event)


@functools.cache
def _responses_request_adapter() -> TypeAdapter[Any]:
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    return TypeAdapter(ResponseCreateParamsNonStreaming)


def responses_request_problems(body: Any) -> list[str]:
    """Why ``body`` is not a valid non-streaming ``responses.create`` body with a forced web
    search ([] when it is), checked against the ``openai`` package's own request type."""
    try:
        _responses_request_adapter().validate_python(body)
    except ValidationError as exc:
        return _problems(exc)[:5]
    problems = []
    if not any(tool.get("type") == "web_search" for tool in body.get("tools") or ()):
        problems.append("tools has no web_search tool")
    if body.get("tool_choice") != "required":
        problems.append("tool_choice is not 'required'")
    return problems

"""The JSON envelope both voice APIs' server events share, sans-I/O: one object with a ``type``, parsed by the
parser registered for that type.

Realtime's (``model.realtime_wire``) and GPT-Live's (``model.live_wire``) protocols differ in every event but
this; each keeps its own parsers and result types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


class MalformedEvent(ValueError):
    """A server event the relay cannot use: not JSON, not an object, or a known type whose fields are
    missing or of the wrong type. ``kind`` is the event type (or ``json``), for one warning per kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def parse_event(raw: str | bytes, parsers: Mapping[str, Callable[[dict[str, Any]], T]],
                other: Callable[[str], T]) -> T:
    """``raw`` (one websocket text frame) parsed by ``parsers[type]``, or ``other(type)`` for a type without one.

    Raises:
        MalformedEvent: not JSON (nesting too deep included), not an object, or what the type's parser
            raises for a field it needs.
    """
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedEvent("json", "non-JSON frame") from None
    if type(event) is not dict:
        raise MalformedEvent("json", "non-object frame")
    kind = event.get("type")
    parser = parsers.get(kind) if type(kind) is str else None
    if parser is None:
        return other(str(kind))
    return parser(event)


def text_field(event: dict[str, Any], key: str, kind: str) -> str:
    """``event[key]``, a string. Raises MalformedEvent naming ``kind`` otherwise."""
    value = event.get(key)
    if type(value) is not str:
        raise MalformedEvent(kind, f"{key} is not a string")
    return value


def optional_text(event: dict[str, Any], key: str) -> str | None:
    """``event[key]`` when it is a string, else None."""
    value = event.get(key)
    return value if type(value) is str else None

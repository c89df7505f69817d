"""Each call's record, built from its events (``bridge.events``) as the console builds its view: written at the
start, completed at the end, through the ``RecordWriter``. The call never knows it is recorded.

What a record holds beyond its columns (``detail``):

- ``turns``: ``role`` (``user`` the caller, ``assistant``), ``text`` (for a cut assistant turn, the part heard;
  "" when ``LOG_TRANSCRIPTS=false``), ``cut``, ``audio_end_ms`` (where a barge-in cut it, else None);
- ``tools``: ``name``, ``ok``, ``duration_ms``, ``error``, and ``arguments`` when ``LOG_TRANSCRIPTS`` allows text;
- ``key_presses`` (``digit``, ``at_ms``), ``barge_ins`` (``at_ms``, ``truncations``), ``rollovers`` (``at_ms``,
  ``cause``, ``replayed``, ``gap_ms``), each at milliseconds from the call's start;
- ``usage`` (tokens by kind, and ``seconds`` where billing is per second), ``latency`` (``bridge.latency``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bridge.events import CallEvent, CallEventKind
from callers import mask_number
from store.database import Database
from store.writer import RecordWriter

MAX_TURNS = 500
MAX_TEXT_CHARS = 4_000
MAX_ITEMS = 200
"""Tools, key presses, barge-ins and rollovers kept per call (each list)."""
MAX_OPEN_CALLS = 5_000
"""Calls being recorded at once; past it the oldest is forgotten (a call that never reported its end)."""


@dataclass(slots=True)
class _Record:
    record_id: str
    started: float
    start: dict[str, Any]
    """The start's row, to write the record whole at the end should the start's write have been dropped."""
    turns: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    cuts: dict[str, int] = field(default_factory=dict)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    key_presses: list[dict[str, Any]] = field(default_factory=list)
    barge_ins: list[dict[str, Any]] = field(default_factory=list)
    rollovers: list[dict[str, Any]] = field(default_factory=list)

    def at_ms(self, event: CallEvent) -> int:
        return round((event.at - self.started) * 1000)


class CallRecorder:
    """The records' call-event hook (``on_event``): never blocks, never raises into the call.

    Args:
        full_numbers: store whole numbers (``RECORD_NUMBERS=full``), else masked as in the logs.
        texts: store what was said and tools' arguments (``LOG_TRANSCRIPTS``).
        voice_api: ``realtime`` or ``live``.
    """

    def __init__(self, db: Database, writer: RecordWriter, full_numbers: bool, texts: bool, voice_api: str) -> None:
        self._db = db
        self._writer = writer
        self._full_numbers = full_numbers
        self._texts = texts
        self._voice_api = voice_api
        self._open: OrderedDict[str, _Record] = OrderedDict()

    def on_event(self, event: CallEvent) -> None:
        if event.kind is CallEventKind.TRANSCRIPT_DELTA:  # the most frequent: nothing to keep
            return
        if event.kind is CallEventKind.STARTED:
            self._started(event)
            return
        record = self._open.get(event.stream_sid)
        if record is None:
            return
        data: Any = event.data
        kind = event.kind
        if kind is CallEventKind.ENDED:
            del self._open[event.stream_sid]
            self._ended(record, data, event.at)
        elif kind is CallEventKind.CALLER_TURN:
            self._turn(record, "user", data["item_id"])
        elif kind is CallEventKind.TRANSCRIPT:
            turn = self._turn(record, data["role"], data["item_id"])
            if turn is not None:
                turn["text"] = data["text"][:MAX_TEXT_CHARS] if self._texts else ""
                turn["cut"] = bool(data["cut"])
        elif kind is CallEventKind.BARGE_IN:
            for cut in data["truncations"]:
                record.cuts[cut["item_id"]] = cut["audio_end_ms"]
            _add(record.barge_ins, {"at_ms": record.at_ms(event), "truncations": data["truncations"]})
        elif kind is CallEventKind.TOOL_STARTED and len(record.tools) < MAX_ITEMS:
            record.tools[data["call_id"]] = {"name": data["name"], "ok": None, "duration_ms": None, "error": None,
                                             **({"arguments": data["arguments"][:MAX_TEXT_CHARS]} if self._texts
                                                else {})}
        elif kind is CallEventKind.TOOL_FINISHED and data["call_id"] in record.tools:
            record.tools[data["call_id"]].update(ok=data["ok"], duration_ms=round(data["duration_ms"], 1),
                                                 error=data["error"])
        elif kind is CallEventKind.DTMF:
            _add(record.key_presses, {"digit": data["digit"], "at_ms": record.at_ms(event)})
        elif kind is CallEventKind.SESSION_REPLACED:
            _add(record.rollovers, {"at_ms": record.at_ms(event), **data})

    def _started(self, event: CallEvent) -> None:
        data: Any = event.data
        number = data.get("number") or ""
        record_id = secrets.token_hex(16)
        row = {
            "record_id": record_id, "call_sid": data["call_sid"], "stream_sid": event.stream_sid,
            "network": data["network"], "direction": data.get("direction", "inbound"),
            "caller": number if self._full_numbers else mask_number(number), "caller_key": self._db.key_of(number),
            "caller_group": data["group"], "voice_api": self._voice_api, "model": data.get("model", ""),
            "started_at": dt.datetime.fromtimestamp(event.at, dt.UTC), "turns_count": 0,
        }
        self._open[event.stream_sid] = _Record(record_id, event.at, row)
        while len(self._open) > MAX_OPEN_CALLS:
            self._open.popitem(last=False)
        self._writer.put("call start", lambda: self._db.insert_call(row))

    def _turn(self, record: _Record, role: str, item_id: str) -> dict[str, Any] | None:
        turn = record.turns.get(item_id)
        if turn is None:
            if len(record.turns) >= MAX_TURNS:
                return None
            turn = record.turns[item_id] = {"role": role, "text": "", "cut": False, "audio_end_ms": None}
        return turn

    def _ended(self, record: _Record, data: Any, at: float) -> None:
        for item_id, audio_end_ms in record.cuts.items():
            if item_id in record.turns:
                record.turns[item_id]["audio_end_ms"] = audio_end_ms
        counts, latency = data["counts"], data["latency"]
        usage = {**counts.get("usage", {}), **({"seconds": counts["billed_s"]} if counts.get("billed_s") else {})}
        turns = list(record.turns.values())
        values = {
            "ended_at": dt.datetime.fromtimestamp(at, dt.UTC),
            "duration_s": round(data["duration_s"], 2), "end_reason": data["reason"][:200],
            "turns_count": len(turns), "cost_usd": data["cost_usd"], "model": data["model"],
            "first_word_ms": latency["first_word_ms"], "p50_ms": latency["p50_ms"], "p95_ms": latency["p95_ms"],
            "detail": {"turns": turns, "tools": list(record.tools.values()), "key_presses": record.key_presses,
                       "barge_ins": record.barge_ins, "rollovers": record.rollovers, "usage": usage,
                       "latency": latency, "end_kind": data["kind"], "failed": data["failed"]},
        }
        self._writer.put("call end", lambda: self._db.finish_call(record.record_id, values, record.start))


def _add(items: list[dict[str, Any]], item: dict[str, Any]) -> None:
    if len(items) < MAX_ITEMS:
        items.append(item)

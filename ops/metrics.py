"""``/metrics``: the relay's figures in Prometheus text format, with ``prometheus-client``.

Fed by the call-event hook (``bridge.events.CallEvent``) and read from the live counters at scrape
time, so the per-frame path pays nothing: frames are added when a call ends. Labels are bounded: a
call's end reason is its ``bridge.events.EndReason`` (``end_call``, ``phone stop``, ``model lost``...),
and at most ``MAX_LABEL_VALUES`` distinct values are kept per label (the rest count as ``other``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.events import CallEvent, CallEventKind

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""``text/plain; version=0.0.4; charset=utf-8``."""
MAX_LABEL_VALUES = 50
LOOP_LAG_INTERVAL_S = 0.5


class Metrics:
    """One process's metrics, in a registry of its own (several apps in one test process never clash).

    Args:
        active: the number of live calls, read at scrape time.
    """

    def __init__(self, active: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_active = Gauge("relay_calls_active", "Calls in progress.", registry=r)
        self.calls_active.set_function(lambda: float(active()))
        self.calls = Counter("relay_calls", "Calls started (stream accepted, caller allowed).", registry=r)
        self.calls_ended = Counter("relay_calls_ended", "Calls ended, by reason.", ["reason"], registry=r)
        self.call_duration = Histogram(
            "relay_call_duration_seconds", "Call durations.", registry=r,
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
        )
        self.barge_ins = Counter("relay_barge_ins", "Barge-ins (the caller spoke over the assistant).", registry=r)
        self.truncation = Histogram(
            "relay_truncation_audio_end_ms", "audio_end_ms of each conversation.item.truncate.", registry=r,
            buckets=(250, 500, 1000, 2000, 4000, 8000, 16000, 32000),
        )
        self.tool_calls = Counter("relay_tool_calls", "Tool calls, by name and outcome.", ["name", "outcome"],
                                  registry=r)
        self.tool_seconds = Histogram(
            "relay_tool_call_seconds", "Tool call latency.", ["name"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
        )
        self.realtime_errors = Counter("relay_realtime_errors", "Realtime error events, by code.", ["code"],
                                       registry=r)
        self.prewarms = Counter(
            "relay_prewarms", "Model sessions opened at the voice webhook, by outcome: used (a stream took it over), "
            "expired (no stream came), missed (a stream found none: another worker took its webhook), failed.",
            ["outcome"], registry=r,
        )
        for outcome in ("used", "expired", "missed", "failed"):
            self.prewarms.labels(outcome)
        self.records_dropped = Counter("relay_records_dropped", "Call and text records not written (the database "
                                       "was full, slow or down).", registry=r)
        self.call_outcomes = Counter(
            "relay_call_outcomes", "Calls by direction (inbound, outbound) and outcome: answered; for calls placed "
            "also machine, no answer, busy, failed.", ["direction", "outcome"], registry=r)
        self.billed_seconds = Counter(
            "relay_model_billed_seconds", "Voice-model session seconds billed (GPT-Live usage.seconds), counted when "
            "each call ends.", registry=r,
        )
        self.frames = Counter("relay_frames", "Audio frames, counted when each call ends.", ["direction"],
                              registry=r)
        self.session_rollovers = Counter(
            "relay_session_rollovers", "Realtime sessions replaced mid-call, by cause (rollover, expired, dropped).",
            ["cause"], registry=r,
        )
        self.loop_lag = Histogram(
            "relay_event_loop_lag_seconds", f"How late a {LOOP_LAG_INTERVAL_S} s timer fires.", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self._seen: dict[str, set[str]] = {}
        self._cost_and_latency(r)

    def _cost_and_latency(self, r: CollectorRegistry) -> None:
        """What the calls cost (price table) and how long callers waited (``bridge.latency``)."""
        self.call_cost = Histogram("relay_call_cost_usd", "What each call's model sessions cost, USD (price table).",
                                   buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10), registry=r)
        self.cost = Counter("relay_cost_usd", "What the calls' model sessions cost, USD (price table).", registry=r)
        self.first_word = Histogram(
            "relay_first_word_seconds", "From the phone's start to the first assistant audio sent to it.", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
        )
        self.answer_latency = Histogram(
            "relay_answer_latency_seconds", "From the end of the caller's turn to the first assistant audio of the "
            "answer sent to the phone.", registry=r, buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
        )

    def on_event(self, event: CallEvent) -> None:
        """The bridge's call-event hook (never blocks, never raises on odd data)."""
        data = event.data
        kind = event.kind
        if kind is CallEventKind.STARTED:
            self.calls.inc()
            if data.get("direction") != "outbound":  # a placed call's outcome comes from its network
                self.call_outcomes.labels("inbound", "answered").inc()
        elif kind is CallEventKind.ENDED:
            self.calls_ended.labels(self._bounded("reason", str(data.get("kind")))).inc()
            self.call_duration.observe(float(data.get("duration_s", 0.0)))
            counts = data.get("counts") or {}
            self.frames.labels("in").inc(int(counts.get("frames_in", 0)))
            self.frames.labels("out").inc(int(counts.get("frames_out", 0)))
            self.billed_seconds.inc(max(0.0, float(counts.get("billed_s", 0.0))))
            cost = data.get("cost_usd")
            if isinstance(cost, int | float) and cost >= 0:
                self.call_cost.observe(cost)
                self.cost.inc(cost)
            latency = data.get("latency") or {}
            if isinstance(latency.get("first_word_ms"), int | float):
                self.first_word.observe(latency["first_word_ms"] / 1000)
            for ms in latency.get("turns_ms") or ():
                self.answer_latency.observe(ms / 1000)
        elif kind is CallEventKind.BARGE_IN:
            self.barge_ins.inc()
            for cut in data.get("truncations", ()):
                self.truncation.observe(float(cut.get("audio_end_ms", 0)))
        elif kind is CallEventKind.TOOL_FINISHED:
            name = self._bounded("name", str(data.get("name")))
            self.tool_calls.labels(name, "ok" if data.get("ok") else "error").inc()
            self.tool_seconds.labels(name).observe(float(data.get("duration_ms", 0)) / 1000)
        elif kind is CallEventKind.REALTIME_ERROR:
            self.realtime_errors.labels(self._bounded("code", str(data.get("code")))).inc()
        elif kind is CallEventKind.SESSION_REPLACED:
            self.session_rollovers.labels(self._bounded("cause", str(data.get("cause")))).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    async def watch_loop_lag(self) -> None:
        """Sample how late the event loop runs a timer, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + LOOP_LAG_INTERVAL_S
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - planned))

    def _bounded(self, label: str, value: str) -> str:
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value

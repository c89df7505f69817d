"""How long the caller waits: the first word and each answer (``bridge.latency``), and their metrics."""

from __future__ import annotations

from bridge.events import CallEvent, CallEventKind
from bridge.latency import Latency
from ops.metrics import Metrics


def test_the_first_word_and_each_answer() -> None:
    latency = Latency()
    latency.stream_started(10.0)
    assert latency.waiting
    latency.assistant_audio(10.25)  # the greeting
    assert latency.first_word_ms == 250 and not latency.waiting and latency.turns_ms == []
    latency.assistant_audio(10.5)  # more of it: nothing measured
    latency.caller_turn_ended(12.0)
    latency.assistant_audio(12.6)
    latency.caller_turn_ended(15.0)
    latency.caller_resumed()  # the caller went on: this end does not count
    latency.caller_turn_ended(16.0)
    latency.caller_turn_ended(16.2)  # GPT-Live: a later fragment moves the end
    latency.assistant_audio(16.5)
    assert [round(ms) for ms in latency.turns_ms] == [600, 300]
    summary = latency.summary()
    assert summary["first_word_ms"] == 250 and summary["p50_ms"] == 450 and summary["p95_ms"] == 600


def test_a_call_with_no_assistant_audio_has_no_first_word() -> None:
    latency = Latency()
    latency.stream_started(1.0)
    latency.caller_turn_ended(2.0)
    assert latency.summary() == {"first_word_ms": None, "turns_ms": [], "p50_ms": None, "p95_ms": None}


def test_latency_histograms() -> None:
    metrics = Metrics(lambda: 0)
    metrics.on_event(CallEvent(CallEventKind.ENDED, "MZ1", 0.0, {
        "kind": "phone stop", "counts": {}, "latency": {"first_word_ms": 120.0, "turns_ms": [400.0, 900.0]}}))
    text = metrics.render().decode()
    assert 'relay_first_word_seconds_bucket{le="0.25"} 1.0' in text
    assert 'relay_answer_latency_seconds_bucket{le="0.5"} 1.0' in text
    assert "relay_answer_latency_seconds_count 2.0" in text

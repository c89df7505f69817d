"""The stand-ins themselves: VAD onsets, Twilio playback and clear, the Realtime service's errors, the CLI."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ROOT, process_env, start_standin

import audio
from standins.openai_service import AssistantTurn
from standins.phone_network import PhonePlayback
from standins.vad import Vad
from standins.validation import server_event_problems

CALLER_WAVS = ["caller_question", "caller_interrupt", "caller_goodbye", "caller_search"]


def _onset_from_samples_ms(pcm: bytes) -> float:
    """First sample louder than 5% of the file's peak (-26 dB), in ms: catches quiet fricative onsets."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    peak = max(abs(s) for s in samples)
    first = next(i for i, s in enumerate(samples) if abs(s) > peak * 0.05)
    return first / 8


@pytest.mark.parametrize("name", CALLER_WAVS)
def test_vad_onset_within_40ms(name: str) -> None:
    """speech_started's onset (audio_start_ms + prefix padding) is within 40 ms of the onset in the samples."""
    pcm = audio.load_wav(ROOT / "assets" / f"{name}.wav")
    assert pcm.rate_hz == 8000 and pcm.channels == 1
    lead_ms = 1000
    ulaw = audio.ULAW_SILENCE * (lead_ms * 8) + audio.to_ulaw_8k(pcm)
    vad = Vad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=700)
    events = []
    for frame in audio.frames(ulaw + audio.ULAW_SILENCE * 8000):
        events += vad.feed(frame)
    assert events[0][0] == "started" and events[-1][0] == "stopped"
    detected = events[0][1] + 300 - lead_ms
    assert abs(detected - _onset_from_samples_ms(pcm.samples)) <= 40


def test_vad_silence_and_padding() -> None:
    """Silence never starts speech; speech_stopped comes silence_duration_ms after the last voiced audio."""
    vad = Vad(0.5, 300, 500)
    assert vad.feed(audio.ULAW_SILENCE * 16000) == []
    loud = audio.pcm16_to_ulaw(struct.pack("<h", 8000) * 8000)  # 1 s at -12 dBFS
    assert vad.feed(loud) == [("started", 2000 - 300)]
    assert vad.feed(audio.ULAW_SILENCE * 8000) == [("stopped", 3000 + 500)]


def test_phone_marks_echo_when_audio_before_them_played() -> None:
    """Media plays at 8000 bytes/s in order; a mark is due when the audio before it has played."""
    phone = PhonePlayback()
    assert phone.enqueue_mark(10.0, "empty") == ["empty"]  # nothing buffered: echoed at once
    phone.enqueue_media(10.0, b"\x00" * 800)  # 100 ms
    assert phone.enqueue_mark(10.0, "a") == []
    phone.enqueue_media(10.01, b"\x00" * 1600)  # queued behind: plays 10.1 .. 10.3
    assert phone.enqueue_mark(10.01, "b") == []
    assert phone.due_marks(10.099) == []
    assert phone.due_marks(10.1) == ["a"]
    assert phone.next_mark_at() == pytest.approx(10.3)
    assert phone.due_marks(10.3) == ["b"]
    assert not phone.playing(10.3)


def test_phone_clear_drops_audio_and_echoes_pending_marks() -> None:
    """clear drops what is buffered, echoes every pending mark at once, and counts only what played."""
    phone = PhonePlayback()
    phone.enqueue_media(0.0, b"\x01" * 8000, ("item_a", 0))  # 1 s
    phone.enqueue_mark(0.0, "m1")
    phone.enqueue_media(0.0, b"\x02" * 8000, ("item_b", 0))
    phone.enqueue_mark(0.0, "m2")
    assert phone.due_marks(1.0) == ["m1"]
    assert phone.clear(1.25) == ["m2"]
    assert phone.heard_bytes_by_item(5.0) == {"item_a": 8000, "item_b": 2000}
    assert not phone.playing(1.25)
    phone.enqueue_media(2.0, b"\x03" * 80, ("item_c", 0))
    assert phone.chunks[-1].start == 2.0  # after a clear new audio plays at once


async def _standin_ws(stack: contextlib.AsyncExitStack, script: Any = None) -> tuple[Any, Any]:
    standin, url = await start_standin(stack, script)
    http = await stack.enter_async_context(aiohttp.ClientSession())
    ws = await http.ws_connect(url + "?model=gpt-realtime", headers={"Authorization": "Bearer sk-x"})
    return standin, ws


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        event = json.loads((await ws.receive(timeout=5)).data)
        if event["type"] == kind:
            return event


SESSION = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                                         "output": {"format": {"type": "audio/pcmu"}}}}


async def test_standin_rejects_invalid_session_update(stack: contextlib.AsyncExitStack) -> None:
    """A session.update without session.type, or with beta-era fields, gets an error, not session.updated."""
    standin, ws = await _standin_ws(stack)
    assert (await _next(ws, "session.created"))["session"]["type"] == "realtime"
    await ws.send_json({"type": "session.update", "session": {"audio": {"input": {"noise_reduction": None}}}})
    error = (await _next(ws, "error"))["error"]
    assert error["type"] == "invalid_request_error" and "session" in error["message"]
    await ws.send_json({"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}})
    error = (await _next(ws, "error"))["error"]
    assert error["code"] == "unknown_parameter"
    assert error["message"] == "Invalid event: unknown field $.session.input_audio_format"
    await ws.send_json({"type": "session.update", "session": SESSION})
    updated = await _next(ws, "session.updated")
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert len(standin.sessions[0].invalid) == 2


async def test_standin_response_errors(stack: contextlib.AsyncExitStack) -> None:
    """Active-response, cancel-not-active and truncate-past-the-audio errors read as the service's."""
    turn = AssistantTurn(ulaw=b"\x10" * 16000, speed=2.0)  # 2 s of audio, sent over ~1 s
    standin, ws = await _standin_ws(stack, [turn, AssistantTurn(ulaw=b"\x20" * 800)])
    await ws.send_json({"type": "session.update", "session": SESSION})
    await _next(ws, "session.updated")
    await ws.send_json({"type": "response.cancel"})
    error = (await _next(ws, "error"))["error"]
    assert (error["code"], error["message"]) == ("response_cancel_not_active",
                                                 "Cancellation failed: no active response found")
    await ws.send_json({"type": "response.create"})
    created = await _next(ws, "response.created")
    await ws.send_json({"type": "response.create"})
    error = (await _next(ws, "error"))["error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert created["response"]["id"] in error["message"]
    delta = await _next(ws, "response.output_audio.delta")
    await ws.send_json({"type": "response.cancel"})
    done = await _next(ws, "response.done")
    assert done["response"]["status"] == "cancelled"
    generated = standin.sessions[0].generated[delta["item_id"]]
    too_far = generated // 8 + 1
    await ws.send_json({"type": "conversation.item.truncate", "item_id": delta["item_id"], "content_index": 0,
                        "audio_end_ms": too_far})
    error = (await _next(ws, "error"))["error"]
    assert error["message"] == f"Audio content of {generated / 8:g}ms is already shorter than {too_far}ms"
    await ws.send_json({"type": "conversation.item.truncate", "item_id": delta["item_id"], "content_index": 0,
                        "audio_end_ms": generated // 8})
    truncated = await _next(ws, "conversation.item.truncated")
    assert truncated["audio_end_ms"] == generated // 8


async def test_standin_vad_turn_and_server_events_valid(stack: contextlib.AsyncExitStack) -> None:
    """Speech in the input buffer gives speech_started/stopped, committed and a response; every server
    event the stand-in sends validates against the openai package's server event types."""
    turn = AssistantTurn(ulaw=b"\x10" * 1600, transcript="hi there", function_calls=[("end_call", {"reason": "x"})])
    standin, ws = await _standin_ws(stack, [turn])
    session_cfg = json.loads(json.dumps(SESSION))
    session_cfg["audio"]["input"]["turn_detection"] = {"type": "server_vad", "silence_duration_ms": 300,
                                                       "prefix_padding_ms": 100}
    await ws.send_json({"type": "session.update", "session": session_cfg})
    await _next(ws, "session.updated")
    speech = audio.to_ulaw_8k(audio.load_wav(ROOT / "assets" / "caller_search.wav"))
    for chunk in audio.frames(speech + audio.ULAW_SILENCE * 4000):
        await ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
    started = await _next(ws, "input_audio_buffer.speech_started")
    stopped = await _next(ws, "input_audio_buffer.speech_stopped")
    assert started["item_id"] == stopped["item_id"]
    assert stopped["audio_end_ms"] > started["audio_start_ms"]
    await _next(ws, "input_audio_buffer.committed")
    done = await _next(ws, "response.done")
    assert [item["type"] for item in done["response"]["output"]] == ["message", "function_call"]
    session = standin.sessions[0]
    assert session.sent, "nothing recorded"
    for event in session.sent:
        assert server_event_problems(event) == [], event


async def test_standin_rejects_beta_header(stack: contextlib.AsyncExitStack) -> None:
    """Connecting with OpenAI-Beta gets beta_api_shape_disabled and a close, as the GA service does."""
    _, url = await start_standin(stack)
    http = await stack.enter_async_context(aiohttp.ClientSession())
    ws = await http.ws_connect(url, headers={"Authorization": "Bearer x", "OpenAI-Beta": "realtime=v1"})
    assert (await _next(ws, "error"))["error"]["code"] == "beta_api_shape_disabled"
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE


def test_simulate_cli_default_scenario(tmp_path: Path) -> None:
    """`python simulate.py` holds the built-in call: a barge-in, a web search with waiting music, the assistant
    hanging up after its goodbye; it prints a header, then each event while the call is under way, with whole texts
    wrapped at word boundaries; then a stereo WAV with both voices."""
    out = tmp_path / "call.wav"
    env = process_env(LOG_LEVEL="DEBUG", SECRET_ENV_VAR="sk-simulator-offline", COLUMNS="90")
    proc = subprocess.Popen([sys.executable, str(ROOT / "simulate.py"), "--out", str(out), "--verbose"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    running_at: dict[str, bool] = {}
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        for mark in ("A simulated Twilio call", "POST /incoming-call", "clear: caller heard"):
            if mark in line and mark not in running_at:
                running_at[mark] = proc.poll() is None
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, "\n".join(lines) + stderr
    # Streamed: the header and the first events were readable while the call was still under way.
    assert running_at == {"A simulated Twilio call": True, "POST /incoming-call": True, "clear: caller heard": True}
    assert lines[0].startswith("A simulated Twilio call from +14155550100 (Jordan)")
    assert f"recording: {out} (stereo" in " ".join(line.strip() for line in lines[:8])
    assert "call completed as scripted" in lines
    assert "barge-ins: 1, marks echoed: " in "\n".join(lines)
    assert any("clear: caller heard" in line for line in lines)
    assert any("truncate" in line and "audio_end_ms=" in line for line in lines)
    assert any("function_call gpt_web_search" in line for line in lines)
    assert any("caller   hears waiting music" in line for line in lines)
    assert any("clear (waiting music)" in line for line in lines)
    assert any("function_call end_call" in line for line in lines)
    assert any(line.endswith("twilio   relay closed the stream (code 1000)") for line in lines)
    assert any(line.startswith("  barge-in: the caller heard ") and "the relay truncated it at" in line
               for line in lines)
    # Whole texts, wrapped under the text column at word boundaries, never past the terminal's width.
    assert max(len(line) for line in lines if line.startswith(" ")) <= 90
    long_answer = json.loads((ROOT / "scenarios" / "default.json").read_text())["assistant"][1]["transcript"]
    start = next(i for i, line in enumerate(lines) if "Paris has a long" in line)
    text = " ".join(line.strip() for line in lines[start : start + 6]).split('"')[1]
    assert text == long_answer
    pcm = audio.load_wav(out)
    assert pcm.channels == 2 and pcm.rate_hz == 8000
    left, right = audio.channel(pcm.samples, 0), audio.channel(pcm.samples, 1)
    assert audio.rms_dbfs(left) > -45 and audio.rms_dbfs(right) > -45  # both voices are in it
    assert pcm.duration_ms > 15000
    # The relay's whole DEBUG log of the call: a few lines a second, never a payload, never the key.
    log_lines = stderr.splitlines()
    assert any(" DEBUG bridge: realtime " in line for line in log_lines)
    assert len(log_lines) <= 20 * pcm.duration_ms / 1000, len(log_lines)
    assert "sk-simulator-offline" not in "\n".join(lines) + stderr


def test_simulate_cli_over_plivo_with_key_presses(tmp_path: Path) -> None:
    """`python simulate.py --phone plivo --scenario FILE` holds a call over Plivo in which the caller presses keys and
    the assistant answers them."""
    scenario = {
        "assistant": [{"audio": str(ROOT / "assets" / "assistant_short.wav"), "transcript": "Hello Jordan."},
                      {"audio": str(ROOT / "assets" / "assistant_short.wav"), "transcript": "You pressed 1, 2 and #."}],
        "caller": [{"dtmf": "12#", "when": {"after": "assistant_done", "delay_ms": 200}}],
        "hangup": {"after": "assistant_done", "delay_ms": 300},
        "expect_barge_ins": 0,
    }
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(scenario))
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--phone", "plivo", "--scenario", str(path),
                             "--out", str(tmp_path / "keys.wav")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "call completed as scripted" in lines
    assert any(line.endswith("plivo    POST /plivo/answer From=+14155550100") for line in lines)
    assert any(line.endswith("caller   presses 12#") for line in lines)


def test_simulate_sms_cli(tmp_path: Path) -> None:
    """`python simulate.py sms TEXT` shows a whole exchange: the webhook's empty TwiML, the thread the model read, and
    the reply sent from the relay's number to the sender."""
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "sms", "What's the weather in Paris?"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'the /sms webhook answered at once: <?xml version="1.0" encoding="UTF-8"?><Response />' in out
    assert ("  you: Always. What can I do for you?\n"
            "  Their latest message, to answer now: What's the weather in Paris?") in out
    assert "reply sent from +14155550199 to +14155550100 (61 characters):\n  It is sunny in Paris today" in out

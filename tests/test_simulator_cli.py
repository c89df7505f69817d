"""The simulator as a product: the two-terminal recipe against a separate `python relay.py`, scenario files and their
errors, the recording kept safe, real recorded speech over a noisy line with network delay, and the stand-in VAD that
follows the line's noise floor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, make_config, process_env, start_relay

import audio
import simulate
from standins.openai_service import Vad
from standins.phone_network import LineNoise
from standins.scenario import ScenarioError, load_scenario, scenario_from_dict


def _read_until(proc: subprocess.Popen[str], needle: str, lines: list[str]) -> None:
    """Read ``proc``'s output into ``lines`` until a line holds ``needle`` (the process must be alive)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} never came:\n{''.join(lines)}")


@dataclass
class TwoTerminals:
    """`python simulate.py standins` in one terminal and `python relay.py` in the other (``two_terminals``)."""

    standins_port: int
    relay_port: int
    standins: subprocess.Popen[str]
    printed: str = ""
    """What the stand-ins printed up to their variables."""
    relay: subprocess.Popen[str] | None = None
    streamed: str = ""
    """The stand-ins' whole output, once both have ended."""

    def start_relay(self, env: dict[str, str]) -> None:
        """``python relay.py`` with ``env``, until it listens."""
        self.relay = subprocess.Popen([sys.executable, str(ROOT / "relay.py")], cwd=ROOT / "tests", env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _read_until(self.relay, "listening on", [])


@contextlib.contextmanager
def two_terminals(tmp_path: Path, *standins_args: str) -> Iterator[TwoTerminals]:
    """Start the stand-ins (``standins_args`` added) and read the variables they print; at the end stop the relay
    (if one was started) and the stand-ins, keeping the stand-ins' output in ``streamed``."""
    standins_port, relay_port = simulate.free_port(), simulate.free_port()
    standins = subprocess.Popen([sys.executable, str(ROOT / "simulate.py"), "standins", *standins_args,
                                 "--port", str(standins_port)], cwd=tmp_path, env=process_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    terminals = TwoTerminals(standins_port, relay_port, standins)
    try:
        printed: list[str] = []
        _read_until(standins, "OPENAI_API_KEY=", printed)
        terminals.printed = "".join(printed)
        yield terminals
    finally:
        for proc in (terminals.relay, standins):
            if proc is not None:
                proc.terminate()
                terminals.streamed = proc.communicate(timeout=10)[0]


def test_two_terminal_recipe_against_a_separate_relay_process(tmp_path: Path) -> None:
    """The README's recipe: `python simulate.py standins` prints the variables; `python relay.py` started with them
    (and PUBLIC_URL, its own loopback origin) takes the call that `python simulate.py --relay-url` places, signed
    with the token it reads from ./.env only; the music's clear is not counted as a barge-in, and the call passes as
    scripted."""
    with two_terminals(tmp_path) as terminals:
        standins_port, relay_port = terminals.standins_port, terminals.relay_port
        variables = dict(re.findall(r"^\s+(OPENAI_\w+)=(\S+)", terminals.printed, re.MULTILINE))
        assert variables["OPENAI_REALTIME_URL"] == f"ws://127.0.0.1:{standins_port}/v1/realtime"
        assert variables["OPENAI_BASE_URL"] == f"http://127.0.0.1:{standins_port}/v1"
        telnyx_key = re.search(r"^\s+TELNYX_PUBLIC_KEY=(\S+)", terminals.printed, re.MULTILINE)
        assert telnyx_key is not None
        terminals.start_relay(process_env(**variables, TWILIO_AUTH_TOKEN="recipe-token", PORT=str(relay_port),
                                          TELNYX_PUBLIC_KEY=telnyx_key.group(1),
                                          PUBLIC_URL=f"http://127.0.0.1:{relay_port}",
                                          PRIMARY_USER_PHONE_NUMBERS="+14155550100", PRIMARY_USER_FIRST_NAME="Jordan"))
        (tmp_path / ".env").write_text("TWILIO_AUTH_TOKEN=recipe-token\n")  # the simulator reads it like the relay
        result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--relay-url",
                                 f"http://127.0.0.1:{relay_port}"], cwd=tmp_path, env=process_env(),
                                capture_output=True, text=True, timeout=100)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "call completed as scripted" in out
        assert "barge-ins: 1, " in out
        assert f"stream connected ws://127.0.0.1:{relay_port}/media-stream" in out
        assert "caller   hears waiting music" in out
        assert "twilio   clear (waiting music)" in out
        assert "clear: caller heard" in out and "of item turn-2" in out  # the scripted turn the caller cut
        assert (tmp_path / "call.wav").is_file()
        # The same recipe over Telnyx: the relay has the simulated Telnyx caller's public key from the stand-ins.
        over_telnyx = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--relay-url",
                                      f"http://127.0.0.1:{relay_port}", "--phone", "telnyx", "--out", "telnyx.wav"],
                                     cwd=tmp_path, env=process_env(), capture_output=True, text=True, timeout=100)
        assert over_telnyx.returncode == 0, over_telnyx.stdout + over_telnyx.stderr
        assert f"stream connected ws://127.0.0.1:{relay_port}/telnyx/media-stream" in over_telnyx.stdout
        # A caller playing another scenario than the stand-ins: the failure says so.
        other = json.loads((ROOT / "scenarios" / "real_speech.json").read_text())
        other["max_duration_s"] = 12
        for turn in other["assistant"] + other["caller"]:
            if "audio" in turn:
                turn["audio"] = str(ROOT / turn["audio"])
        (tmp_path / "other.json").write_text(json.dumps(other))
        mismatched = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--relay-url",
                                     f"http://127.0.0.1:{relay_port}", "--scenario", "other.json"], cwd=tmp_path,
                                    env=process_env(), capture_output=True, text=True, timeout=100)
        assert mismatched.returncode == 1
        assert mismatched.stdout.rstrip().splitlines()[-1] == (
            "hint: the stand-ins speak their own --scenario; start python simulate.py standins with the same "
            "--scenario as this call (other.json)")
    assert terminals.standins.returncode == 0
    streamed = terminals.streamed
    # The stand-ins' terminal counts each call's times from that call's start.
    assert "--- call 1 (times from its start) ---" in streamed and "--- call 3 (times from its start) ---" in streamed
    first_event = streamed.split("--- call 3 (times from its start) ---\n")[1].splitlines()[0]
    assert int(first_event.split()[0]) < 1000, first_event


def test_standins_on_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "standins", "--port", str(port)],
                                cwd=tmp_path, env=process_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"port {port} cannot be bound" in result.stderr and "--port" in result.stderr


def test_a_copied_scenario_finds_the_project_assets(tmp_path: Path) -> None:
    """Audio paths resolve relative to the scenario file, then to the project: a scenario copied anywhere runs."""
    copy = tmp_path / "mine.json"
    shutil.copy(ROOT / "scenarios" / "default.json", copy)
    scenario = load_scenario(copy)
    assert scenario.caller[0].ulaw == audio.to_ulaw_8k(audio.load_wav(ROOT / "assets" / "caller_question.wav"))
    (tmp_path / "assets").mkdir()  # a file beside the scenario wins over the project's
    own = audio.write_wav(b"\x10\x00" * 800)
    (tmp_path / "assets" / "caller_question.wav").write_bytes(own)
    assert load_scenario(copy).caller[0].ulaw == audio.to_ulaw_8k(audio.read_wav(own))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["caller"][1].pop("when"), "caller turn 2: missing 'when'"),
    (lambda d: d["caller"][2].pop("audio"), "caller turn 3: missing 'audio' (or 'dtmf')"),
    (lambda d: d["assistant"][3].pop("transcript"), "assistant turn 4: missing 'transcript'"),
    (lambda d: d["assistant"][5]["function_calls"][0].pop("name"), "assistant turn 6: function call 1: missing 'name'"),
    (lambda d: d["caller"][0].update(wen={}), "caller turn 1: unknown key 'wen' (known: audio, dtmf, text, when)"),
    (lambda d: d.update(expect_bargeins=1), "scenario: unknown key 'expect_bargeins'"),
    (lambda d: d["caller"][0].update(when={"after": "asistant_done"}), "caller turn 1: when: needs"),
    (lambda d: d.update(line_noise_dbfs=20), "line_noise_dbfs: must be a level from -120 to 0 dBFS"),
    (lambda d: d.update(network={"delay_ms": -5}), "network: delay_ms: must be a number >= 0"),
    (lambda d: d["caller"].append("hello"), "caller turn 5: must be a JSON object, not str"),
])
def test_a_scenario_missing_or_misnaming_a_field_names_it(tmp_path: Path, change: object, message: str) -> None:
    data = json.loads((ROOT / "scenarios" / "default.json").read_text())
    change(data)  # type: ignore[operator]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_audio_file_names_the_paths_tried(tmp_path: Path) -> None:
    data = {"caller": [{"audio": "assets/nope.wav", "when": {"at_ms": 0}}]}
    with pytest.raises(ScenarioError) as caught:
        scenario_from_dict(data, tmp_path)
    assert str(caught.value) == (f"caller turn 1: audio 'assets/nope.wav' not found; tried "
                                 f"{tmp_path / 'assets' / 'nope.wav'} and {ROOT / 'assets' / 'nope.wav'}")


def test_cli_reports_a_bad_scenario_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"caller": [{"audio": "assets/caller_question.wav"}]}')
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--scenario", str(path)], cwd=tmp_path,
                            env=process_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"simulate: {path}: caller turn 1: missing 'when'\n"


def test_no_scripted_greeting_names_a_time_of_day() -> None:
    """The relay's own welcome says good morning, afternoon or evening by the clock; a scripted assistant that says
    it too contradicts it a few ms later half the day."""
    for path in sorted((ROOT / "scenarios").glob("*.json")):
        for turn in json.loads(path.read_text())["assistant"]:
            assert not re.search(r"good (morning|afternoon|evening)", turn.get("transcript", ""), re.I), path


def test_a_failed_run_keeps_the_last_good_recording(tmp_path: Path) -> None:
    """A failed call is written to call.failed.wav; the call.wav of the last good run is left as it was."""
    good = audio.write_wav(b"\x00\x01" * 8000)
    (tmp_path / "call.wav").write_bytes(good)
    scenario = {"assistant": [{"audio": "assets/assistant_short.wav", "transcript": "Of course."}],
                "caller": [], "hangup": {"after": "assistant_done", "delay_ms": 200}, "expect_barge_ins": 2}
    (tmp_path / "fails.json").write_text(json.dumps(scenario))
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--scenario", "fails.json"], cwd=tmp_path,
                            env=process_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "FAILED: expected 2 barge-in(s), the caller's phone got 0 clear(s) of assistant audio" in result.stdout
    assert "call.wav from an earlier run is left as it was" in result.stdout
    assert (tmp_path / "call.wav").read_bytes() == good
    failed = audio.load_wav(tmp_path / "call.failed.wav")
    assert failed.channels == 2 and failed.duration_ms > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.failed.wav", "call.wav", "fails.json"]  # no temp file


async def test_real_speech_over_a_noisy_line_with_network_delay() -> None:
    """The real-speech scenario (CMU Arctic recording) passes with -45 dBFS of line noise and 40 ms +- 10 ms one way
    between the phone and the relay; the barge-in is truncated near one round trip short of what the caller heard,
    never past it."""
    scenario = load_scenario(ROOT / "scenarios" / "real_speech.json")
    scenario.line_noise_dbfs, scenario.network_delay_ms, scenario.network_jitter_ms = -45.0, 40.0, 10.0
    result = await simulate.simulate_call(scenario, seed=3)
    assert result.problems == []
    [(_item, heard, truncated)] = result.barge_in_accuracy()
    assert truncated is not None
    assert truncated <= heard + 5, "the relay said the caller heard more than was played"
    assert heard - truncated <= 2 * (40 + 10) + 60, (heard, truncated)
    noise = result.caller.sent_audio[0][1]
    assert -48 < audio.rms_dbfs(audio.ulaw_to_pcm16(noise)) < -42  # the line was noisy from the first frame


async def test_an_utterance_never_detected_is_named() -> None:
    """Under noise louder than the speech, the stand-in never hears turn 1: the failure names that turn."""
    scenario = load_scenario(ROOT / "scenarios" / "real_speech.json")
    scenario.line_noise_dbfs, scenario.max_duration_s = -6.0, 9.0
    result = await simulate.simulate_call(scenario, seed=1)
    assert result.problems[0].startswith("the call did not finish within 9 s: waiting to begin turn 2 of 3")
    assert "no assistant audio came after it (was that speech ever detected?)" in result.problems[0]
    assert result.problems[1].startswith("the caller's turn 1 ('Author of the danger trail, Philip Steels, etc.', ")
    assert result.problems[1].endswith("was never detected as speech")


def _vad_events(ulaw: bytes) -> list[tuple[str, int]]:
    vad = Vad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=700)
    events = []
    for frame in audio.frames(ulaw):
        events += vad.feed(frame)
    return events


def _noisy(speech: bytes, dbfs: float, lead_ms: int, tail_ms: int) -> bytes:
    """``speech`` (µ-law) after ``lead_ms`` and before ``tail_ms`` of line noise at ``dbfs``, noise under it too."""
    line = LineNoise(dbfs, seed=5)
    out = [line.frame() for _ in range(lead_ms // 20)]
    out += [line.frame(frame) for frame in audio.frames(speech)]
    out += [line.frame() for _ in range(tail_ms // 20)]
    return b"".join(out)


@pytest.mark.parametrize("dbfs", [-65.0, -45.0, -35.0])
def test_the_vad_follows_the_noise_floor(dbfs: float) -> None:
    """Real speech under line noise starts within 40 ms of where it starts in digital silence; noise alone, even
    louder than the fixed -40 dBFS level, is never speech."""
    speech = audio.to_ulaw_8k(audio.load_wav(ROOT / "assets" / "caller_real_full.wav"))
    clean = _vad_events(audio.ULAW_SILENCE * 8000 + speech + audio.ULAW_SILENCE * 8000)
    noisy = _vad_events(_noisy(speech, dbfs, 1000, 1000))
    assert [kind for kind, _ in noisy] == ["started", "stopped"]
    assert abs(noisy[0][1] - clean[0][1]) <= 40
    assert _vad_events(_noisy(b"", dbfs + 10, 6000, 0)) == []


def test_ctrl_c_mid_call_stops_in_one_line_and_keeps_the_recording(tmp_path: Path) -> None:
    """Ctrl-C during `python simulate.py`: one line on stderr, no traceback, exit 130, and what the caller recorded
    so far in call.partial.wav."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "simulate.py")], cwd=tmp_path, env=process_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _read_until(proc, "caller   says", [])
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith("simulate: stopped (Ctrl-C) ") and line.endswith("what was recorded is in call.partial.wav")
    recorded = audio.load_wav(tmp_path / "call.partial.wav")
    assert recorded.channels == 2 and recorded.duration_ms > 1000
    assert not (tmp_path / "call.wav").exists()


def test_an_unwritable_out_is_refused_before_the_call(tmp_path: Path) -> None:
    """`--out` into a folder that does not exist stops at once with one line and exit 2: no call is placed."""
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--out", str(tmp_path / "no" / "call.wav")],
                            cwd=tmp_path, env=process_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == (f"simulate: --out {tmp_path / 'no' / 'call.wav'}: there is no folder {tmp_path / 'no'}; "
                             "choose another path with --out\n")
    assert "POST /incoming-call" not in result.stdout


def test_the_console_address_comes_before_the_call(tmp_path: Path) -> None:
    """`python simulate.py --console` prints the console's address before the call is placed, so the call can be
    watched live."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "simulate.py"), "--console"], cwd=tmp_path,
                            env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        _read_until(proc, "POST /incoming-call", lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    console = [i for i, line in enumerate(lines) if line.startswith("console: http://127.0.0.1:")]
    assert console and console[0] < len(lines) - 1 and "/console  (any user name; password " in lines[console[0]]


def test_standins_with_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    """`python simulate.py standins --port 99999`: exit 2 and one line naming the option, no traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "standins", "--port", "99999"],
                            cwd=tmp_path, env=process_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == ("simulate.py standins: error: argument --port: a port is a whole number "
                                              "from 1 to 65535")


async def test_relay_url_failures_say_what_to_do(stack: contextlib.AsyncExitStack, tmp_path: Path) -> None:
    """A call to --relay-url that never reaches a stream ends in one line saying what to do (no scheme, a network
    the relay does not serve, a missing token, nothing listening), exit 1 or 2, and no empty .failed.wav."""
    base = await start_relay(stack, make_config(twilio_auth_token="relay-token", allow_unsigned_webhooks=False,
                                                public_url="http://127.0.0.1:1"))  # what it signs against: unused

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "simulate.py"), *args, cwd=tmp_path,
                                                    env=process_env(), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode().rstrip().splitlines()[-1]

    assert await run("--relay-url", base.removeprefix("http://")) == (
        2, f"simulate.py: error: --relay-url needs http:// or https:// in front: --relay-url {base}")
    assert await run("--relay-url", base, "--phone", "plivo") == (
        1, f"FAILED: the relay at {base} does not serve plivo (404): set PLIVO_AUTH_TOKEN on it (or "
           "ALLOW_UNSIGNED_WEBHOOKS=true for local tests)")
    assert await run("--relay-url", base) == (
        1, f"FAILED: the relay at {base} refused the webhook's signature (403): sign with the relay's "
           "TWILIO_AUTH_TOKEN, given with --auth-token or as TWILIO_AUTH_TOKEN in ./.env")
    closed = f"http://127.0.0.1:{simulate.free_port()}"
    assert await run("--relay-url", closed) == (
        1, f"FAILED: nothing answers at {closed}: start the relay (python relay.py) or fix --relay-url")
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".wav")]


def test_two_terminal_recipe_for_an_outbound_call(tmp_path: Path) -> None:
    """`python simulate.py standins --outbound machine` also serves the networks' REST APIs and prints their
    variables; a relay started with them places the call `python relay.py call` asks for, and the stand-ins' callee
    (an answering machine) gets one message."""
    with two_terminals(tmp_path, "--outbound", "machine") as terminals:
        relay_port = terminals.relay_port
        variables = dict(re.findall(r"^\s+([A-Z_]+)=(\S+)", terminals.printed, re.MULTILINE))
        assert variables["TWILIO_API_BASE_URL"] == f"http://127.0.0.1:{terminals.standins_port}/twilio"
        token = "a-console-token-of-some-length"
        env = process_env(**{k: v for k, v in variables.items() if k != "TELNYX_PUBLIC_KEY"}, PORT=str(relay_port),
                          PUBLIC_URL=f"http://127.0.0.1:{relay_port}", CONSOLE_TOKEN=token)
        terminals.start_relay(env)
        result = subprocess.run([sys.executable, str(ROOT / "relay.py"), "call", "+14155550100", "--purpose",
                                 "Remind Jordan about the 3 pm dentist appointment today.", "--network", "twilio"],
                                cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].endswith("ended: machine")
    streamed = terminals.streamed
    assert "answering machine detection: machine_end_beep" in streamed
    assert "relay closed the stream (code 1000)" in streamed


def test_a_scenario_that_ends_with_a_transfer(tmp_path: Path) -> None:
    """`python simulate.py --scenario scenarios/transfer.json`: the caller asks for a person, hears the line, and
    the simulated network shows the <Dial> it received; a malformed transfer_to names the field."""
    result = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--scenario",
                             str(ROOT / "scenarios" / "transfer.json")], cwd=tmp_path, env=process_env(),
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "call completed as scripted" in result.stdout
    assert "twilio   call updated: " in result.stdout and "<Number>+14155550111</Number>" in result.stdout
    scenario = json.loads((ROOT / "scenarios" / "transfer.json").read_text())
    scenario["transfer_to"] = "4155550111"
    (tmp_path / "bad.json").write_text(json.dumps(scenario))
    bad = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--scenario", "bad.json"], cwd=tmp_path,
                         env=process_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "transfer_to: must be an E.164 number or a sip: URI, not '4155550111'" in bad.stderr

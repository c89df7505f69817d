"""The simulator's scenario: a call's script (what the assistant says, what the caller says and when, the
line and the network), read from a JSON file and checked, for the stand-ins to play."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import audio
from standins.openai_service import AssistantTurn, WebSearchScript
from standins.phone_network import DEFAULT_LINE_NOISE_DBFS, CallerTurn

HERE = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = HERE / "scenarios" / "default.json"
DEFAULT_CALLER = "+14155550100"

# --- Scenario --------------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file, the turn and the field."""


@dataclass(slots=True)
class Scenario:
    """A whole scripted call (its JSON form: ``scenario_from_dict``, docs/simulator.md "Scenario files")."""

    caller_number: str = DEFAULT_CALLER
    caller_name: str = "Jordan"
    assistant: list[AssistantTurn] = field(default_factory=list)
    caller: list[CallerTurn] = field(default_factory=list)
    hangup: dict[str, Any] = field(default_factory=lambda: {"after": "assistant_done", "delay_ms": 800})
    expect_barge_ins: int | None = None
    expect_wait_music: bool = False
    """The caller must hear waiting music at some point."""
    web_search: WebSearchScript = field(default_factory=WebSearchScript)
    max_duration_s: float = 120.0
    line_noise_dbfs: float | None = DEFAULT_LINE_NOISE_DBFS
    """The caller's line noise (RMS dBFS); None: digital silence between utterances."""
    network_delay_ms: float = 0.0
    """One-way delay between the phone network and the relay, each direction."""
    network_jitter_ms: float = 0.0
    """Extra one-way delay per message, uniform in [0, jitter]; order is kept."""
    transfer_to: str | None = None
    """The relay's ``TRANSFER_TO`` for this call (E.164 or ``sip:``): the network's REST stand-in takes the
    transfer and shows the ``<Dial>`` it received."""

    def caller_words(self) -> list[str]:
        """What the caller says, utterance by utterance (the stand-in's input transcriptions)."""
        return [turn.text for turn in self.caller if turn.ulaw and turn.text]


SCENARIO_KEYS = {"caller_number", "caller_name", "assistant", "caller", "hangup", "expect_barge_ins",
                 "expect_wait_music", "web_search", "max_duration_s", "line_noise_dbfs", "network", "transfer_to"}
"""The keys of a scenario file; docs/simulator.md "Scenario files" says what each means."""
ASSISTANT_KEYS = {"audio", "transcript", "function_calls"}
CALLER_KEYS = {"audio", "text", "when", "dtmf"}
MOMENT_KEYS = {"after", "delay_ms", "ms", "at_ms", "by"}
WEB_SEARCH_KEYS = {"answer", "source_url", "delay_ms", "status"}
NETWORK_KEYS = {"delay_ms", "jitter_ms"}


def _object(value: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: must be a JSON object, not {type(value).__name__}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return value


def _number(value: Any, where: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise ScenarioError(f"{where}: must be a number >= {low:g}, not {value!r}")
    return float(value)


def _moment(value: Any, where: str, hangup: bool = False) -> dict[str, Any]:
    when = _object(value, where, MOMENT_KEYS)
    if hangup and when.get("by") == "assistant":
        return when
    if "at_ms" in when:
        _number(when["at_ms"], f"{where}: at_ms")
    elif when.get("after") == "assistant_done":
        _number(when.get("delay_ms", 0), f"{where}: delay_ms")
    elif when.get("after") == "assistant_audio":
        _number(when.get("ms", 0), f"{where}: ms")
    else:
        raise ScenarioError(f'{where}: needs {{"after": "assistant_done", "delay_ms": N}}, '
                            f'{{"after": "assistant_audio", "ms": N}} or {{"at_ms": N}}'
                            + (' or {"by": "assistant"}' if hangup else "") + f", not {json.dumps(value)}")
    return when


def _audio(value: Any, base: Path, where: str) -> bytes:
    """A WAV named in a scenario as µ-law 8 kHz: an absolute path, or relative to the scenario file,
    then to the project."""
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: audio must be a WAV file path, not {value!r}")
    path = Path(value)
    tried = [path] if path.is_absolute() else [base / path, HERE / path]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        paths = " and ".join(str(p.resolve()) for p in tried)
        raise ScenarioError(f"{where}: audio {value!r} not found; tried {paths}")
    try:
        return audio.to_ulaw_8k(audio.load_wav(found))
    except (OSError, audio.WavError) as exc:
        raise ScenarioError(f"{where}: {found}: {exc}") from exc


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file (audio paths relative to the file, then to the project).

    Raises:
        ScenarioError: the file cannot be read or is not a valid scenario (the message names the
            file, the turn and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ScenarioError(f"{path}: not JSON: {exc}") from exc
    try:
        return scenario_from_dict(data, path.parent)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def scenario_from_dict(data: Any, base: Path) -> Scenario:
    """Build a Scenario from its JSON form (keys: ``SCENARIO_KEYS``; see ``scenarios/default.json``).

    Raises:
        ScenarioError: naming the turn and the field that is missing, unknown or wrong.
    """
    data = _object(data, "scenario", SCENARIO_KEYS)
    assistant = []
    for n, raw in enumerate(_list(data.get("assistant", []), "assistant"), 1):
        where = f"assistant turn {n}"
        turn = _object(raw, where, ASSISTANT_KEYS)
        if "audio" not in turn and "function_calls" not in turn:
            raise ScenarioError(f"{where}: missing 'audio' (or 'function_calls')")
        if "audio" in turn and "transcript" not in turn:
            raise ScenarioError(f"{where}: missing 'transcript' (the words of its audio)")
        calls = []
        for k, call in enumerate(_list(turn.get("function_calls", []), f"{where}: function_calls"), 1):
            call = _object(call, f"{where}: function call {k}", {"name", "arguments"})
            if not isinstance(call.get("name"), str):
                raise ScenarioError(f"{where}: function call {k}: missing 'name'")
            calls.append((call["name"], call.get("arguments", {})))
        assistant.append(AssistantTurn(ulaw=_audio(turn["audio"], base, where) if "audio" in turn else b"",
                                       transcript=str(turn.get("transcript", "")), function_calls=calls))
    caller = []
    for n, raw in enumerate(_list(data.get("caller", []), "caller"), 1):
        where = f"caller turn {n}"
        turn = _object(raw, where, CALLER_KEYS)
        if "when" not in turn:
            raise ScenarioError(f"{where}: missing 'when'")
        if "audio" not in turn and "dtmf" not in turn:
            raise ScenarioError(f"{where}: missing 'audio' (or 'dtmf')")
        dtmf = str(turn.get("dtmf", ""))
        ulaw = b"" if dtmf else _audio(turn["audio"], base, where)
        caller.append(CallerTurn(ulaw=ulaw, text=str(turn.get("text", "")),
                                 when=_moment(turn["when"], f"{where}: when"), dtmf=dtmf))
    web_search = WebSearchScript(**_object(data.get("web_search", {}), "web_search", WEB_SEARCH_KEYS))
    network = _object(data.get("network", {}), "network", NETWORK_KEYS)
    noise = data.get("line_noise_dbfs", DEFAULT_LINE_NOISE_DBFS)
    expect_barge_ins = data.get("expect_barge_ins")
    transfer_to = data.get("transfer_to")
    if transfer_to is not None and (not isinstance(transfer_to, str) or not transfer_to.startswith(("+", "sip:"))):
        raise ScenarioError(f"transfer_to: must be an E.164 number or a sip: URI, not {transfer_to!r}")
    return Scenario(
        caller_number=str(data.get("caller_number", DEFAULT_CALLER)),
        caller_name=str(data.get("caller_name", "Jordan")),
        assistant=assistant,
        caller=caller,
        hangup=_moment(data.get("hangup", {"after": "assistant_done", "delay_ms": 800}), "hangup", hangup=True),
        expect_barge_ins=None if expect_barge_ins is None else int(_number(expect_barge_ins, "expect_barge_ins")),
        expect_wait_music=bool(data.get("expect_wait_music", False)),
        web_search=web_search,
        max_duration_s=_number(data.get("max_duration_s", 120.0), "max_duration_s", 1.0),
        line_noise_dbfs=_noise_level(noise),
        network_delay_ms=_number(network.get("delay_ms", 0), "network: delay_ms"),
        network_jitter_ms=_number(network.get("jitter_ms", 0), "network: jitter_ms"),
        transfer_to=transfer_to,
    )


def _noise_level(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -120 <= value <= 0:
        raise ScenarioError(f"line_noise_dbfs: must be a level from -120 to 0 dBFS, or null, not {value!r}")
    return float(value)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: must be a JSON list, not {type(value).__name__}")
    return value


def default_scenario() -> Scenario:
    """The built-in call: greeting, a question, a long answer interrupted, a short answer, a web
    search with waiting music, goodbye."""
    return load_scenario(DEFAULT_SCENARIO)


class ScriptedAudio:
    """Which scripted assistant turn a payload the caller received carries, told by its bytes.

    For a relay in another process whose Realtime stand-in speaks the same scenario
    (``simulate.py standins``): the relay forwards each audio delta as one media message, so a
    payload is the continuation of the turn being heard, or the start of another. Items are named
    ``turn-N`` after the scenario's assistant turn. A payload of neither is not the script's
    (waiting music, or a real model's voice).
    """

    def __init__(self, turns: list[AssistantTurn]) -> None:
        self._audio = [turn.ulaw for turn in turns]
        self._turn: int | None = None
        self._offset = 0

    def __call__(self, payload: str) -> tuple[str, int] | None:
        data = base64.b64decode(payload)
        if self._turn is not None:
            at = self._offset
            if self._audio[self._turn][at : at + len(data)] == data:
                self._offset += len(data)
                return f"turn-{self._turn + 1}", at
            at = self._audio[self._turn].find(data.rstrip(b"\xff"), at) if data.strip(b"\xff") else -1
            if at >= 0:  # further on: a relay that does not forward silence (GPT-Live's) skipped some
                self._offset = at + len(data)
                return f"turn-{self._turn + 1}", at
        first = 0 if self._turn is None else self._turn + 1
        count = len(self._audio)
        for n in (i % count for i in range(first, first + count)):
            if self._audio[n] and self._audio[n].startswith(data):
                self._turn, self._offset = n, len(data)
                return f"turn-{n + 1}", 0
        return None

"""The house's layout: imports point one way (the table below, which docs/layout.md follows), the
call names no wire string of any phone network or voice API, and the image ships the product only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import ROOT

FIRST_PARTY = ("relay", "routes", "bridge", "phones", "model", "ops", "config", "envreader", "callers", "tools",
               "mailserver", "redact", "audio", "simulate", "simulate_outbound", "standins", "store")
"""Every first-party module and package at the top of the repository."""

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    # The app: everything, and nothing imports it (but the simulator, which runs it as a user would).
    "relay": ("routes", "bridge", "phones", "model", "ops", "store", "config", "callers", "tools", "redact", "audio"),
    "routes": ("routes", "bridge.call", "bridge.events", "bridge.handoff", "bridge.prewarm", "phones", "model.session",
               "model.prices", "model.websocket", "ops", "store", "config", "envreader", "callers", "redact"),
    # The call: its own parts, the seams' interfaces (phone leg, model session) and the deployment's choice of
    # model sessions; never a network's or a voice API's implementation.
    "bridge": ("bridge", "phones.leg", "model.session", "model.prices", "model.factory", "model.websocket",
               "ops.tokens", "config", "callers", "tools", "redact", "audio"),
    # The seams' implementations: their own protocol modules.
    "phones": ("phones", "config", "envreader", "callers", "tools", "redact", "audio"),
    "model": ("model", "config", "tools", "redact"),
    # Observers see the calls' events only.
    "ops": ("ops", "bridge.events", "config", "redact"),
    # The records: an observer of the calls' events, with its database.
    "store": ("store", "bridge.events", "config", "envreader", "callers", "redact"),
    "callers": ("config", "envreader"),
    "config": ("envreader", "mailserver"),
    "envreader": ("mailserver",),
    "tools": ("mailserver",),
    "mailserver": (),
    "redact": (),
    "audio": (),
    # The simulator starts the relay as a user would and dials it through the stand-ins.
    "simulate": ("relay", "bridge.music", "config", "redact", "audio", "standins", "simulate_outbound"),
    "simulate_outbound": ("simulate", "relay", "config", "standins"),
    # The stand-ins speak the vendors' protocols from the vendors' own types, never from the product's code.
    "standins": ("standins", "audio"),
}

WIRE_STRINGS = (
    # Realtime GA (model.realtime_wire)
    "response.create", "response.cancel", "conversation.item", "input_audio_buffer", "session.update",
    "response.output_audio", "item_truncate", "audio_end_ms\":",
    # GPT-Live
    "session.start", "session.input_audio", "session.commentary",
    # Twilio, Plivo (phones.twilio, phones.plivo)
    "streamSid", "playAudio", "clearAudio", "checkpoint", "playedStream", "customParameters",
)


def _modules() -> list[tuple[str, Path]]:
    found = [(path.stem, path) for path in ROOT.glob("*.py")]
    for package in ROOT.iterdir():
        if (package / "__init__.py").is_file() and package.name not in ("tests", "benchmarks"):
            found += [(f"{package.name}.{path.stem}".removesuffix(".__init__"), path) for path in package.glob("*.py")]
    return sorted(found)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in FIRST_PARTY}


def _allowed(name: str, rules: tuple[str, ...]) -> bool:
    return any(name == rule or name.startswith(rule + ".") or rule.startswith(name + ".") for rule in rules)


def test_every_module_is_in_the_table() -> None:
    """A new top-level module or package is placed in the import table before it lands."""
    tops = {name.split(".")[0] for name, _ in _modules()}
    assert tops == set(FIRST_PARTY) == set(MAY_IMPORT)


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_imports_point_one_way(module: str, path: Path) -> None:
    """Each module imports only what the table allows its package (a module named ``x`` allows ``x.y``)."""
    rules = MAY_IMPORT[module.split(".")[0]]
    wrong = sorted(name for name in _imports(path)
                   if not _allowed(name, rules) and not (name.split(".")[0] == module and "." not in module))
    assert wrong == [], f"{module} imports {wrong}, outside {rules}"


@pytest.mark.parametrize("path", sorted((ROOT / "bridge").glob("*.py")), ids=lambda path: path.name)
def test_the_call_names_no_wire_string(path: Path) -> None:
    """The call's code (docstrings aside) holds no message name or field of a phone network or a voice API:
    those are written once, in each protocol's own module."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)  # a bare string statement documents what precedes it
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    strings = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    found = sorted({wire for wire in WIRE_STRINGS for text in strings if wire in text})
    assert found == []


def test_the_image_ships_the_product_only() -> None:
    """The Dockerfile copies the product's modules and packages, never the simulator, the stand-ins or the tests."""
    copied = [line.split()[1:-1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    sources = {source.rstrip("/") for sources in copied for source in sources}
    product = {name for name in FIRST_PARTY if name not in ("simulate", "simulate_outbound", "standins", "store")}
    assert {name.removesuffix(".py") for name in sources} >= product
    assert not sources & {"simulate.py", "simulate_outbound.py", "standins", "tests", "benchmarks", "*.py", "scenarios"}


def test_what_the_simulator_writes_is_git_ignored() -> None:
    """The recordings `python simulate.py` leaves in the working directory (the call, a failed one, a partial one
    after Ctrl-C) are git-ignored, with .env."""
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"call.wav", "call.failed.wav", "call.partial.wav", ".env"} <= set(ignored)

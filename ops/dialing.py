"""``python relay.py call +14155550100 --purpose "..."``: have the running relay place a call, then follow it.

The command is a client of the relay's own ``POST /calls`` and ``GET /calls/<call_sid>``, with ``CONSOLE_TOKEN``
as a Bearer token, over loopback by default (the relay of this host, on ``PORT``; TLS when it serves TLS, its
certificate not checked on that hop, as ``healthcheck`` does).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from config import Config

REQUEST_TIMEOUT_S = 15.0
FOLLOW_FOR_S = 3600.0
"""How long the command follows a call before leaving it to go on alone."""
POLL_S = 1.0


def place_call(config: Config, to: str, purpose: str, network: str | None = None, relay_url: str | None = None,
               out: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> int:
    """Place the call and print its id, then each change of its status until it ends. Returns 0 once placed and
    ended, 1 when refused (with the relay's reason) or the relay cannot be reached, 2 without ``CONSOLE_TOKEN``."""
    if not config.console_token:
        out("call: CONSOLE_TOKEN is not set: the relay serves POST /calls only behind it")
        return 2
    base = (relay_url or f"{'https' if config.tls_cert_file else 'http'}://127.0.0.1:{config.port}").rstrip("/")
    body = {"to": to, "purpose": purpose, **({"network": network} if network else {})}
    status, answer = _request(config, "POST", base + "/calls", body)
    if status != 202:
        out(f"call: refused ({status or 'no answer'}): {answer.get('error', answer)}")
        return 1
    call_sid = answer["call_sid"]
    out(f"call {call_sid} queued (order {answer['order']}) to {to}")
    seen = ""
    deadline = time.monotonic() + FOLLOW_FOR_S
    while time.monotonic() < deadline:
        sleep(POLL_S)
        status, state = _request(config, "GET", f"{base}/calls/{call_sid}")
        if status != 200:
            out(f"call {call_sid}: the relay no longer knows it ({status or 'no answer'})")
            return 1
        now = " ".join(filter(None, (state["status"], state["answered_by"] and f"answered by {state['answered_by']}")))
        if now != seen:
            out(f"call {call_sid}: {now}")
            seen = now
        if state["outcome"]:
            out(f"call {call_sid} ended: {state['outcome']}")
            return 0
    out(f"call {call_sid} still going after {FOLLOW_FOR_S / 60:.0f} minutes; no longer following it")
    return 0


def _request(config: Config, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """One JSON request with the console token; ``(0, {"error": why})`` when the relay cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {config.console_token}", "Content-Type": "application/json"})
    context = ssl._create_unverified_context() if url.startswith("https://127.0.0.1") else None  # loopback only
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (OSError, ValueError) as exc:
        return 0, {"error": f"{url}: {getattr(exc, 'reason', exc)}"}

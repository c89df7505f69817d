"""``python relay.py``'s command line: the options, and the commands beside serving (``healthcheck``, ``call``)."""

from __future__ import annotations

import argparse


def command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """``python relay.py [--host HOST] [--port PORT] [healthcheck | call TO --purpose TEXT | calls]``: the
    environment (and ``.env``) configures the rest.

    Raises:
        SystemExit: after ``--help``, or naming a malformed option (exit 2).
    """
    parser = argparse.ArgumentParser(
        prog="relay.py",
        description="Serve phone calls (Twilio, Plivo, Telnyx) bridged to OpenAI's voice models. Every setting comes "
                    "from the environment or ./.env (see .env.example and the README); these options override two.",
        epilog="Without a command it serves until SIGINT or SIGTERM, then drains (DRAIN_TIMEOUT_S).",
    )
    parser.add_argument("--host", help="address to listen on (default: $HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=port_argument, help="port to listen on, 1-65535 (default: $PORT, else 10000)")
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.add_parser("healthcheck", help="ask this relay's own /healthz over loopback (TLS when it serves "
                        "TLS); exit 0 when healthy (a container's HEALTHCHECK)")
    call = commands.add_parser("call", help="have the running relay place a call (POST /calls with CONSOLE_TOKEN), "
                               "then follow it until it ends")
    call.add_argument("to", help="the number to call, E.164 (+14155550100): on an allowlist or in "
                      "OUTBOUND_ALLOWED_NUMBERS")
    call.add_argument("--purpose", required=True, help="what the assistant calls about, in a sentence or two")
    call.add_argument("--network", choices=("twilio", "plivo"), help="the network to call through (needed when "
                      "both can place calls)")
    call.add_argument("--relay-url", help="the running relay (default: this host's $PORT over loopback)")
    calls = commands.add_parser("calls", help="print the last calls from the records (DATABASE_URL) as a table")
    calls.add_argument("--limit", type=limit_argument, default=20, help="how many, newest first (1-200; default 20)")
    calls.add_argument("--caller", help="only this number's calls (E.164)")
    return parser.parse_args(argv)


def limit_argument(text: str) -> int:
    """An argparse type: how many calls to list, 1-200 (ArgumentTypeError otherwise)."""
    return _whole_number(text, 200, "a limit")


def port_argument(text: str) -> int:
    """An argparse type: a TCP port, 1-65535 (ArgumentTypeError otherwise)."""
    return _whole_number(text, 65535, "a port")


def _whole_number(text: str, high: int, what: str) -> int:
    """``text`` as a whole number from 1 to ``high``; ArgumentTypeError naming ``what`` otherwise."""
    number = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= number <= high:
        raise argparse.ArgumentTypeError(f"{what} is a whole number from 1 to {high}")
    return number

"""Cost of redaction per log line: 15 secrets against none, in the same run.

Run: python benchmarks/redact.py

A typical bridge DEBUG line and a long INFO line are formatted by ``redact.LogFormatter`` (text and
JSON), which masks each field, and written into memory, as the relay's log handler does; the
baseline is the same with an empty ``Redactor``. A ``print`` goes through a ``RedactingStream``
instead: one mask pass over the text. Each figure is the best of 5 runs.
"""

from __future__ import annotations

import io
import logging
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hot_path import per_call_us  # the same best-of-5 timer as the hot-path benchmark

import redact

SECRETS = [f"sk-{secrets.token_urlsafe(36)}" for _ in range(5)] + [secrets.token_hex(16) for _ in range(10)]
LINES = {
    "short DEBUG line": ("realtime %s stream_sid=%s", ("response.output_audio_transcript.delta", "MZ" + "0" * 32)),
    "long INFO line": (
        "call ended call_sid=%s duration=%.1fs reason=%s frames_in=%d frames_out=%d marks_acked=%d responses=%d "
        "barge_ins=%d realtime_errors=%d stream_sid=%s",
        ("CA" + "1" * 32, 39.2, "end_call: the caller said goodbye", 1962, 268, 179, 6, 1, 0, "MZ" + "0" * 32),
    ),
}


def per_line_us(redactor: redact.Redactor, json_lines: bool, message: str, args: tuple[object, ...]) -> float:
    formatter = redact.LogFormatter(json_lines, redactor)
    stream = io.StringIO()
    record = logging.LogRecord("bridge", logging.DEBUG, __file__, 1, message, args, None)

    def one() -> None:
        stream.write(formatter.format(record) + "\n")
        stream.seek(0)
        stream.truncate()

    return per_call_us(one)


def main() -> None:
    none, fifteen = redact.Redactor(()), redact.Redactor(SECRETS)
    print(f"{'line':<20}{'format':<8}{'no secrets µs':>15}{'15 secrets µs':>15}{'extra µs':>10}")
    for name, (message, args) in LINES.items():
        for json_lines in (False, True):
            base = per_line_us(none, json_lines, message, args)
            masked = per_line_us(fifteen, json_lines, message, args)
            fmt = "json" if json_lines else "text"
            print(f"{name:<20}{fmt:<8}{base:>15.1f}{masked:>15.1f}{masked - base:>10.1f}")
    print("\nOne mask pass per log line (the formatter's) and one per print (the stream's).")


if __name__ == "__main__":
    main()

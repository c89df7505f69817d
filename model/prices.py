"""What a call's model sessions cost: the price table (``assets/prices.json``, or ``PRICES_FILE``) and usage by kind.

Realtime bills tokens by kind; each ``response.done`` carries its ``usage`` (input tokens with their text, audio
and cached shares, output tokens with their text and audio shares), summed per call in ``TokenUsage``. GPT-Live
bills session seconds (``usage.seconds``). Sources: OpenAI's model pages, named per model in the table with its date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "assets" / "prices.json"
TOKEN_KINDS = ("text_input", "cached_text_input", "audio_input", "cached_audio_input", "text_output", "audio_output")
"""The kinds a price table names per million tokens (``cached_*`` is the cached share, billed at its own price)."""


@dataclass(slots=True)
class TokenUsage:
    """Tokens by kind a call's sessions used (Realtime), and seconds billed (GPT-Live). ``text_input`` and
    ``audio_input`` count the uncached share only; the cached share is in ``cached_*``."""

    text_input: int = 0
    cached_text_input: int = 0
    audio_input: int = 0
    cached_audio_input: int = 0
    text_output: int = 0
    audio_output: int = 0

    def add(self, other: TokenUsage) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def tokens(self) -> int:
        return sum(getattr(self, kind) for kind in TOKEN_KINDS)


def usage_of(raw: Any) -> TokenUsage | None:
    """A Realtime ``response.usage`` object as ``TokenUsage`` (the cached shares taken out of their kinds); None when
    there is none or it is not an object. Counts that are not whole numbers count 0."""
    if type(raw) is not dict:
        return None
    given = _object(raw.get("input_token_details"))
    cached = _object(given.get("cached_tokens_details"))
    out = _object(raw.get("output_token_details"))
    cached_text, cached_audio = _count(cached, "text_tokens"), _count(cached, "audio_tokens")
    return TokenUsage(
        text_input=max(0, _count(given, "text_tokens") - cached_text), cached_text_input=cached_text,
        audio_input=max(0, _count(given, "audio_tokens") - cached_audio), cached_audio_input=cached_audio,
        text_output=_count(out, "text_tokens"), audio_output=_count(out, "audio_tokens"),
    )


def _object(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _count(found: dict[str, Any], key: str) -> int:
    value = found.get(key)
    return value if type(value) is int and value > 0 else 0


class PriceError(ValueError):
    """A price table that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD prices per model: per million tokens by kind (Realtime), or per minute (GPT-Live)."""

    per_million_tokens: dict[str, dict[str, float]]
    per_minute: dict[str, float]
    date: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Read a price table (default: the bundled ``assets/prices.json``).

        Raises:
            PriceError: the file cannot be read, is not JSON, or a model has no usable prices.
        """
        path = Path(path) if path else DEFAULT_PRICES
        try:
            data = json.loads(path.read_text())
            models = data["models"]
            tokens = {name: {kind: float(entry["per_million_tokens"].get(kind, 0.0)) for kind in TOKEN_KINDS}
                      for name, entry in models.items() if "per_million_tokens" in entry}
            minutes = {name: float(entry["per_minute"]) for name, entry in models.items() if "per_minute" in entry}
        except OSError as exc:
            raise PriceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PriceError(f"{path}: not a price table ({type(exc).__name__}: {exc}); see assets/prices.json") \
                from None
        if any(price < 0 for prices in tokens.values() for price in prices.values()) or \
                any(price < 0 for price in minutes.values()):
            raise PriceError(f"{path}: a price is negative")
        return cls(tokens, minutes, str(data.get("date", "")))

    def cost(self, model: str, usage: TokenUsage, billed_s: float) -> float | None:
        """USD for ``usage`` (tokens) and ``billed_s`` (session seconds) on ``model``; None for a model the table
        does not price."""
        if model in self.per_minute:
            return self.per_minute[model] * billed_s / 60
        prices = self.per_million_tokens.get(model)
        if prices is None:
            return None
        return sum(prices[kind] * getattr(usage, kind) for kind in TOKEN_KINDS) / 1_000_000

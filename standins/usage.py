"""The usage a Realtime response reports (``response.usage``), as the service counts it, for the stand-in.

Audio in is 10 tokens a second, audio out 20 (OpenAI's realtime cost guide: "audio input ~ 1 token per 100 ms,
output ~ 1 token per 50 ms"); text is about 4 characters a token. Each response reads the whole conversation
again: what an earlier response read is cached. Shapes: ``openai.types.realtime.RealtimeResponseUsage``.
"""

from __future__ import annotations

from typing import Any

from audio import BYTES_PER_MS


def response_usage(input_bytes: int, cached_bytes: int, output_bytes: int, instructions: str, transcript: str,
                   first: bool) -> dict[str, Any]:
    """``response.usage`` for a response that read ``input_bytes`` of caller audio (µ-law, ``cached_bytes`` of
    them read before) and the ``instructions`` (cached but on the ``first`` response), and said ``output_bytes``
    of audio with ``transcript``."""
    audio_in = input_bytes // BYTES_PER_MS // 100
    cached_audio = cached_bytes // BYTES_PER_MS // 100
    text_in = len(instructions) // 4 + 4
    cached_text = 0 if first else text_in
    audio_out, text_out = output_bytes // BYTES_PER_MS // 50, len(transcript) // 4
    return {
        "input_tokens": audio_in + text_in, "output_tokens": audio_out + text_out,
        "total_tokens": audio_in + text_in + audio_out + text_out,
        "input_token_details": {"audio_tokens": audio_in, "text_tokens": text_in, "image_tokens": 0,
                                "cached_tokens": cached_audio + cached_text,
                                "cached_tokens_details": {"audio_tokens": cached_audio, "text_tokens": cached_text,
                                                          "image_tokens": 0}},
        "output_token_details": {"audio_tokens": audio_out, "text_tokens": text_out},
    }

"""Pure audio helpers: G.711 µ-law, WAV loading, framing and one monotonic frame pacer."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # The stdlib module is deprecated on 3.11-3.12 and gone in 3.13, where the
    # `audioop-lts` package (requirements.txt) provides the same module name.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE_HZ = 8000
"""G.711 telephony rate: Twilio Media Streams are always audio/x-mulaw, 8000 Hz, mono."""
FRAME_MS = 20
"""One Twilio media frame: 20 ms."""
FRAME_BYTES = SAMPLE_RATE_HZ * FRAME_MS // 1000
"""µ-law bytes in one 20 ms frame (one byte per sample): 160."""
BYTES_PER_MS = SAMPLE_RATE_HZ // 1000
"""µ-law bytes per millisecond of audio: 8."""
ULAW_SILENCE = b"\xff"
"""The µ-law byte for a zero sample (G.711: 0xFF encodes +0)."""

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class WavError(ValueError):
    """A file is not a readable 16-bit PCM WAV."""


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode G.711 µ-law to linear PCM.

    Args:
        ulaw: µ-law bytes, one per sample.

    Returns:
        Little-endian signed 16-bit samples, two bytes per input byte.
    """
    return audioop.ulaw2lin(ulaw, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode linear PCM as G.711 µ-law.

    Args:
        pcm: little-endian signed 16-bit mono samples.

    Returns:
        µ-law bytes, one per sample.
    """
    return audioop.lin2ulaw(pcm, 2)


def rms_dbfs(pcm: bytes) -> float:
    """Root-mean-square level of 16-bit PCM in dB relative to full scale.

    Returns:
        A value <= 0; ``-inf`` for digital silence or empty input.
    """
    if not pcm:
        return -math.inf
    rms = audioop.rms(pcm, 2)
    return 20 * math.log10(rms / 32768) if rms else -math.inf


@dataclass(frozen=True, slots=True)
class Pcm:
    """Decoded WAV audio.

    Attributes:
        samples: little-endian signed 16-bit PCM, interleaved when ``channels`` > 1.
        rate_hz: samples per second per channel.
        channels: channel count.
    """

    samples: bytes
    rate_hz: int
    channels: int

    @property
    def duration_ms(self) -> float:
        """Length in milliseconds."""
        return len(self.samples) / (2 * self.channels) * 1000 / self.rate_hz


def read_wav(data: bytes, name: str = "<wav>") -> Pcm:
    """Parse a RIFF/WAVE file holding 16-bit PCM.

    Accepts any sample rate and channel count, WAVE_FORMAT_PCM and WAVE_FORMAT_EXTENSIBLE
    (with a PCM sub-format), extra chunks before or after ``data``, and the RIFF rule that
    an odd-sized chunk is followed by one pad byte.

    Args:
        data: the whole file.
        name: used in error messages.

    Raises:
        WavError: not RIFF/WAVE, no ``fmt `` or ``data`` chunk, or not 16-bit PCM.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"{name}: not a RIFF/WAVE file")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavError(f"{name}: no fmt chunk")
    if samples is None:
        raise WavError(f"{name}: no data chunk")
    tag, channels, rate_hz, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the sub-format GUID
    if tag != _WAVE_FORMAT_PCM or bits != 16:
        raise WavError(f"{name}: only 16-bit PCM WAV is supported (format {tag:#06x}, {bits} bits)")
    if channels < 1 or rate_hz < 1:
        raise WavError(f"{name}: bad channel count or sample rate")
    frame = 2 * channels
    return Pcm(samples[: len(samples) - len(samples) % frame], rate_hz, channels)


def load_wav(path: str | Path) -> Pcm:
    """Read a 16-bit PCM WAV file. Raises WavError (or OSError when unreadable)."""
    return read_wav(Path(path).read_bytes(), str(path))


def to_ulaw_8k(pcm: Pcm, gain: float = 1.0) -> bytes:
    """Convert decoded WAV audio to telephone audio.

    Downmixes to mono, resamples to 8000 Hz, applies ``gain`` (1.0 = unchanged, clipped at
    full scale) and encodes G.711 µ-law.

    Returns:
        µ-law bytes, 8 per ms.
    """
    mono = pcm.samples
    if pcm.channels > 1:
        mono = _downmix(mono, pcm.channels)
    if pcm.rate_hz != SAMPLE_RATE_HZ:
        mono, _ = audioop.ratecv(mono, 2, 1, pcm.rate_hz, SAMPLE_RATE_HZ, None)
    if gain != 1.0:
        mono = audioop.mul(mono, 2, gain)
    return pcm16_to_ulaw(mono)


def _downmix(samples: bytes, channels: int) -> bytes:
    if channels == 2:
        return audioop.tomono(samples, 2, 0.5, 0.5)
    count = len(samples) // (2 * channels)
    values = struct.unpack(f"<{count * channels}h", samples)
    mixed = [sum(values[i : i + channels]) // channels for i in range(0, len(values), channels)]
    return struct.pack(f"<{count}h", *mixed)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono 16-bit PCM signals of equal length as one interleaved stereo signal (L, R, L, R...)."""
    return audioop.add(audioop.tostereo(left, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)


def channel(stereo: bytes, index: int) -> bytes:
    """One channel (0: left, 1: right) of interleaved stereo 16-bit PCM, as mono."""
    return audioop.tomono(stereo, 2, 1 - index, index)


def write_wav(pcm: bytes, rate_hz: int = SAMPLE_RATE_HZ, channels: int = 1) -> bytes:
    """Build a 16-bit PCM WAV file from interleaved little-endian samples."""
    buf = io.BytesIO()
    data_size = len(pcm)
    buf.write(struct.pack("<4sI4s", b"RIFF", 36 + data_size, b"WAVE"))
    buf.write(
        struct.pack(
            "<4sIHHIIHH",
            b"fmt ",
            16,
            _WAVE_FORMAT_PCM,
            channels,
            rate_hz,
            rate_hz * 2 * channels,
            2 * channels,
            16,
        )
    )
    buf.write(struct.pack("<4sI", b"data", data_size))
    buf.write(pcm)
    return buf.getvalue()


def frames(ulaw: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Split µ-law audio into frames, padding the last one with µ-law silence.

    Args:
        ulaw: µ-law bytes.
        frame_bytes: bytes per frame (160 = 20 ms).
    """
    out = [ulaw[i : i + frame_bytes] for i in range(0, len(ulaw), frame_bytes)]
    if out and len(out[-1]) < frame_bytes:
        out[-1] = out[-1] + ULAW_SILENCE * (frame_bytes - len(out[-1]))
    return out


class FramePacer:
    """Wakes once per frame period on the monotonic clock, without drift.

    Each wait targets ``start + n * period``, so a late wake-up shortens the next wait
    instead of shifting every later frame. After a stall longer than ``max_lag_s`` the
    schedule restarts from now rather than bursting to catch up.
    """

    def __init__(self, period_s: float = FRAME_MS / 1000, max_lag_s: float = 0.2) -> None:
        self.period_s = period_s
        self.max_lag_s = max_lag_s
        self._next = time.monotonic()

    async def wait(self) -> None:
        """Sleep until the next frame is due. Safe to cancel."""
        self._next += self.period_s
        delay = self._next - time.monotonic()
        if delay < -self.max_lag_s:
            self._next = time.monotonic()
            return
        if delay > 0:
            await asyncio.sleep(delay)

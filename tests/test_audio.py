"""audio.py: G.711 µ-law against reference vectors, WAV parsing, and the waiting-music conversion."""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path

import pytest
from support import make_config

import audio
from bridge import music
from config import ConfigError

_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def reference_linear2ulaw(sample: int) -> int:
    """ITU-T G.711 µ-law encoder as written in the Sun Microsystems reference ``g711.c``
    (``linear2ulaw``: 14-bit magnitude, bias 0x84, clip 8159), independent of audioop."""
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + (0x84 >> 2)
    segment = next((i for i, end in enumerate(_SEG_END) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


@pytest.mark.parametrize(
    ("sample", "ulaw"),
    [
        pytest.param(0, 0xFF, id="zero"),
        pytest.param(32767, 0x80, id="positive-full-scale"),
        pytest.param(-32768, 0x00, id="negative-full-scale"),
        pytest.param(1000, 0xCE, id="plus-1000"),
        pytest.param(-1000, 0x4E, id="minus-1000"),
    ],
)
def test_ulaw_encoder_known_vectors(sample: int, ulaw: int) -> None:
    """Known G.711 µ-law codes for landmark samples."""
    assert audio.pcm16_to_ulaw(struct.pack("<h", sample)) == bytes([ulaw])
    assert reference_linear2ulaw(sample) == ulaw


def test_ulaw_encoder_matches_reference_for_every_sample() -> None:
    """All 65536 16-bit samples encode exactly as the G.711 reference does."""
    every = struct.pack("<65536h", *range(-32768, 32768))
    expected = bytes(reference_linear2ulaw(s) for s in range(-32768, 32768))
    assert audio.pcm16_to_ulaw(every) == expected


@pytest.mark.parametrize(
    ("ulaw", "sample"),
    [pytest.param(0xFF, 0, id="ff"), pytest.param(0x80, 32124, id="80"), pytest.param(0x00, -32124, id="00"),
     pytest.param(0x7F, 0, id="7f")],
)
def test_ulaw_decoder_known_vectors(ulaw: int, sample: int) -> None:
    """G.711 µ-law decodes to the standard linear values (full scale is ±32124)."""
    assert struct.unpack("<h", audio.ulaw_to_pcm16(bytes([ulaw])))[0] == sample


def _tone(rate_hz: int, channels: int, ms: int, amplitude: int = 12000) -> bytes:
    count = rate_hz * ms // 1000
    samples = []
    for i in range(count):
        value = int(amplitude * math.sin(2 * math.pi * 440 * i / rate_hz))
        samples.extend([value] * channels)
    return struct.pack(f"<{len(samples)}h", *samples)


def _extensible_wav(pcm: bytes, rate_hz: int, channels: int) -> bytes:
    """WAVE_FORMAT_EXTENSIBLE with a PCM sub-format, and an odd-sized chunk (plus its pad byte)
    before ``data``."""
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate_hz, rate_hz * 2 * channels, 2 * channels, 16, 22, 16, 3)
    fmt += struct.pack("<H14s", 0x0001, b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    odd = b"INFOabc"  # 7 bytes: followed by one pad byte (RIFF rule)
    body = b"WAVE" + struct.pack("<4sI", b"fmt ", len(fmt)) + fmt
    body += struct.pack("<4sI", b"LIST", len(odd)) + odd + b"\x00"
    body += struct.pack("<4sI", b"data", len(pcm)) + pcm
    return struct.pack("<4sI", b"RIFF", len(body)) + body


def test_extensible_stereo_44k_with_odd_chunk_converts_to_8k_ulaw() -> None:
    """A 44.1 kHz stereo EXTENSIBLE WAV with an odd-sized chunk downmixes and resamples to 8 kHz µ-law."""
    pcm = audio.read_wav(_extensible_wav(_tone(44100, 2, 500), 44100, 2))
    assert (pcm.rate_hz, pcm.channels, round(pcm.duration_ms)) == (44100, 2, 500)
    ulaw = audio.to_ulaw_8k(pcm)
    assert abs(len(ulaw) - 4000) <= 2  # 500 ms at 8 bytes per ms
    level = audio.rms_dbfs(audio.ulaw_to_pcm16(ulaw))
    assert abs(level - 20 * math.log10(12000 / math.sqrt(2) / 32768)) < 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"ID3\x04 not a wav", "m.wav: not a RIFF/WAVE file", id="mp3"),
        pytest.param(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36, b"WAVE", b"fmt ", 16, 3, 1, 8000, 32000, 4, 32,
                                 b"data", 0),
                     "m.wav: only 16-bit PCM WAV is supported (format 0x0003, 32 bits)", id="float"),
        pytest.param(struct.pack("<4sI4s4sIHHIIHH", b"RIFF", 28, b"WAVE", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16),
                     "m.wav: no data chunk", id="no-data"),
    ],
)
def test_bad_wav_is_named(data: bytes, message: str) -> None:
    """Anything but 16-bit PCM WAV is refused with the file's name and the reason."""
    with pytest.raises(audio.WavError) as info:
        audio.read_wav(data, "m.wav")
    assert str(info.value) == message


def test_wait_music_converted_once_into_frames(tmp_path: Path) -> None:
    """WAIT_MUSIC_FILE becomes 20 ms base64 µ-law frames with WAIT_MUSIC_VOLUME applied."""
    path = tmp_path / "music.wav"
    path.write_bytes(_extensible_wav(_tone(16000, 2, 1000), 16000, 2))
    frames = music.load_wait_music(make_config(wait_music_file=str(path), wait_music_volume=0.12))
    assert len(frames) == 50
    ulaw = b"".join(base64.b64decode(frame) for frame in frames)
    assert len(ulaw) == 50 * audio.FRAME_BYTES
    loud = music.load_wait_music(make_config(wait_music_file=str(path), wait_music_volume=1.0))
    quiet_db = audio.rms_dbfs(audio.ulaw_to_pcm16(ulaw))
    loud_db = audio.rms_dbfs(audio.ulaw_to_pcm16(b"".join(base64.b64decode(f) for f in loud)))
    assert abs((quiet_db - loud_db) - 20 * math.log10(0.12)) < 0.5
    assert music.load_wait_music(make_config(wait_music_file=None)) == ()


def test_empty_wait_music_is_a_config_error(tmp_path: Path) -> None:
    """A WAV with no samples cannot be waiting music."""
    path = tmp_path / "empty.wav"
    path.write_bytes(audio.write_wav(b"", 8000, 1))
    with pytest.raises(ConfigError) as info:
        music.load_wait_music(make_config(wait_music_file=str(path)))
    assert str(info.value) == f"WAIT_MUSIC_FILE {str(path)!r} holds less than 20 ms of audio"

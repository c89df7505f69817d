"""Voice activity detection for the Realtime stand-in, shaped like the service's ``server_vad``."""

from __future__ import annotations

import math

import audio
from audio import BYTES_PER_MS


class Vad:
    """Energy VAD over 10 ms sub-frames of µ-law audio that follows the line's noise floor, shaped
    like Realtime ``server_vad``.

    A sub-frame is voiced when its RMS exceeds both ``-60 + 40 * threshold`` dBFS (0.5: -40 dBFS)
    and the noise floor plus ``MARGIN_DB``. The floor is learnt from the first ``LEARN_MS`` of
    audio (a call starts with the line's noise, not with speech), then follows quiet sub-frames
    down at once and rises at most ``RISE_DB_PER_S`` (slower during speech), so a noisy line is
    not speech and speech does not become the floor. Speech starts after ``START_FRAMES`` voiced
    sub-frames in a row; it is reported with ``audio_start_ms`` = onset - ``prefix_padding_ms``
    (the service includes the padding). It stops after ``silence_duration_ms`` of unvoiced audio;
    ``audio_end_ms`` includes it.
    """

    SUB_FRAME_BYTES = 80
    START_FRAMES = 2
    MARGIN_DB = 12.0
    LEARN_MS = 100
    RISE_DB_PER_S = 3.0
    SILENT_DBFS = -90.0
    """Digital silence counts as this level (its RMS is 0, -inf dB)."""

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        self.level_dbfs = -60 + 40 * threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.pos_ms = 0
        self.in_speech = False
        self.onset_ms: int | None = None
        self.floor_dbfs = math.inf
        """The noise floor learnt so far (dBFS)."""
        self._voiced_run = 0
        self._silence_ms = 0
        self._pending = b""

    def _voiced(self, level: float, step_ms: int) -> bool:
        if self.pos_ms < self.LEARN_MS:
            self.floor_dbfs = min(self.floor_dbfs, level)
            return False
        voiced = level > self.level_dbfs and level > self.floor_dbfs + self.MARGIN_DB
        if level < self.floor_dbfs:
            self.floor_dbfs = level
        else:
            rise = self.RISE_DB_PER_S * step_ms / 1000 / (4 if voiced else 1)
            self.floor_dbfs = min(level, self.floor_dbfs + rise)
        return voiced

    def feed(self, ulaw: bytes) -> list[tuple[str, int]]:
        """Feed caller audio; returns ``("started", audio_start_ms)`` / ``("stopped", audio_end_ms)``."""
        data = self._pending + ulaw
        out: list[tuple[str, int]] = []
        step = self.SUB_FRAME_BYTES
        step_ms = step // BYTES_PER_MS
        usable = len(data) - len(data) % step
        for i in range(0, usable, step):
            level = max(self.SILENT_DBFS, audio.rms_dbfs(audio.ulaw_to_pcm16(data[i : i + step])))
            voiced = self._voiced(level, step_ms)
            frame_start = self.pos_ms
            self.pos_ms += step_ms
            if not self.in_speech:
                if voiced:
                    if self._voiced_run == 0:
                        self.onset_ms = frame_start
                    self._voiced_run += 1
                    if self._voiced_run >= self.START_FRAMES:
                        self.in_speech, self._silence_ms = True, 0
                        out.append(("started", max(0, (self.onset_ms or 0) - self.prefix_padding_ms)))
                else:
                    self._voiced_run = 0
            elif voiced:
                self._silence_ms = 0
            else:
                self._silence_ms += step_ms
                if self._silence_ms >= self.silence_duration_ms:
                    self.in_speech, self._voiced_run = False, 0
                    out.append(("stopped", self.pos_ms))
        self._pending = data[usable:]
        return out

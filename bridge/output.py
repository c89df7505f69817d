"""The phone output: the one owner of what the caller hears.

Modelled on LiveKit Agents' ``AudioOutput`` (``capture_frame``, ``clear_buffer``, ``on_playback_finished``,
``wait_for_playout``): everything sent to the caller goes through ``PhoneOutput`` (the assistant's audio
with a mark after each message, a clip such as the apology, the waiting music), and so does every clear.
It keeps the playback accounting (``bridge.playback.Playback``), so a clear returns what each cut item's
listener heard, and ``wait_for_playout`` tells when everything sent has played.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from audio import BYTES_PER_MS
from bridge.events import CallCounts
from bridge.music import WaitingMusic
from bridge.playback import Playback, b64_decoded_len
from model.session import Truncation
from phones.leg import PhoneLeg
from redact import CallLog, describe

MAX_PAYLOAD_CHARS = 16_000
"""Largest base64 audio payload sent to the phone in one message (12,000 bytes, 1.5 s): Plivo asks for
at most 16 KB and both networks refuse messages over 64 KB, so a larger delta is split."""
PLAYOUT_MARGIN_S = 2.0
"""Safety margin past the unplayed audio's own length for its last mark to come back."""
APOLOGY_FILE = Path(__file__).resolve().parent.parent / "assets" / "apology.ulaw"
"""What a caller hears when the assistant cannot be reached: raw 8 kHz µ-law, made by
``assets/make_assets.sh``."""
APOLOGY_CHUNK_BYTES = 1600
"""The apology is sent in 200 ms media messages, each followed by a mark."""

logger = logging.getLogger(__name__)


class PhoneOutput:
    """What the caller hears, over one phone leg.

    Args:
        leg: the phone leg (``phones.leg.PhoneLeg``).
        counts: the call's counters; this output writes ``frames_out`` and ``marks_acked``.
        music: base64 µ-law 20 ms frames of waiting music (empty: none) and the seconds a tool may run
            before it starts.
        on_music: told True when music starts playing, False when it stops.
        log: the call's logger.
        max_ahead_s: the most assistant audio queued at the phone ahead of real time; the excess is
            dropped with one warning (a service that sends minutes of audio in seconds).
    """

    def __init__(
        self,
        leg: PhoneLeg,
        counts: CallCounts,
        music: tuple[tuple[str, ...], float],
        on_music: Callable[[bool], None],
        log: CallLog,
        max_ahead_s: float = 120.0,
    ) -> None:
        self._leg = leg
        self._counts = counts
        self._log = log
        self._max_ahead_s = max_ahead_s
        self.playback = Playback(int(max_ahead_s * 1000))
        self.dropped_ms = 0
        """Assistant audio dropped for running more than ``max_ahead_s`` ahead of the phone."""
        self._moved = asyncio.Event()
        """Set on every mark echo and clear: wakes ``wait_for_playout``."""
        frames, threshold_s = music
        self.music = WaitingMusic(frames, threshold_s, leg.send_audio, self.playback.is_playing, self._clear_phone,
                                  on_music)

    async def capture(self, item_id: str, payload: str) -> None:
        """Queue assistant audio of ``item_id`` (base64 µ-law, any length) with a mark after each message;
        the first assistant audio ends the waiting music. The hot path. Raises ConnectionResetError once
        the caller is gone."""
        if self.music.active:  # checked here: no coroutine per delta on the hot path
            await self.music.stop()
        if len(payload) > MAX_PAYLOAD_CHARS:  # rare: split at a multiple of 4 base64 characters
            for start in range(0, len(payload), MAX_PAYLOAD_CHARS):
                await self._send(item_id, payload[start : start + MAX_PAYLOAD_CHARS])
            return
        await self._send(item_id, payload)

    async def play_clip(self, name: str, payloads: Iterable[str]) -> None:
        """Queue a recorded clip (``name`` is its item id), after whatever is still queued, music stopped."""
        await self.music.stop()
        for payload in payloads:
            await self._send(name, payload)

    async def play_apology(self) -> None:
        """Play the bundled apology after whatever is still queued, and return once the phone has played it
        (its last mark) or its length plus a margin has passed; at once when the caller is gone."""
        try:
            await self.play_clip("apology", apology_payloads())
        except (ConnectionError, RuntimeError):
            return
        await self.wait_for_playout("apology")

    def on_mark(self, name: str, now: float) -> None:
        """A mark echo from the phone (``PhoneMarkPlayed``) at monotonic ``now``."""
        if self.playback.on_mark(name, now):
            self._counts.marks_acked += 1
            self._moved.set()

    async def clear(self, now: float) -> list[Truncation]:
        """Drop everything queued at the phone (a barge-in): music stopped, the queue cleared.

        Returns:
            One truncation per assistant item cut (``Playback.barge_in``): the item being heard at what
            was heard, items queued behind it at 0 ms.
        """
        await self.music.cancel()  # the one clear below drops any music queued too
        await self._leg.clear()
        cuts = self.playback.barge_in(now)
        self._moved.set()  # cleared: nothing is left to play
        return cuts

    def is_playing(self, now: float) -> bool:
        """Assistant audio is still queued at the phone at monotonic ``now``."""
        return self.playback.is_playing(now)

    def close_item(self, item_id: str) -> None:
        """No more audio will come for ``item_id``."""
        self.playback.close_item(item_id)

    def forget_items(self) -> None:
        """The model session was replaced: its items cannot be truncated in the new one."""
        self.playback.forget_items()

    async def wait_for_playout(self, what: str) -> None:
        """Return once the phone has echoed every mark (all sent audio played, or cleared), or when what
        is still unplayed plus ``PLAYOUT_MARGIN_S`` has passed (logged, naming ``what``). Safe to cancel."""
        playback = self.playback
        deadline_s = playback.unplayed_ms(time.monotonic()) / 1000 + PLAYOUT_MARGIN_S
        try:
            async with asyncio.timeout(deadline_s):
                while playback.marks_pending:
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            self._log.warning("%s marks not echoed within %.1f s; hanging up", what, deadline_s)

    async def close(self) -> None:
        """Stop the music task (cleanup; nothing more is sent)."""
        await self.music.cancel()

    async def _send(self, item_id: str, payload: str) -> None:
        nbytes = b64_decoded_len(payload)
        mark = self.playback.on_audio_sent(item_id, nbytes, time.monotonic())
        if mark is None:  # a service running far ahead of real time: the phone's queue stays bounded
            if not self.dropped_ms:
                self._log.warning("assistant audio more than %.0f s ahead of the phone dropped (MAX_QUEUED_AUDIO_S)",
                                  self._max_ahead_s)
            self.dropped_ms += nbytes // BYTES_PER_MS
            return
        await self._leg.send_audio(payload)
        await self._leg.send_mark(mark)
        self._counts.frames_out += 1

    async def _clear_phone(self) -> None:
        await self._leg.clear()


@functools.cache
def apology_payloads() -> tuple[str, ...]:
    """The apology clip as base64 µ-law media payloads of ``APOLOGY_CHUNK_BYTES`` (read once); empty, with
    one error logged, when the file cannot be read."""
    try:
        clip = APOLOGY_FILE.read_bytes()
    except OSError as exc:
        logger.error("apology clip unreadable (%s); callers hear silence instead", describe(exc))
        return ()
    step = APOLOGY_CHUNK_BYTES
    return tuple(base64.b64encode(clip[i : i + step]).decode() for i in range(0, len(clip), step))

"""Waiting music: a WAV converted once at startup, played to the caller while a slow tool runs.

``WaitingMusic`` is part of the phone output (``bridge.output.PhoneOutput``), which gives it the only
ways it has to the phone: send a frame, tell whether assistant audio is still playing, clear."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable

import audio
from config import Config, ConfigError

logger = logging.getLogger(__name__)

MUSIC_LEAD_FRAMES = 3
"""Music frames sent at once when the music starts: 60 ms queued at the phone absorbs network
jitter, and the ``clear`` at the end drops it."""


def load_wait_music(config: Config) -> tuple[str, ...]:
    """Convert ``WAIT_MUSIC_FILE`` once: downmix, resample to 8 kHz, apply
    ``WAIT_MUSIC_VOLUME``, encode µ-law, split into 20 ms frames (160 bytes), base64.

    Returns:
        The frames as base64 µ-law payloads; empty when music is off.

    Raises:
        ConfigError: naming the variable and file when it is unreadable, not 16-bit PCM WAV,
            or shorter than one frame.
    """
    if config.wait_music_file is None:
        return ()
    path = config.wait_music_file
    try:
        ulaw = audio.to_ulaw_8k(audio.load_wav(path), config.wait_music_volume)
    except OSError as exc:
        raise ConfigError(f"WAIT_MUSIC_FILE {path!r} cannot be read: {exc.strerror or exc}") from exc
    except audio.WavError as exc:
        raise ConfigError(f"WAIT_MUSIC_FILE is not usable: {exc}") from exc
    if len(ulaw) < audio.FRAME_BYTES:
        raise ConfigError(f"WAIT_MUSIC_FILE {path!r} holds less than 20 ms of audio")
    return tuple(base64.b64encode(frame).decode() for frame in audio.frames(ulaw))


class WaitingMusic:
    """Music while a tool runs: after the threshold, once the assistant's own audio has played,
    ``MUSIC_LEAD_FRAMES`` frames at once (a jitter cushion), then one 20 ms frame per period on
    the monotonic clock. Frames carry no marks: music is not an assistant item, so it never
    enters truncation. Overlapping tool calls share one stream.
    """

    def __init__(
        self,
        frames: tuple[str, ...],
        threshold_s: float,
        send: Callable[[str], Awaitable[None]],
        assistant_playing: Callable[[float], bool],
        clear: Callable[[], Awaitable[None]],
        on_change: Callable[[bool], None],
    ) -> None:
        """
        Args:
            frames: base64 µ-law 20 ms frames (``load_wait_music``); empty: no music.
            threshold_s: how long a tool may run before the music starts.
            send: queues one frame at the phone (no mark). Raises ConnectionResetError once the
                caller is gone.
            assistant_playing: whether assistant audio is still queued at the phone at monotonic ``now``.
            clear: drops everything queued at the phone.
            on_change: told True when the music starts playing and False when it stops.
        """
        self._frames = frames
        self._threshold_s = threshold_s
        self._send = send
        self._assistant_playing = assistant_playing
        self._clear = clear
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._position = 0
        self.playing = False
        """Some music has been sent since the last start."""

    @property
    def active(self) -> bool:
        """Started and not stopped (waiting for the threshold, or playing)."""
        return self._task is not None

    def start(self) -> None:
        """Begin the wait for the threshold (no-op when music is off or already started)."""
        if self._frames and self._task is None:
            self._task = asyncio.create_task(self._play(), name="wait music")

    async def stop(self) -> None:
        """Stop, and drop what is still queued at the phone when any music was sent (a no-op
        when not started). Music plays only while no assistant audio is queued, so the clear
        discards music alone."""
        if self._task is not None and await self.cancel():
            await self._clear()

    async def cancel(self) -> bool:
        """Stop sending, with no clear (cleanup; tools done within the threshold). The task is
        cancelled and awaited. Returns True when some music had been sent."""
        task, self._task = self._task, None
        was_playing, self.playing = self.playing, False
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                logger.error("wait music failed", exc_info=task.exception())
        if was_playing:
            self._on_change(False)
        return was_playing

    async def _play(self) -> None:
        await asyncio.sleep(self._threshold_s)
        frames = self._frames
        pacer = audio.FramePacer()
        while True:
            if not self._assistant_playing(time.monotonic()):
                count = 1
                if not self.playing:
                    self.playing = True
                    count = MUSIC_LEAD_FRAMES
                    self._on_change(True)
                for _ in range(count):
                    payload = frames[self._position]
                    self._position = (self._position + 1) % len(frames)
                    try:
                        await self._send(payload)
                    except ConnectionResetError:
                        return  # the caller hung up; the phone pump ends the call
            await pacer.wait()

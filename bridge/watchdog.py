"""The call's watchdog: once a second, what no event would tell (a phone gone quiet or no longer reading, a
model that never begins the turn it was asked for). Counters and buffers are compared here, so the per-frame
path pays nothing for it."""

from __future__ import annotations

import asyncio
import time
from typing import NoReturn

from aiohttp import WSCloseCode

from bridge.events import CallCounts, Ending, EndReason, HangUp
from bridge.upstream import Upstream
from phones.leg import PhoneLeg
from redact import CallLog

PHONE_SILENCE_S = 30.0
"""A phone sends 50 frames a second; one that sends none for this long is gone (a half-open socket)."""
PHONE_WRITE_TIMEOUT_S = 5
"""Seconds the phone may leave its send buffer full (it has stopped reading) before the call is dropped:
sends wait on it meanwhile, so the relay's memory stays bounded by that buffer."""


async def watch(phone: PhoneLeg, counts: CallCounts, upstream: Upstream, log: CallLog) -> NoReturn:
    """Raise HangUp once a phone has sent no frame for ``PHONE_SILENCE_S``, has taken nothing for
    ``PHONE_WRITE_TIMEOUT_S``, or the model is overdue (``ModelSession.overdue``: an upstream failure,
    rather than leave the caller in silence). Runs until cancelled."""
    frames, heard_at, stalled_s, network = -1, time.monotonic(), 0, phone.network
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        stalled_s = stalled_s + 1 if phone.write_stalled else 0
        if stalled_s >= PHONE_WRITE_TIMEOUT_S:
            log.warning("the phone has not read for %ds (%d bytes unsent); dropping the call", stalled_s,
                        phone.unsent_bytes)
            raise HangUp(Ending(EndReason.PHONE_NOT_READING, f"{network} not reading"))
        if counts.frames_in != frames:
            frames, heard_at = counts.frames_in, now
        elif now - heard_at > PHONE_SILENCE_S:
            log.warning("no frame from the phone for %.0fs; hanging up", PHONE_SILENCE_S)
            raise HangUp(Ending(EndReason.PHONE_SILENT, f"{network} silent"))
        overdue = upstream.overdue(now)
        if overdue is not None:
            log.error("%s", overdue)
            raise HangUp(Ending(EndReason.MODEL_SILENT, f"{upstream.api} did not answer", True,
                                WSCloseCode.INTERNAL_ERROR))

"""``WORKERS=N``: N relay processes on one port, so one host uses all its cores.

Each worker is ``python relay.py`` with ``RELAY_WORKER`` set, binding the port with ``SO_REUSEPORT``
(the kernel spreads new connections across them). This supervisor passes each SIGTERM/SIGINT on to
every worker (each drains on its own, ``relay.drain``), restarts a worker that dies, and ends once
all workers have ended. Workers run in their own sessions, so a terminal's Ctrl-C reaches them once,
through here, and not twice (a second signal would cut the drain short).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger("relay")

WORKER_ENV = "RELAY_WORKER"
"""Set (to the worker's number, from 1) in each worker's environment."""
SUPERVISOR_ENV = "RELAY_SUPERVISOR"
"""The supervisor's pid, in each worker's environment."""
STARTUP_GRACE_S = 5.0
"""A worker that exits with an error this soon after starting failed to start (a bad port): stop all."""
RESTART_DELAY_S = 1.0


def is_worker() -> bool:
    return WORKER_ENV in os.environ


async def orphaned() -> None:
    """Return once this worker's supervisor is gone (killed without passing a signal on): the
    worker then drains like on SIGTERM instead of serving on alone. Checked once a second."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())  # it may be gone already
    while True:
        if os.getppid() != supervisor:
            logger.warning("the supervisor is gone; draining")
            return
        await asyncio.sleep(1.0)


def supervise(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers (``argv``, e.g. ``[python, relay.py]``) until they have all ended.

    Returns:
        0 when every worker ended cleanly after a signal; 1 when one failed at startup (the
        others are stopped) or ended with an error.
    """
    signals: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    workers: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}

    def start(number: int) -> None:
        env = {**os.environ, WORKER_ENV: str(number), SUPERVISOR_ENV: str(os.getpid())}
        workers[number] = subprocess.Popen(list(argv), env=env, start_new_session=True)
        started[number] = time.monotonic()

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for number in range(1, count + 1):
            start(number)
        logger.info("started %d workers (pids %s)", count, ", ".join(str(p.pid) for p in workers.values()))
        failed = False
        while any(process.poll() is None for process in workers.values()):
            time.sleep(0.2)
            for number, process in list(workers.items()):
                code = process.poll()
                if code is None or signals or failed:
                    continue
                if code != 0 and time.monotonic() - started[number] < STARTUP_GRACE_S:
                    logger.error("worker %d could not start (exit %d); stopping the others", number, code)
                    failed = True
                    forward(signal.SIGTERM, None)
                    forward(signal.SIGTERM, None)  # no drain: nothing was served yet
                    continue
                logger.error("worker %d (pid %d) ended with %s; restarting it", number, process.pid, code)
                time.sleep(RESTART_DELAY_S)
                start(number)
        codes = [process.returncode for process in workers.values()]
        return 1 if failed or any(code != 0 for code in codes) else 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

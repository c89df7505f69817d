"""The model's function calls, run by ``tools.py``: each ``call_id`` once, a turn's calls concurrently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import tools
from bridge.events import CallEventKind
from model.session import FunctionCall
from redact import CallLog
from tools import ToolContext


class ToolRunner:
    """Runs the model's function calls: each ``call_id`` once, a response's calls concurrently,
    every task owned (``close`` cancels and awaits them)."""

    def __init__(
        self,
        context: ToolContext,
        enabled: tuple[str, ...],
        log: CallLog,
        publish: Callable[..., None],
    ) -> None:
        self.context = context
        self.enabled = enabled
        self.answered_call_ids: set[str] = set()
        """Function ``call_id``s already run (each is answered exactly once)."""
        self.batches_running = 0
        """Responses whose function calls are being run."""
        self._log = log
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = False

    def new_calls(self, calls: Iterable[FunctionCall]) -> list[FunctionCall]:
        """The calls not run before; from now on they count as answered."""
        fresh = [call for call in calls if call.call_id is None or call.call_id not in self.answered_call_ids]
        self.answered_call_ids.update(call.call_id for call in fresh if call.call_id is not None)
        return fresh

    def spawn(self, batch: Coroutine[Any, Any, None]) -> None:
        """Run one response's answering coroutine as an owned task."""
        task = asyncio.create_task(batch, name="tool calls")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def run(self, calls: list[FunctionCall]) -> list[tuple[str, dict[str, Any]]]:
        """Run ``calls`` concurrently; never raises (each failure is an error output).

        Returns:
            ``(call_id, output)`` for each call that can be answered, in call order (a call
            without a ``call_id`` is logged once and skipped).
        """
        answerable = [call for call in calls if call.call_id is not None]
        if len(answerable) < len(calls) and not self._warned:
            self._warned = True
            self._log.warning("function_call without a call_id cannot be answered")
        self.batches_running += 1
        try:
            return list(await asyncio.gather(*(self._run_one(call) for call in answerable)))
        finally:
            self.batches_running -= 1

    async def close(self) -> None:
        """Cancel every tool task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_one(self, call: FunctionCall) -> tuple[str, dict[str, Any]]:
        assert call.call_id is not None
        self._publish(CallEventKind.TOOL_STARTED, name=call.name, call_id=call.call_id, arguments=call.arguments)
        started = time.monotonic()
        output = await tools.run_tool(call.name, call.arguments, self.context, self.enabled)
        duration_ms = (time.monotonic() - started) * 1000
        ok = bool(output.get("ok"))
        error = None if ok else output.get("error")
        self._log.info("tool %s ok=%s in %.0f ms%s", call.name, ok, duration_ms, f" error={error}" if error else "")
        self._publish(
            CallEventKind.TOOL_FINISHED, name=call.name, call_id=call.call_id, ok=ok, duration_ms=duration_ms,
            error=error,
        )
        return call.call_id, output

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("tool answers failed", exc_info=exc)

"""Waiting for another worker's outcome and asking a probe about an uncertain key; the source of ``_wait.py``.

``tools/async_to_sync.py`` generates the sync ``Waiter`` from this file.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ._conn import wrap_exceptions
from ._events import UncertainKey
from ._io_async import (
    AsyncListener,
    AsyncProbe,
    call_probe,
    protocol_row,
    sleep,
    wait_event,
)
from ._options import (
    _Call,
    logger,
)
from ._results import Result
from ._run_async import AsyncRunner
from .errors import ReconcileRefused, SentinelError

__all__ = ["AsyncWaiter"]


class AsyncWaiter(AsyncRunner):
    """once()'s ``wait_ms`` (LISTEN/NOTIFY, else polling) and ``on_uncertain`` (see :meth:`AsyncSentinel.once`)."""

    _listener_obj: Optional[AsyncListener]

    async def _wait(self, call: _Call, result: Result, wait_ms: int) -> Result:
        """Wait for another worker's outcome: NOTIFY wakes us, polling is the fallback.

        The database notifies only watched keys, so once LISTEN is in place the
        waiter registers with ``watch_v2`` (on its listener's private channel,
        whose payloads are watcher ids) and only then asks again (one acquire
        per round), so a notification can never fall in between; it removes
        its watcher with ``unwatch_v1`` when it stops waiting. Until
        the listener is ready (or when LISTEN or the watch cannot work) it
        polls every ``poll_interval_ms``, waking early as soon as LISTEN is in
        place; it never waits for the listener beyond its own deadline.
        """
        deadline = time.monotonic() + wait_ms / 1000.0
        poll_s = self.options.poll_s
        listener = self._listener()
        event = listener.register(call.key) if listener is not None else None
        watch_id: Optional[int] = None
        watch_tried = False
        try:
            while True:
                if listener is not None and listener.ready.is_set() and not watch_tried:
                    watch_tried = True
                    watch_id = await self._watch(listener, call.key, deadline)
                listening = watch_id is not None and listener is not None and listener.ready.is_set()
                if event is not None:
                    event.clear()
                result = await self._attempt(call)
                if not result.execution_alive:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                # With LISTEN a notification wakes us; the timeout is only a safety net.
                pause = min(remaining, max(poll_s, 1.0) if listening else poll_s)
                if listening and event is not None:
                    await wait_event(event, pause)
                elif listener is not None and not watch_tried:
                    await wait_event(listener.ready, pause)  # poll, but watch as soon as LISTEN is in place
                else:
                    await sleep(pause)
        finally:
            if listener is not None and event is not None:
                listener.unregister(call.key, event)
            if watch_id is not None:
                if listener is not None:
                    listener.ids.unbind(watch_id)
                await self._unwatch(watch_id)

    async def _watch(self, listener: AsyncListener, key: str, deadline: float) -> Optional[int]:
        """Ask the database to NOTIFY ``key``'s outcome to ``listener`` until ``deadline``; None if it cannot."""
        ms = max(1, min(2_592_000_000, int((deadline - time.monotonic()) * 1000) + 1))
        try:
            async with self._source.connection() as conn:
                with wrap_exceptions():
                    row = await protocol_row(conn, "select sentinel.watch_v2(%s, %s, %s, %s)",
                                             (self.namespace, key, ms, listener.channel),
                                             explicit=self._explicit_rc, timeout=self.options.reply_s)
            if not row:
                return None
            listener.ids.bind(int(row[0]), key)
            return int(row[0])
        except SentinelError as exc:
            logger.debug("watch_v2 failed (%s); polling instead", exc)
            return None

    async def _unwatch(self, watch_id: int) -> None:
        try:
            async with self._source.connection() as conn:
                with wrap_exceptions():
                    await protocol_row(conn, "select sentinel.unwatch_v1(%s)", (watch_id,), explicit=self._explicit_rc,
                                       timeout=self.options.reply_s)
        except SentinelError as exc:  # the watcher expires by itself
            logger.debug("unwatch failed: %s", exc)

    def _listener(self) -> Optional[AsyncListener]:
        if not self.options.listen:
            return None
        with self._lock:
            if self._listener_obj is None:
                self._listener_obj = AsyncListener(self._source, self.namespace)
            return self._listener_obj

    async def _probe(self, probe: AsyncProbe, result: Result, call: _Call) -> Result:
        """Ask ``probe`` about an uncertain key and apply its answer through reconcile_v1."""
        found = await self.inspect(call.key)
        record: Dict[str, Any] = dict(found) if found is not None else {}
        info = UncertainKey(self.namespace, call.key, result.fence or 0, result.attempt or 0, record)
        try:
            answer = await call_probe(probe, info)
        except Exception as exc:
            answer = self._probe_failed(probe, call, exc)
        decision = self._probe_decision(probe, call, result, answer)
        if decision is None:
            return result
        action, details = decision
        try:
            await self.reconcile(call.key, action=action, **details)
        except ReconcileRefused:
            pass  # somebody resolved the key meanwhile: what it is now is the answer
        return await self._attempt(call)

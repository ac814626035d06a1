# Generated from _run_async.py by tools/async_to_sync.py (make generate): do not edit.
# Change the asyncio source and regenerate; make check fails while this file is stale.
"""The run and the recording of a claimed key for sync code (:class:`Runner`, under :class:`Sentinel`).

Generated from ``_run_async.py`` by ``tools/async_to_sync.py``; read and change that file.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import (
    Any,
    List,
    Optional,
    Tuple,
    TypeVar,
)

import psycopg

from ._conn import wrap_exceptions
from ._io_sync import (
    ExecutionContext,
    Heartbeater,
    Lease,
    protocol_row,
    sleep,
)
from ._ops import Operations
from ._options import (
    _ABANDON_SQL,
    _COMPLETE_SQL,
    _FAIL_SQL,
    MAX_REASON_CHARS,
    RETRY_RECORDING,
    RecordRetry,
    _AcquireRetry,
    _Call,
    _log_extra,
    _naming,
    _not_started_document,
    acquire_statement,
    logger,
)
from ._results import Result, _current
from .errors import DatabaseUnavailable, DocumentTooLarge, SerializationConflict

__all__ = ["Runner"]

T = TypeVar("T")


class Runner(Operations):
    """The acquire, the run and the recording of one once() call (see :meth:`Sentinel.once`)."""

    _heartbeat: Heartbeater
    def _shielded(self, value: T) -> T:
        """What the recording returned (a thread is not cancelled under it)."""
        return value

    def _attempt(self, call: _Call) -> Result:
        """One acquire (retried as the same call after a lost reply), and the run when it is ours."""
        ns, key = self.namespace, call.key
        claimed: Optional[int] = None  # our fence, from the claim until the function starts
        begun: List[bool] = []
        retry = _AcquireRetry(call)
        while True:
            try:
                with self._source.connection() as conn:
                    self._check_schema(conn)
                    retry.asking()
                    with _naming(ns, key), wrap_exceptions():
                        query, params = acquire_statement(conn, ns, key, self.owner, call.ttl, call.hard,
                                                          call.fingerprint, retry.token)
                        row = protocol_row(conn, query, params, explicit=self._explicit_rc,
                                                 timeout=self.options.reply_s)
                    retry.answered()
                    assert row is not None
                    outcome, fence, state, attempt, response, error, claimed_at, _lease_end, hard_at, db_now = row
                    if outcome != "acquired":
                        return self._observed(call, outcome, fence, state, attempt, response, error, hard_at)
                    claimed = fence
                    self._emit("acquired", ns, key, fence, attempt, retried=retry.retries or None)
                    deadline = time.monotonic() + max((hard_at - db_now).total_seconds(), 0.0)
                    if self._source.hold_during_fn:
                        return self._execute(conn, call, fence, attempt, claimed_at, hard_at, deadline, begun)
                # A pooled connection goes back while the function runs; recording takes a fresh one.
                return self._execute(None, call, fence, attempt, claimed_at, hard_at, deadline, begun)
            except DatabaseUnavailable as exc:
                pause = retry.after(exc, ns, key)
                if pause is None:
                    raise
                sleep(pause)
            except SerializationConflict:
                # The acquire was aborted with nothing written (repeatable read or
                # serializable session): asking again is safe.
                pause = retry.after_conflict()
                if pause is None:
                    raise
                sleep(pause)
            except BaseException as exc:
                if claimed is not None and not begun and not isinstance(exc, GeneratorExit):
                    self._shielded(self._release_unstarted(call, claimed, exc))
                raise

    def _release_unstarted(self, call: _Call, fence: int, exc: BaseException) -> bool:
        """Give back a claim whose function never started: a retryable failure saying so, never uncertain."""
        ns, key = self.namespace, call.key
        try:
            rec = self._record(None, _FAIL_SQL, (ns, key, fence, call.token, _not_started_document(exc), False,
                                                       call.retain_ms), time.monotonic() + 2.0)
        except Exception as err:  # never hide the original exception
            rec = None
            logger.error("could not release %s/%s: %s", ns, key, err, extra=_log_extra(ns, key, fence))
        return self._not_started_reported(ns, key, fence, exc, rec)

    def _execute(
        self, conn: Optional[psycopg.Connection[Any]], call: _Call, fence: int, attempt: int,
        claimed_at: datetime, hard_at: datetime, deadline: float, begun: List[bool],
    ) -> Result:
        """Run the function of a claimed key under its lease, then record what happened."""
        ns, key = self.namespace, call.key
        lease = Lease(ns, key, fence, call.ttl, deadline, call.token)
        lease.hint = self._ttl_hint(call)
        ctx = ExecutionContext(ns, key, fence, attempt, claimed_at, hard_at, lease)
        fn_args = (ctx, *call.args) if call.pass_context else call.args
        self._heartbeat.register(lease)
        token = _current.set(ctx)
        started = time.perf_counter()
        try:
            begun.append(True)
            value = call.fn(*fn_args, **call.kwargs)
        except Exception as exc:
            self._heartbeat.unregister(lease)
            took = time.perf_counter() - started
            self._shielded(self._record_failure(conn, call, fence, attempt, exc, took, deadline))
            raise
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit, an async function cancelled: it may have had effects.
            self._heartbeat.unregister(lease)
            reason = f"interrupted by {type(exc).__name__}"
            lease.on_lost = None  # not a loss to report: the interruption is
            lease.lose(reason)
            if isinstance(exc, GeneratorExit):  # the coroutine is being closed: nothing may be awaited
                raise
            self._shielded(self._abandon(conn, call, fence, reason, deadline=None))
            raise
        finally:
            _current.reset(token)
        self._heartbeat.unregister(lease)
        took = time.perf_counter() - started
        return self._shielded(self._complete(conn, call, value, fence, attempt, hard_at, deadline, took))

    def _record_failure(
        self, conn: Optional[psycopg.Connection[Any]], call: _Call, fence: int, attempt: int,
        exc: Exception, took: float, deadline: float, **details: Any,
    ) -> Optional[Tuple[Any, ...]]:
        """Record that the function raised ``exc`` (fail_v3), with a shorter document if the DBA's cap asks."""
        try:
            rec = self._record(conn, _FAIL_SQL, self._failure_params(call, fence, exc), deadline)
        except DocumentTooLarge:  # the DBA's cap is below our document: a shorter one still records it
            rec = self._record(conn, _FAIL_SQL, self._failure_params(call, fence, exc, 200), deadline)
        self._failure_reported(call, fence, attempt, took, exc, rec, **details)
        return rec

    def _complete(
        self, conn: Optional[psycopg.Connection[Any]], call: _Call, value: Any, fence: int, attempt: int,
        hard_at: datetime, deadline: float, took: float, **details: Any,
    ) -> Result:
        """Record the function's return value (complete_v3); uncertain if it cannot be stored."""
        try:
            text, recorded_value = self._to_json(value)
        except Exception as exc:
            recorded = self._abandon(conn, call, fence, f"result not serialisable: {type(exc).__name__}: {exc}",
                                           deadline=deadline)
            raise self._unserialisable(call, value, exc, recorded, refused=False) from exc
        try:
            rec = self._record(conn, _COMPLETE_SQL,
                                     (self.namespace, call.key, fence, call.token, text, call.retain_ms), deadline)
        except (psycopg.DataError, DocumentTooLarge) as exc:
            # The database refused the JSON (a \u0000 escape in jsonb, a document over its cap).
            recorded = self._abandon(conn, call, fence, f"result refused by the database: {exc}",
                                           deadline=deadline)
            raise self._unserialisable(call, value, exc, recorded, refused=True) from exc
        return self._completion(call, rec, recorded_value, fence, attempt, hard_at, took, **details)


    def _record(
        self, conn: Optional[psycopg.Connection[Any]], sql: str, params: Tuple[Any, ...], deadline: float,
    ) -> Optional[Tuple[Any, ...]]:
        """Run a recording call, retrying on connection loss, a lock timeout or a conflict until ``deadline``.

        Returns the function's row, or None if the database stayed out of reach
        until the deadline. Other errors propagate.
        """
        retry = RecordRetry(deadline)
        current = conn
        while True:
            try:
                if current is not None and not current.closed and not current.broken:
                    with wrap_exceptions():
                        return protocol_row(current, sql, params, explicit=self._explicit_rc,
                                                  timeout=self.options.reply_s)
                with self._source.connection() as fresh:
                    with wrap_exceptions():
                        return protocol_row(fresh, sql, params, explicit=self._explicit_rc,
                                                  timeout=self.options.reply_s)
            except RETRY_RECORDING as exc:
                if isinstance(exc, DatabaseUnavailable):
                    current = None  # a lock timeout or a conflict leaves the connection usable
                pause = retry.after(exc, sql, params, _log_extra(*params[:3]))
                if pause is None:
                    return None
                sleep(pause)

    def _abandon(
        self, conn: Optional[psycopg.Connection[Any]], call: _Call, fence: int, reason: str, *,
        deadline: Optional[float],
    ) -> bool:
        """Mark our execution uncertain (abandon_v2); True if the database recorded it."""
        ns, key, reason = self.namespace, call.key, reason[:MAX_REASON_CHARS]
        try:
            rec = self._record(conn, _ABANDON_SQL, (ns, key, fence, call.token, reason),
                                     deadline if deadline is not None else time.monotonic())
        except Exception as exc:  # never hide the original exception
            logger.error("could not mark %s/%s uncertain: %s", ns, key, exc, extra=_log_extra(ns, key, fence))
            return False
        return self._abandon_reported(ns, key, fence, reason, rec)

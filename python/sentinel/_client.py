# Generated from _client_async.py by tools/async_to_sync.py (make generate): do not edit.
# Change the asyncio source and regenerate; make check fails while this file is stale.
"""The synchronous client, :class:`Sentinel`: once(), idempotent(), transaction(), operator calls.

Generated from ``_client_async.py``, the one hand-written source of the
once() flow, by ``tools/async_to_sync.py``; read and change that file.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from datetime import datetime
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import psycopg
from psycopg import pq

from ._base import (
    _ABANDON_SQL,
    _ACQUIRE_SQL,
    _COMPLETE_SQL,
    _FAIL_SQL,
    RETRY_RECORDING,
    ClientCore,
    Options,
    RecordRetry,
    Result,
    TransactionState,
    _AcquireRetry,
    _Call,
    _check_key,
    _check_wait,
    _current,
    _log_extra,
    _naming,
    _no_function,
    _not_started_document,
    logger,
    unwrap,
)
from ._conn import protocol_errors, wrap_exceptions
from ._events import Observer, UncertainKey
from ._fork import track as track_fork
from ._frameworks import defaults as framework_defaults
from ._frameworks import transaction_guard
from ._io_sync import (
    ExecutionContext,
    GetConn,
    Heartbeater,
    Lease,
    Listener,
    Probe,
    Source,
    call_probe,
    check_compatible,
    fetchone,
    make_source,
    protocol_row,
    sleep,
    wait_event,
)
from ._watchdog import bounded
from .errors import DatabaseUnavailable, DocumentTooLarge, ReconcileRefused, SentinelError, SerializationConflict

__all__ = ["Sentinel", "Transaction"]

T = TypeVar("T")


class Transaction(TransactionState):
    """The state of an :meth:`Sentinel.transaction` block."""

    def complete(self, response: Any) -> Any:
        """Record ``response`` in this transaction; it commits with your writes. Returns it as recorded."""
        text, value = self._serialise(response)
        with wrap_exceptions():
            row = fetchone(self._conn, _COMPLETE_SQL, self._params(text))
        return self._recorded(row, value)


class Sentinel(ClientCore):
    """Runs functions at most once per key, coordinated through PostgreSQL.

    Give it one source of connections:

    - ``conninfo``: a libpq connection string; Sentinel keeps a private pool
      of up to ``pool_size`` connections, which use no server-side prepared
      statements (so they work behind a transaction-pooling PgBouncer) unless
      ``prepared_statements=True``; one the server closed while idle is
      dropped instead of failing a call.
    - ``pool``: your ``psycopg_pool.ConnectionPool``. A call gives its
      connection back while the function runs; the heartbeat and the LISTEN
      waiter use connections of their own built from the pool's settings.
    - ``get_conn``: a callable returning a *new*
      ``psycopg.Connection`` for each call; it is closed when the call
      ends.
    - none of them, in a Django project configured for Sentinel: the
      settings' connection.

    **Under the sync Sentinel.** The private pool: a call that finds no idle connection opens one
    (it never waits for a free one); ``connect_timeout`` is libpq's limit on
    opening it, in whole seconds (rounded, at least 1), past which the call
    raises :class:`DatabaseUnavailable`; ``pool_size`` idle ones are kept. A
    heartbeat thread renews the leases of all in-flight executions.

    ``default_ttl_ms`` is the lease used when ``once()`` names none (3000);
    ``default_hard_ttl_ms`` the hard deadline then (default: the lease);
    ``namespace`` isolates this client's keys from other systems sharing the
    database. ``dumps`` turns a function's return value into JSON text
    (default: ``json.dumps`` without NaN) and ``loads`` post-processes a
    recorded response. With ``check_schema`` (the default) the first call
    checks, once, that the database's schema is recent enough for this
    client and still provides its protocol version, and raises
    :class:`SchemaError` naming the command to run if not.

    ``observers`` are callables receiving an :class:`Event` for every
    acquired, replayed, alive, uncertain, completed, failed, fenced,
    lease_lost and reconciled key (see :meth:`add_observer`); ``on_uncertain``
    is a probe applied when a caller meets an uncertain key (see
    :meth:`once`). ``fingerprints``, ``retain_ms`` and ``permanent_errors``
    are the defaults of :meth:`once`'s ``fingerprint``, ``retain_ms`` and
    ``permanent``. ``cache_size`` (default 0, off) keeps that many completed
    responses for ``cache_ttl_ms``, replayed without a round trip. ``listen``
    wakes waiters by LISTEN/NOTIFY; ``poll_interval_ms`` is their polling
    fallback. ``reply_timeout`` bounds, in seconds, the wait for the
    database's reply to each protocol statement (acquire, heartbeat, record):
    past it the connection is closed and the call goes on as after any lost
    connection (retried where that is safe, else :class:`DatabaseUnavailable`).
    It ends the wait on a peer that acknowledges and never answers (a hung
    proxy, a frozen server), which TCP timeouts cannot see; ``None`` waits
    without a bound. Call :meth:`close` (or use ``with``) to stop the
    heartbeat and close a private pool.
    """

    def __init__(
        self,
        get_conn: Optional[GetConn] = None,
        *,
        pool: Any = None,
        conninfo: Optional[str] = None,
        default_ttl_ms: Optional[int] = None,
        default_hard_ttl_ms: Optional[int] = None,
        namespace: Optional[str] = None,
        dumps: Optional[Callable[[Any], str]] = None,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        prepared_statements: bool = False,
        check_schema: bool = True,
        observers: Sequence[Observer] = (),
        on_uncertain: Optional[Probe] = None,
        loads: Optional[Callable[[Any], Any]] = None,
        fingerprints: bool = True,
        retain_ms: Optional[int] = None,
        permanent_errors: Tuple[Type[BaseException], ...] = (),
        cache_size: int = 0,
        cache_ttl_ms: int = 1000,
        listen: bool = True,
        poll_interval_ms: int = 100,
        reply_timeout: Optional[float] = 10.0,
    ) -> None:
        given = sum(x is not None for x in (get_conn, pool, conninfo))
        if given == 0:
            # No source: a configured framework (Django) may provide one.
            defaults = framework_defaults()
            if defaults is None:
                raise TypeError(f"{type(self).__name__}() needs one of get_conn=, pool= or conninfo= "
                                "(or a configured Django)")
            conninfo = defaults["conninfo"]
            namespace = namespace if namespace is not None else defaults.get("namespace")
            default_ttl_ms = default_ttl_ms if default_ttl_ms is not None else defaults.get("default_ttl_ms")
        elif given != 1:
            raise TypeError(f"{type(self).__name__}() needs exactly one of get_conn=, pool= or conninfo=")
        options = Options.checked(
            namespace=namespace, default_ttl_ms=default_ttl_ms, default_hard_ttl_ms=default_hard_ttl_ms,
            dumps=dumps, loads=loads, fingerprints=fingerprints, retain_ms=retain_ms,
            permanent_errors=permanent_errors, cache_size=cache_size, cache_ttl_ms=cache_ttl_ms, listen=listen,
            poll_interval_ms=poll_interval_ms, reply_timeout=reply_timeout, check_schema=check_schema,
        )
        self._setup(options, observers, on_uncertain)
        self._source: Source = make_source(get_conn, pool, conninfo, pool_size=pool_size,
                                                connect_timeout=connect_timeout,
                                                prepared_statements=prepared_statements)
        self._heartbeat = Heartbeater(self._source, on_lost=self._lease_lost,
                                           explicit=lambda: self._explicit_rc, timeout=options.reply_s)
        self._listener_obj: Optional[Listener] = None
        # A framework's check that no transaction of its own is open around once() (Django's atomic()).
        self._outside_transaction = transaction_guard()
        track_fork(self)

    # -- lifecycle ---------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections, leases and listener (see ``_fork``)."""
        self._lock = threading.Lock()
        self._source.after_fork()
        # The parent's leases are the parent's to renew; its threads and tasks are not here.
        self._heartbeat = Heartbeater(self._source, on_lost=self._lease_lost,
                                           explicit=lambda: self._explicit_rc, timeout=self.options.reply_s)
        self._listener_obj = None
        if self._cache is not None:
            self._cache.after_fork()


    def close(self) -> None:
        """Stop the heartbeat and the listener and close this client's own connections.
        """
        self._closed = True
        self._heartbeat.close()
        if self._listener_obj is not None:
            self._listener_obj.close()
            self._listener_obj = None
        self._source.close()

    def __enter__(self) -> Sentinel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        """On first use, refuse a schema this client cannot work with, and learn the sessions' isolation."""
        if self._schema_ok and self._isolation_known:
            return
        if not self._schema_ok:
            level = (check_compatible(conn)).isolation
            self._schema_ok = True
        else:  # check_schema=False: one question, once
            with wrap_exceptions():
                row = fetchone(conn, "show transaction_isolation")
            level = str(row[0]) if row else "read committed"
        self._isolation_seen(level)

    def _shielded(self, value: T) -> T:
        """What the recording returned (a thread is not cancelled under it)."""
        return value

    # -- once --------------------------------------------------------------

    def once(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        fingerprint: Union[str, bool, None] = None,
        retain_ms: Optional[int] = None,
        permanent: Tuple[Type[BaseException], ...] = (),
        pass_context: bool = False,
        on_uncertain: Optional[Probe] = None,
    ) -> Result:
        """Run ``fn(*args, **kwargs)`` at most once for ``key`` and return a :class:`Result`.

        If the key already completed, its recorded response is replayed (one
        round trip, nothing written). If another worker is running it, the
        result says ``execution_alive``; if an execution started and its
        outcome is unknown, ``uncertain``. Otherwise this call claims the key,
        runs ``fn`` while a background heartbeat renews the lease every
        ``ttl_ms / 3``, and records the return value (serialised to JSON) or
        the exception. Exceptions from ``fn`` are recorded as failed (a later
        call may retry) and re-raised unchanged; ``KeyboardInterrupt`` and
        ``SystemExit`` mark the key uncertain at once and are re-raised.

        ``ttl_ms`` is the lease (default ``default_ttl_ms``); ``hard_ttl_ms``
        (default ``ttl_ms``) the ceiling from the claim that no heartbeat can
        pass. ``wait_ms``: when another worker is running the key, wait up to
        that long for its outcome (woken by NOTIFY, or polling every
        ``poll_interval_ms``) and return the replay, or the alive or uncertain
        state at the deadline.

        ``fingerprint``: by default (when the client has
        ``fingerprints=True``) a hash of the canonical JSON of the
        arguments (never of ``fn`` itself: a renamed function, or another
        callable asking, replays the result) is stored with the claim, and a
        later call with the same key and other arguments raises
        :class:`KeyMismatch`; give your own text to name the work, or
        ``False`` to opt out for this call. ``retain_ms`` (default the
        client's): the finished record may be purged that long afterwards
        (``purge_expired``). ``permanent``: exception classes recorded as
        permanent failures, replayed to later callers instead of re-run (added
        to the client's ``permanent_errors``). With ``pass_context`` the
        function is called as ``fn(ctx, *args, **kwargs)``.

        ``on_uncertain`` (default: the client's) is a probe called with an
        :class:`UncertainKey` when the key is uncertain. It asks the real system
        and answers :class:`Happened` (its response is recorded through
        ``reconcile_v1`` and replayed), :class:`DidNotHappen` (the key is
        released and the function runs now) or :class:`Unknown` (the result
        stays uncertain). The probe is recorded as the reconcile's actor; the
        role needs the operator grant.
        """
        call = self._call(key, fn, args, kwargs, ttl_ms, hard_ttl_ms, fingerprint, pass_context, retain_ms,
                          permanent)
        if self._outside_transaction is not None:
            self._outside_transaction(call.key)
        _check_wait(wait_ms)
        result = self._cached(call)
        if result is not None:
            return result
        result = self._attempt(call)
        if result.execution_alive and wait_ms > 0:
            result = self._wait(call, result, wait_ms)
        probe = on_uncertain or self._on_uncertain
        if result.uncertain and probe is not None:
            result = self._probe(probe, result, call)
        return result

    def _wait(self, call: _Call, result: Result, wait_ms: int) -> Result:
        """Wait for another worker's outcome: NOTIFY wakes us, polling is the fallback.

        The database notifies only watched keys, so once LISTEN is in place the
        waiter registers with ``watch_v1`` and only then asks again (one
        acquire per round), so a notification can never fall in between; it
        removes its watcher with ``unwatch_v1`` when it stops waiting. Until
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
                    watch_id = self._watch(call.key, deadline)
                listening = watch_id is not None and listener is not None and listener.ready.is_set()
                if event is not None:
                    event.clear()
                result = self._attempt(call)
                if not result.execution_alive:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                # With LISTEN a notification wakes us; the timeout is only a safety net.
                pause = min(remaining, max(poll_s, 1.0) if listening else poll_s)
                if listening and event is not None:
                    wait_event(event, pause)
                elif listener is not None and not watch_tried:
                    wait_event(listener.ready, pause)  # poll, but watch as soon as LISTEN is in place
                else:
                    sleep(pause)
        finally:
            if listener is not None and event is not None:
                listener.unregister(call.key, event)
            if watch_id is not None:
                self._unwatch(watch_id)

    def _watch(self, key: str, deadline: float) -> Optional[int]:
        """Ask the database to NOTIFY ``key``'s outcome until ``deadline``; None if it cannot (then we poll)."""
        ms = max(1, min(2_592_000_000, int((deadline - time.monotonic()) * 1000) + 1))
        try:
            with self._source.connection() as conn:
                with wrap_exceptions():
                    row = protocol_row(conn, "select sentinel.watch_v1(%s, %s, %s)", (self.namespace, key, ms),
                                             explicit=self._explicit_rc, timeout=self.options.reply_s)
            return int(row[0]) if row else None
        except SentinelError as exc:
            logger.debug("watch_v1 failed (%s); polling instead", exc)
            return None

    def _unwatch(self, watch_id: int) -> None:
        try:
            with self._source.connection() as conn:
                with wrap_exceptions():
                    protocol_row(conn, "select sentinel.unwatch_v1(%s)", (watch_id,), explicit=self._explicit_rc,
                                       timeout=self.options.reply_s)
        except SentinelError as exc:  # the watcher expires by itself
            logger.debug("unwatch failed: %s", exc)

    def _listener(self) -> Optional[Listener]:
        if not self.options.listen:
            return None
        with self._lock:
            if self._listener_obj is None:
                self._listener_obj = Listener(self._source, self.namespace)
            return self._listener_obj

    def _probe(self, probe: Probe, result: Result, call: _Call) -> Result:
        """Ask ``probe`` about an uncertain key and apply its answer through reconcile_v1."""
        record = self.inspect(call.key) or {}
        info = UncertainKey(self.namespace, call.key, result.fence or 0, result.attempt or 0, record)
        try:
            answer = call_probe(probe, info)
        except Exception as exc:
            answer = self._probe_failed(probe, call, exc)
        decision = self._probe_decision(probe, call, result, answer)
        if decision is None:
            return result
        action, details = decision
        try:
            self.reconcile(call.key, action=action, **details)
        except ReconcileRefused:
            pass  # somebody resolved the key meanwhile: what it is now is the answer
        return self._attempt(call)

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
                        row = protocol_row(conn, _ACQUIRE_SQL, (ns, key, self.owner, call.ttl, call.hard,
                                                                      call.fingerprint, retry.token),
                                                 explicit=self._explicit_rc, timeout=self.options.reply_s)
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
            rec = self._record(None, _FAIL_SQL, (ns, key, fence, _not_started_document(exc), False,
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
        lease = Lease(ns, key, fence, call.ttl, deadline)
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
        """Record that the function raised ``exc`` (fail_v2), with a shorter document if the DBA's cap asks."""
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
        """Record the function's return value (complete_v2); uncertain if it cannot be stored."""
        try:
            text, recorded_value = self._to_json(value)
        except Exception as exc:
            recorded = self._abandon(conn, call, fence, f"result not serialisable: {type(exc).__name__}: {exc}",
                                           deadline=deadline)
            raise self._unserialisable(call, value, exc, recorded, refused=False) from exc
        try:
            rec = self._record(conn, _COMPLETE_SQL, (self.namespace, call.key, fence, text, call.retain_ms),
                                     deadline)
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
        """Mark our execution uncertain (abandon_v1); True if the database recorded it."""
        ns, key, reason = self.namespace, call.key, reason[:1000]
        try:
            rec = self._record(conn, _ABANDON_SQL, (ns, key, fence, reason),
                                     deadline if deadline is not None else time.monotonic())
        except Exception as exc:  # never hide the original exception
            logger.error("could not mark %s/%s uncertain: %s", ns, key, exc, extra=_log_extra(ns, key, fence))
            return False
        return self._abandon_reported(ns, key, fence, reason, rec)

    # -- operator calls ----------------------------------------------------

    def _rows(self, query: str, params: Tuple[Any, ...], *, check_schema: bool = False,
                    ) -> Tuple[List[str], List[Tuple[Any, ...]]]:
        with self._source.connection() as conn:
            if check_schema:
                self._check_schema(conn)
            with wrap_exceptions(), bounded(conn, self.options.reply_s):
                cur = conn.execute(query, params)
                rows = cur.fetchall()
            return [d.name for d in (cur.description or [])], [tuple(r) for r in rows]

    def inspect(self, key: str) -> Optional[Dict[str, Any]]:
        """The execution record of ``key`` in this namespace, or None."""
        key = _check_key(key)
        names, rows = self._rows("select * from sentinel.inspect_v1(%s, %s)", (self.namespace, key),
                                       check_schema=True)
        return dict(zip(names, rows[0])) if rows else None

    def list(self, state: Optional[str] = None, *, older_than_ms: Optional[int] = None,
                   max_rows: int = 100, bodies: bool = False) -> List[Dict[str, Any]]:
        """Execution records of this namespace, oldest change first, optionally by effective state.

        ``response`` and ``error`` are None unless ``bodies=True`` (a record's
        full body is :meth:`inspect`'s).
        """
        names, rows = self._rows("select * from sentinel.list_v2(%s, %s, %s, %s, %s)",
                                       (self.namespace, state, older_than_ms, max_rows, bool(bodies)))
        return [dict(zip(names, r)) for r in rows]

    def reconcile(self, key: str, *, action: str, actor: str, reason: str, response: Any = None,
                        error: Any = None, force: bool = False) -> Dict[str, Any]:
        """Resolve a key as ``completed`` (with ``response``), ``failed`` or ``release`` it.

        Always takes a new fence, so a late worker is fenced out; records
        ``actor`` and ``reason``. Refuses keys that are not uncertain, failed or
        a lapsed claim unless ``force``.
        """
        params = self._reconcile_params(key, action, actor, reason, response, error, force)
        names, rows = self._rows(
            "select * from sentinel.reconcile_v1(%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)", params)
        assert rows
        return self._reconciled(params[1], dict(zip(names, rows[0])), action, actor, reason)

    def events(self, key: str, *, max_rows: int = 1000) -> List[Dict[str, Any]]:
        """The event log of ``key`` (newest ``max_rows``, oldest first): one row per transition."""
        key = _check_key(key)
        names, rows = self._rows("select * from sentinel.events_v1(%s, %s, %s)",
                                       (self.namespace, key, max_rows))
        return [dict(zip(names, r)) for r in rows]

    def stats(self) -> Dict[str, Any]:
        """Records of this namespace by effective state, the oldest uncertain, executions per minute."""
        names, rows = self._rows("select * from sentinel.stats_v1(%s)", (self.namespace,))
        assert rows
        return dict(zip(names, rows[0]))

    def _purge_loop(self, query: str, params: Tuple[Any, ...], batch_size: int) -> int:
        total = 0
        with self._source.connection() as conn:
            while True:
                with wrap_exceptions():
                    row = fetchone(conn, query, params)
                n = int(row[0]) if row else 0
                total += n
                if n < batch_size:
                    return total

    def purge(self, older_than_ms: int, *, batch_size: int = 1000) -> int:
        """Delete completed and failed records finished ``older_than_ms`` ago, in batches; returns the count."""
        return self._purge_loop("select sentinel.purge_v1(%s, %s, %s)",
                                      (self.namespace, older_than_ms, batch_size), batch_size)

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Delete this namespace's finished records whose ``retain_ms`` has passed, in batches."""
        return self._purge_loop("select sentinel.purge_expired_v1(%s, %s)", (self.namespace, batch_size),
                                      batch_size)

    def purge_events(self, older_than_ms: int, *, batch_size: int = 10000) -> int:
        """Delete events (of every namespace) older than ``older_than_ms``, in batches; returns the count."""
        return self._purge_loop("select sentinel.purge_events_v1(%s, %s)", (older_than_ms, batch_size),
                                      batch_size)

    # -- decorator ---------------------------------------------------------

    def idempotent(
        self,
        key: Callable[..., str],
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        fingerprint: Union[str, bool, None] = None,
        retain_ms: Optional[int] = None,
        permanent: Tuple[Type[BaseException], ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Awaitable[Any]]]:
        """Decorate a function so each call runs through :meth:`once` and returns the response.

        ``key`` receives the call's arguments and returns the key, for example
        ``key=lambda order_id, **_: f"order-{order_id}"``. The wrapper returns
        the (fresh or replayed) response, and raises :class:`ExecutionInProgress`
        when another worker is running the key (after ``wait_ms``),
        :class:`OutcomeUncertain` when the key is uncertain, and
        :class:`PermanentFailure` when a permanent failure is replayed; each
        carries the :class:`Result`. Exceptions of the function itself are
        re-raised unchanged.
        """
        if not callable(key):
            raise TypeError("key must be a callable computing the key from the call's arguments")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = self.once(key(*args, **kwargs), fn, args, kwargs, ttl_ms=ttl_ms,
                                         hard_ttl_ms=hard_ttl_ms, wait_ms=wait_ms, fingerprint=fingerprint,
                                         retain_ms=retain_ms, permanent=permanent)
                return unwrap(result)

            return wrapper

        return decorate

    # -- transactional exactly-once ------------------------------------------

    @contextlib.contextmanager
    def transaction(
        self,
        key: str,
        conn: psycopg.Connection[Any],
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        fingerprint: Optional[str] = None,
        retain_ms: Optional[int] = None,
    ) -> Iterator[Transaction]:
        """Claim ``key``, do your own writes on ``conn``, and record the response, in ONE transaction.

        ::

            with sentinel.transaction("order-17", conn) as tx:
                if tx.acquired:
                    conn.execute("insert into orders ...")
                    tx.complete({"order_id": 17})
            response = tx.response          # fresh or replayed

        The claim, your writes and the completion commit together when the
        block ends, or roll back together if it raises (or the process dies):
        a crash leaves either nothing or everything. If ``conn`` is already in
        a transaction, the block is a savepoint of it and commits with it.
        Concurrent callers of the same key *wait*: their acquire blocks on the
        uncommitted claim until this transaction ends, then replays (or, after
        a rollback, claims). A block that acquired the key must call
        :meth:`Transaction.complete`, or it is rolled back with
        :class:`SentinelError`. ``tx.replayed``, ``tx.execution_alive``
        (another worker runs it with :meth:`once`), ``tx.uncertain`` say what
        happened otherwise. No heartbeat runs: keep the block short.
        """
        call = self._call(key, _no_function, (), None, ttl_ms, hard_ttl_ms, fingerprint or False, False,
                          retain_ms, ())
        ns = self.namespace
        user_raised: List[BaseException] = []
        savepoint = conn.info.transaction_status != pq.TransactionStatus.IDLE
        with protocol_errors(user_raised):
            with conn.transaction():
                self._check_schema(conn)
                row = fetchone(conn, _ACQUIRE_SQL, (ns, call.key, self.owner, call.ttl, call.hard,
                                                          call.fingerprint, None))
                assert row is not None
                outcome, fence, state, attempt, response, error = row[:6]
                tx = Transaction(self, conn, call, outcome, fence, state, attempt,
                                      self.options.loads(response) if outcome == "completed" else None, error)
                if outcome == "mismatch":
                    self._observed(call, outcome, fence, state, attempt, None, None, None)
                tx._opened()
                try:
                    yield tx
                except BaseException as exc:
                    user_raised.append(exc)  # the caller's own error: passed on as it is
                    raise
                if tx.acquired and not tx.completed:
                    raise SentinelError(
                        f"{ns}/{call.key}: the transaction() block acquired the key but did not call "
                        "tx.complete(response); everything in it was rolled back"
                    )
        tx._committed(savepoint)

"""The client: ``once()``, ``idempotent()``, ``transaction()`` and the operator calls.

This module is the one hand-written source of the once() flow, written for
asyncio (:class:`AsyncSentinel`); ``_client.py`` (:class:`Sentinel`) is
generated from it by ``tools/async_to_sync.py``. What is not I/O (argument
checks, what the protocol's answers mean, events, serialisation, the cache)
is in ``_core.ClientCore``; the I/O helpers are in ``_io_async`` (and, under
the same names without ``Async``, ``_io_sync``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
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

from ._conn import protocol_errors, wrap_exceptions
from ._core import TransactionState
from ._events import Observer
from ._fork import track as track_fork
from ._io_async import (
    AsyncGetConn,
    AsyncHeartbeater,
    AsyncListener,
    AsyncProbe,
    AsyncSource,
    fetchone,
    make_source,
)
from ._ops_async import _one_source
from ._options import (
    _ACQUIRE_SQL,
    _COMPLETE_SQL,
    Options,
    _check_wait,
    _no_function,
)
from ._results import Result, unwrap
from ._wait_async import AsyncWaiter
from .errors import SentinelError

if True:  # ASYNC
    import asyncio
    from typing import Set
else:
    from ._frameworks import transaction_guard

__all__ = ["AsyncSentinel", "AsyncTransaction"]

T = TypeVar("T")


class AsyncTransaction(TransactionState):
    """The state of an :meth:`AsyncSentinel.transaction` block."""

    async def complete(self, response: Any) -> Any:
        """Record ``response`` in this transaction; it commits with your writes. Returns it as recorded."""
        text, value = self._serialise(response)
        with wrap_exceptions():
            row = await fetchone(self._conn, _COMPLETE_SQL, self._params(text))
        return self._recorded(row, value)


class AsyncSentinel(AsyncWaiter):
    """Runs functions at most once per key, coordinated through PostgreSQL.

    Give it one source of connections:

    - ``conninfo``: a libpq connection string; Sentinel keeps a private pool
      of up to ``pool_size`` connections, which use no server-side prepared
      statements (so they work behind a transaction-pooling PgBouncer) unless
      ``prepared_statements=True`` (for a direct connection, or PgBouncer
      1.21+ with ``max_prepared_statements``: replays then read
      ``sentinel.decided_v1`` and skip the function call); one the server
      closed while idle is dropped instead of failing a call.
    - ``pool``: your ``psycopg_pool.AsyncConnectionPool``. A call gives its
      connection back while the function runs; the heartbeat and the LISTEN
      waiter use connections of their own built from the pool's settings.
    - ``get_conn``: an async callable returning a *new*
      ``psycopg.AsyncConnection`` for each call; it is closed when the call
      ends.
    - none of them, in a Django project configured for Sentinel: the
      settings' connection.

    **The private pool (asyncio).** It is a ``psycopg_pool.AsyncConnectionPool``
    created and opened on first use, or by ``await s.open()`` / ``async with
    AsyncSentinel(...) as s``; a call waits up to ``connect_timeout`` seconds
    for a connection, then raises :class:`DatabaseUnavailable`. One asyncio
    task (``sentinel-heartbeat``) renews the leases of all in-flight
    executions, on its own connection. An ``AsyncSentinel`` belongs to the
    event loop that first uses it; use one per loop and ``await s.close()``
    at shutdown. An async function that blocks the loop for longer than
    ``ttl_ms`` starves the heartbeat and loses its lease: give such work to a
    sync function, which runs in a thread. ``observers`` are called on the
    event loop (keep them quick); ``on_uncertain`` may be a sync probe (run
    in the default executor) or an async one.

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

    def __init__(  # noqa: PLR0913 - the client's options, keyword-only and checked into Options
        self,
        get_conn: Optional[AsyncGetConn] = None,
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
        on_uncertain: Optional[AsyncProbe] = None,
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
        conninfo, defaults = _one_source(type(self).__name__, get_conn, pool, conninfo)
        namespace = namespace if namespace is not None else defaults.get("namespace")
        default_ttl_ms = default_ttl_ms if default_ttl_ms is not None else defaults.get("default_ttl_ms")
        options = Options.checked(
            namespace=namespace, default_ttl_ms=default_ttl_ms, default_hard_ttl_ms=default_hard_ttl_ms,
            dumps=dumps, loads=loads, fingerprints=fingerprints, retain_ms=retain_ms,
            permanent_errors=permanent_errors, cache_size=cache_size, cache_ttl_ms=cache_ttl_ms, listen=listen,
            poll_interval_ms=poll_interval_ms, reply_timeout=reply_timeout, check_schema=check_schema,
        )
        self._setup(options, observers, on_uncertain)
        self._source: AsyncSource = make_source(get_conn, pool, conninfo, pool_size=pool_size,
                                                connect_timeout=connect_timeout,
                                                prepared_statements=prepared_statements)
        self._heartbeat = AsyncHeartbeater(self._source, on_lost=self._lease_lost,
                                           explicit=lambda: self._explicit_rc, timeout=options.reply_s)
        self._listener_obj: Optional[AsyncListener] = None
        if True:  # ASYNC
            self._tasks: Set[asyncio.Future[Any]] = set()
        else:
            # A framework's check that no transaction of its own is open around once() (Django's atomic()).
            self._outside_transaction = transaction_guard()
        track_fork(self)

    # -- lifecycle ---------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections, leases and listener (see ``_fork``)."""
        self._lock = threading.Lock()
        self._source.after_fork()
        # The parent's leases are the parent's to renew; its threads and tasks are not here.
        self._heartbeat = AsyncHeartbeater(self._source, on_lost=self._lease_lost,
                                           explicit=lambda: self._explicit_rc, timeout=self.options.reply_s)
        self._listener_obj = None
        if self._cache is not None:
            self._cache.after_fork()
        if True:  # ASYNC
            self._tasks = set()

    async def close(self) -> None:
        """Stop the heartbeat and the listener and close this client's own connections.

        **Work in the background (asyncio).** Work still in flight gets up to 5
        seconds: the recordings of callers cancelled after their function
        returned, and the sync functions whose callers were cancelled while
        they ran (their leases are renewed meanwhile). A function still
        running after that is marked uncertain, since nobody renews its lease
        any more.
        """
        self._closed = True
        if True:  # ASYNC
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=5.0)
        await self._heartbeat.close()
        if self._listener_obj is not None:
            await self._listener_obj.close()
            self._listener_obj = None
        await super().close()

    # -- once --------------------------------------------------------------

    async def once(  # noqa: PLR0913 - once()'s options, keyword-only
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
        on_uncertain: Optional[AsyncProbe] = None,
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

        **How fn runs (asyncio).** An ``async`` function (or any callable whose
        call returns a coroutine, such as an object with ``async def
        __call__``) is awaited in the calling task. A sync function runs in
        the event loop's default executor (a worker thread, like
        ``asyncio.to_thread``, with the caller's ``contextvars``), so a
        blocking function cannot stall the loop and its heartbeat; if it
        returns an awaitable, that is awaited too.
        ``sentinel.current_execution()`` returns the context in both.

        **Interruptions (asyncio).** ``asyncio.CancelledError`` (the calling
        task was cancelled, for example by ``asyncio.wait_for`` or a
        ``TaskGroup``) is always re-raised to the caller at once. An *async*
        function is cancelled with its caller; it may have had effects, so the
        key is marked uncertain at once (``abandon_v2``). A *sync* function
        cannot be stopped in its thread, so nothing is abandoned: its lease is
        renewed until the thread really ends, other callers keep seeing
        ``execution_alive``, and its real outcome is recorded then, as if the
        caller had waited; :meth:`close` waits up to 5 seconds for such
        threads. A caller cancelled after ``fn`` returned does not stop the
        recording: it completes in the background.

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
        if True:  # ASYNC
            pass
        else:
            if self._outside_transaction is not None:
                self._outside_transaction(call.key)
        _check_wait(wait_ms)
        result = self._cached(call)
        if result is not None:
            return result
        result = await self._attempt(call)
        if result.execution_alive and wait_ms > 0:
            result = await self._wait(call, result, wait_ms)
        probe = on_uncertain or self._on_uncertain
        if result.uncertain and probe is not None:
            result = await self._probe(probe, result, call)
        return result

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

        **The wrapper (asyncio).** It is a coroutine function (``await
        place(7, amount=10)``); the decorated function may be async or sync
        (then it runs in a thread, see :meth:`once`).
        """
        if not callable(key):
            raise TypeError("key must be a callable computing the key from the call's arguments")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await self.once(key(*args, **kwargs), fn, args, kwargs, ttl_ms=ttl_ms,
                                         hard_ttl_ms=hard_ttl_ms, wait_ms=wait_ms, fingerprint=fingerprint,
                                         retain_ms=retain_ms, permanent=permanent)
                return unwrap(result)

            return wrapper

        return decorate

    # -- transactional exactly-once ------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        key: str,
        conn: psycopg.AsyncConnection[Any],
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        fingerprint: Optional[str] = None,
        retain_ms: Optional[int] = None,
    ) -> AsyncIterator[AsyncTransaction]:
        """Claim ``key``, do your own writes on ``conn``, and record the response, in ONE transaction.

        ::

            async with sentinel.transaction("order-17", conn) as tx:
                if tx.acquired:
                    await conn.execute("insert into orders ...")
                    await tx.complete({"order_id": 17})
            response = tx.response          # fresh or replayed

        The claim, your writes and the completion commit together when the
        block ends, or roll back together if it raises (or the process dies):
        a crash leaves either nothing or everything. If ``conn`` is already in
        a transaction, the block is a savepoint of it and commits with it.
        Concurrent callers of the same key *wait*: their acquire blocks on the
        uncommitted claim until this transaction ends, then replays (or, after
        a rollback, claims). A block that acquired the key must call
        :meth:`AsyncTransaction.complete`, or it is rolled back with
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
            async with conn.transaction():
                await self._check_schema(conn)
                row = await fetchone(conn, _ACQUIRE_SQL, (ns, call.key, self.owner, call.ttl, call.hard,
                                                          call.fingerprint, call.token))
                assert row is not None
                outcome, fence, state, attempt, response, error = row[:6]
                tx = AsyncTransaction(self, conn, call, outcome, fence, state, attempt,
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

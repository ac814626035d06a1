# Generated from _client_async.py by tools/async_to_sync.py (make generate): do not edit.
# Change the asyncio source and regenerate; make check fails while this file is stale.
"""The synchronous client, :class:`Sentinel`: once(), idempotent(), transaction(), the operator calls.

Generated from ``_client_async.py`` by ``tools/async_to_sync.py``; read and change that file.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import (
    Any,
    Awaitable,
    Callable,
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

from ._conn import protocol_errors, wrap_exceptions
from ._core import TransactionState
from ._events import Observer
from ._fork import track as track_fork
from ._frameworks import transaction_guard
from ._io_sync import (
    GetConn,
    Heartbeater,
    Listener,
    Probe,
    Source,
    fetchone,
    make_source,
)
from ._ops import _one_source
from ._options import (
    _ACQUIRE_SQL,
    _COMPLETE_SQL,
    Options,
    _check_wait,
    _no_function,
)
from ._results import Result, unwrap
from ._wait import Waiter
from .errors import SentinelError

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


class Sentinel(Waiter):
    """Runs functions at most once per key, coordinated through PostgreSQL.

    Give it one source of connections:

    - ``conninfo``: a libpq connection string; Sentinel keeps a private pool
      of up to ``pool_size`` connections, which use no server-side prepared
      statements (so they work behind a transaction-pooling PgBouncer) unless
      ``prepared_statements=True`` (for a direct connection, or PgBouncer
      1.21+ with ``max_prepared_statements``: replays then read
      ``sentinel.decided_v1`` and skip the function call); one the server
      closed while idle is dropped instead of failing a call.
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

    def __init__(  # noqa: PLR0913 - the client's options, keyword-only and checked into Options
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
        super().close()

    # -- once --------------------------------------------------------------

    def once(  # noqa: PLR0913 - once()'s options, keyword-only
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
                                                          call.fingerprint, call.token))
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

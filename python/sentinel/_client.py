"""The ``Sentinel`` client: ``once()`` and the operator calls."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import psycopg
from psycopg import pq

from ._conn import (
    GetConn,
    GetConnSource,
    PoolSource,
    Source,
    conninfo_source,
    protocol_errors,
    protocol_row,
    wrap_exceptions,
)
from ._events import (
    DidNotHappen,
    Event,
    Happened,
    Observer,
    Probe,
    ProbeAnswer,
    UncertainKey,
    Unknown,
    emit,
    probe_name,
)
from ._fork import track as track_fork
from ._frameworks import defaults as framework_defaults
from ._frameworks import transaction_guard
from ._heartbeat import Heartbeater, Lease
from ._logs import held_back, one_line
from ._logs import throttle as _throttle
from ._schema import check_compatible
from ._support import Listener, ResponseCache, auto_fingerprint, decode_like_jsonb, default_dumps
from ._watchdog import bounded
from .errors import (
    DatabaseUnavailable,
    DocumentTooLarge,
    ExecutionInProgress,
    FencedOut,
    InvalidArgument,
    InvalidKey,
    InvalidNamespace,
    InvalidText,
    InvalidTTL,
    KeyLocked,
    KeyMismatch,
    OutcomeUncertain,
    PermanentFailure,
    ReconcileRefused,
    ResultNotSerializable,
    SentinelError,
    SerializationConflict,
)

logger = logging.getLogger("sentinel")

__all__ = ["Sentinel", "Result", "ExecutionContext", "LeaseLost", "Transaction", "current_execution", "unwrap"]

MAX_KEY_BYTES = 1024
MAX_TTL_MS = 2_592_000_000  # 30 days
MAX_RETAIN_MS = 3_153_600_000_000  # 100 years
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")

_ACQUIRE_SQL = (
    "select outcome, fence, state, attempt, response, error, claimed_at, lease_expires_at,"
    " hard_expires_at, now from sentinel.acquire_v2(%s, %s, %s, %s, %s, true, %s, %s)"
)
_COMPLETE_SQL = "select outcome, state from sentinel.complete_v2(%s, %s, %s, %s::jsonb, %s)"
_FAIL_SQL = "select outcome, state from sentinel.fail_v2(%s, %s, %s, %s::jsonb, %s, %s)"
_ABANDON_SQL = "select outcome, state from sentinel.abandon_v1(%s, %s, %s, %s)"

_current: contextvars.ContextVar[Optional[ExecutionContext]] = contextvars.ContextVar(
    "sentinel_execution", default=None
)


@dataclass(frozen=True)
class _Call:
    """The checked arguments of one once() call."""

    key: str
    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    ttl: int
    hard: int
    fingerprint: Optional[str]
    pass_context: bool
    retain_ms: Optional[int]
    permanent: Tuple[Type[BaseException], ...]


class _AcquireRetry:
    """The retry of an acquire whose reply may have been lost (sync and async paths alike).

    Each call draws a random token and sends it with ``acquire_v2``. When the
    connection breaks after the statement went out, the claim may have been
    committed without our knowing it: the same call asks again, with the same
    token, and the database hands the claim back (same fence) if it was made.
    It retries with backoff while that claim's lease would still live, never
    when the statement never left (nothing can have been claimed then).
    """

    __slots__ = ("token", "retries", "_asked", "_answered", "_until", "_delay", "_ttl_s", "_conflicts")

    def __init__(self, call: _Call) -> None:
        self.token = secrets.token_hex(16)
        self.retries = 0
        self._asked = False  # an acquire went out
        self._answered = False  # ... and its answer came back: never ask again after that
        self._until = 0.0
        self._delay = 0.05
        self._ttl_s = call.ttl / 1000.0
        self._conflicts = 0

    def after_conflict(self) -> Optional[float]:
        """Seconds to wait before asking again after a serialization conflict, or None after too many."""
        self._conflicts += 1
        if self._conflicts > 50:
            return None
        return float(min(0.002 * 2 ** min(self._conflicts, 8), 0.2) * (0.5 + random.random()))

    def asking(self) -> None:
        if not self._asked:
            self._until = time.monotonic() + self._ttl_s  # the claim, if made, lives at least this long
        self._asked = True

    def answered(self) -> None:
        self._answered = True

    def after(self, exc: BaseException, ns: str, key: str) -> Optional[float]:
        """Seconds to wait before asking again, or None to give up with ``exc``."""
        if not self._asked or self._answered:
            return None  # nothing went out (nothing claimed), or the answer came: the run's own errors
        remaining = self._until - time.monotonic()
        if remaining <= 0:
            logger.error("%s/%s: the reply to acquire was lost and the database stayed out of reach for "
                         "a whole lease; if the claim was made, it reads uncertain now", ns, key)
            return None
        self.retries += 1
        pause = min(self._delay * (0.5 + random.random()), remaining)
        self._delay = min(self._delay * 2, 1.0)
        logger.warning("%s/%s: the reply to acquire was lost (%s); asking again as the same call",
                       ns, key, exc)
        return pause


class LeaseLost(SentinelError):
    """Raised by :meth:`ExecutionContext.check` once the execution's lease is lost."""


@dataclass(frozen=True)
class Result:
    """What ``once()`` learned about a key.

    Exactly one of these holds:

    - ``execution_alive``: another worker is running it now;
    - ``uncertain``: an execution started and its outcome is unknown
      (reconcile it);
    - ``failed`` (``state == "failed"``): a permanent error is replayed in
      ``error``;
    - ``completed``: ``response`` holds the recorded response, fresh
      (``replayed`` False) or replayed;
    - ``not persisted`` (``persisted`` False, ``state == "executing"``): the
      function ran here and returned ``response``, but the database stayed out
      of reach until the hard deadline, so nothing is recorded and other
      callers will be told the key is uncertain.
    """

    namespace: str
    key: str
    state: str
    response: Any = None
    replayed: bool = False
    execution_alive: bool = False
    uncertain: bool = False
    fence: Optional[int] = None
    attempt: Optional[int] = None
    error: Any = None
    #: False when the function ran but its response could not be recorded
    #: before the hard deadline (the database was unreachable).
    persisted: bool = True
    hard_expires_at: Optional[datetime] = None
    #: True when the replay came from the local cache, without a round trip.
    cached: bool = False

    @property
    def failed(self) -> bool:
        """True when a permanent failure was replayed (``error`` holds it)."""
        return self.state == "failed"

    @property
    def completed(self) -> bool:
        """True when ``response`` holds the key's response (fresh or replayed)."""
        return self.state == "completed"


class ExecutionContext:
    """What a running function may know about its own execution.

    Passed as the first argument when ``once(..., pass_context=True)``, and
    always available inside the function as :func:`current_execution`. Write
    ``fence`` to downstream systems that can reject stale writers; poll
    ``lease_lost`` (or call :meth:`check`) in long loops to stop cooperatively
    once the database no longer considers this execution alive.
    """

    __slots__ = ("namespace", "key", "fence", "attempt", "claimed_at", "hard_expires_at", "_lease")

    def __init__(
        self,
        namespace: str,
        key: str,
        fence: int,
        attempt: int,
        claimed_at: datetime,
        hard_expires_at: datetime,
        lease: Lease,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.fence = fence
        self.attempt = attempt
        self.claimed_at = claimed_at
        self.hard_expires_at = hard_expires_at
        self._lease = lease

    @property
    def lease_lost(self) -> bool:
        """True once a heartbeat found the execution no longer ours, or its hard deadline passed.

        The hard deadline is also checked on the local clock, so this turns
        true on time even when the heartbeat cannot reach the database.
        """
        return self._lease.past_deadline()

    @property
    def lease_expires_at(self) -> Optional[datetime]:
        """The lease's end as last renewed (database clock), or None before the first renewal."""
        value: Optional[datetime] = self._lease.lease_expires_at
        return value

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Block until the lease is lost (or the hard deadline passes) or ``timeout`` seconds pass; True if lost."""
        return self._lease.wait(timeout)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is lost or the hard deadline passed."""
        if self._lease.past_deadline():
            raise LeaseLost(
                f"{self.namespace}/{self.key}: lease lost under fence {self.fence} ({self._lease.lost_reason})"
            )

    def __repr__(self) -> str:
        return f"ExecutionContext({self.namespace!r}, {self.key!r}, fence={self.fence}, lost={self.lease_lost})"


def current_execution() -> Optional[ExecutionContext]:
    """The :class:`ExecutionContext` of the function ``once()`` is running, or None."""
    return _current.get()


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKey("key must be a non-empty string")
    if "\x00" in key:
        raise InvalidKey("key must not contain NUL characters (\\x00)")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long in UTF-8; the maximum is {MAX_KEY_BYTES}")
    return key


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise InvalidNamespace(
            f"invalid namespace {namespace!r}: use 1 to 63 characters of a-z, 0-9, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return namespace


def _check_ttl(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTTL(f"{name} must be an int number of milliseconds, got {value!r}")
    if value <= 0 or value > MAX_TTL_MS:
        raise InvalidTTL(f"{name} must be between 1 and {MAX_TTL_MS} ms (30 days), got {value}")
    return value


def _check_reply_timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
        raise InvalidArgument(f"reply_timeout must be None or between 1 and 3600 seconds, got {value!r}")
    return float(value)


@contextlib.contextmanager
def _naming(ns: str, key: str) -> Iterator[None]:
    """Name the key in a KeyLocked raised by the block (the database's message cannot)."""
    try:
        yield
    except KeyLocked as exc:
        raise KeyLocked(f"{ns}/{key}: {exc}") from exc.__cause__


def _safe_text(text: str) -> str:
    """``text`` with lone surrogates (``os.fsdecode`` of undecodable bytes) spelled out: jsonb refuses them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _error_document(exc: BaseException, max_chars: int = 4000) -> str:
    """The error stored for a failed execution, as JSON text."""
    message = _safe_text(str(exc)).replace("\x00", "\\0")[:max_chars]
    kind = type(exc)
    return json.dumps({"type": f"{kind.__module__}.{kind.__qualname__}", "message": message})


def _not_started_document(exc: BaseException) -> str:
    """The error recorded when a claim is released because its function never started."""
    return json.dumps({"type": "sentinel.NotStarted",
                       "message": f"{type(exc).__name__} arrived after the claim and before the function started"
                                  f": {_safe_text(str(exc))}"[:4000]})


def _no_function() -> None:  # pragma: no cover - never called: transaction() runs no function
    raise AssertionError


class TransactionState:
    """What a ``transaction()`` block learned about its key; shared by the sync and async blocks."""

    def __init__(self, core: Sentinel, conn: Any, call: _Call, outcome: str,
                 fence: int, state: str, attempt: int, response: Any, error: Any) -> None:
        self._core = core
        self._conn = conn
        self._call = call
        self.outcome = outcome
        self.fence = fence
        self.state = state
        self.attempt = attempt
        self.response = response
        self.error = error
        self.completed = False
        # acquired and completed describe work that commits with the block: told once it has
        self._held: List[str] = []

    def _opened(self) -> None:
        """Tell the observers what the block found; its claim only once the block commits."""
        core, ns, key = self._core, self._core.namespace, self._call.key
        if self.outcome == "acquired":
            self._held.append("acquired")
            return
        kind = "replayed" if self.outcome in ("completed", "failed") else self.outcome
        core._emit(kind, ns, key, self.fence, self.attempt, transactional=True)

    def _committed(self, savepoint: bool) -> None:
        """The block's transaction committed (or, inside the caller's transaction, its savepoint was released)."""
        core = self._core
        for kind in self._held:
            core._emit(kind, core.namespace, self._call.key, self.fence, self.attempt, transactional=True,
                       savepoint=savepoint or None)
        self._held = []

    @property
    def acquired(self) -> bool:
        """This block owns the key: do the work, then ``complete(response)``."""
        return self.outcome == "acquired"

    @property
    def replayed(self) -> bool:
        """The key completed before (``response`` holds it) or failed permanently (``error``)."""
        return self.outcome in ("completed", "failed")

    @property
    def execution_alive(self) -> bool:
        """Another worker is running the key with a live lease."""
        return self.outcome == "alive"

    @property
    def uncertain(self) -> bool:
        """An earlier execution's outcome is unknown: reconcile it."""
        return self.outcome == "uncertain"

    def _serialise(self, response: Any) -> Tuple[str, Any]:
        """Check that complete() may run; the response as JSON text and as it will be replayed."""
        if not self.acquired:
            raise SentinelError(f"complete() needs an acquired key; this block saw {self.outcome!r}")
        if self.completed:
            raise SentinelError("complete() was already called in this block")
        core = self._core
        try:
            return core._to_json(response)
        except Exception as exc:
            raise ResultNotSerializable(
                f"{core.namespace}/{self._call.key}: the response could not be serialised ({exc}); "
                "nothing is recorded once the block rolls back", value=response, recorded=False) from exc

    def _params(self, text: str) -> Tuple[Any, ...]:
        return (self._core.namespace, self._call.key, self.fence, text, self._call.retain_ms)

    def _recorded(self, row: Any, value: Any) -> Any:
        """Take the answer of complete_v2: recorded, or an error saying why not."""
        core, key = self._core, self._call.key
        if row is None or row[0] != "recorded":
            raise SentinelError(f"{core.namespace}/{key}: complete was refused ({row[0] if row else None})")
        self.completed = True
        self.state = "completed"
        self.response = value
        self._held.append("completed")
        return value


class Transaction(TransactionState):
    """The state of a :meth:`Sentinel.transaction` block."""

    def complete(self, response: Any) -> Any:
        """Record ``response`` in this transaction; it commits with your writes. Returns it as recorded."""
        text, value = self._serialise(response)
        with wrap_exceptions():
            row = self._conn.execute(_COMPLETE_SQL, self._params(text)).fetchone()
        return self._recorded(row, value)


def unwrap(result: Result) -> Any:
    """The response of a :class:`Result`, or the exception that says why there is none."""
    if result.execution_alive:
        raise ExecutionInProgress(f"{result.namespace}/{result.key} is being executed by another worker",
                                  result=result)
    if result.uncertain:
        raise OutcomeUncertain(f"{result.namespace}/{result.key}: the outcome of fence {result.fence} is unknown; "
                               "reconcile it", result=result)
    if result.failed:
        raise PermanentFailure(f"{result.namespace}/{result.key} failed permanently: {result.error}", result=result)
    return result.response


class Sentinel:
    """Runs functions at most once per key, coordinated through PostgreSQL.

    Give it one source of connections:

    - ``conninfo``: a libpq connection string; Sentinel keeps up to
      ``pool_size`` idle connections so calls do not pay for new ones.
    - ``pool``: your ``psycopg_pool.ConnectionPool``.
    - ``get_conn``: a callable returning a *new* ``psycopg.Connection`` for
      each call; Sentinel closes it when the call ends.

    ``default_ttl_ms`` is the lease used when ``once()`` names none;
    ``namespace`` isolates this client's keys from other systems sharing the
    database. ``dumps`` turns a function's return value into JSON text
    (default: ``json.dumps`` without NaN). ``pool_size`` and
    ``connect_timeout`` apply to the connections of ``conninfo``: a call that
    finds no idle connection opens one (it never waits for a free one), and
    ``connect_timeout`` is libpq's limit on opening it, in whole seconds
    (rounded, at least 1), past which the call raises
    :class:`DatabaseUnavailable` (``pool_size`` idle ones are kept). These
    connections use no server-side prepared statements (so they work behind a
    transaction-pooling PgBouncer) unless ``prepared_statements=True``.
    With ``check_schema`` (the default) the first call checks, once, that the
    database's schema is recent enough for this client and still provides its
    protocol version, and raises :class:`SchemaError` naming the command to
    run if not.

    ``observers`` are callables receiving an :class:`Event` for every
    acquired, replayed, alive, uncertain, completed, failed, fenced,
    lease_lost and reconciled key (see :meth:`add_observer`); ``on_uncertain``
    is a probe applied when a caller meets an uncertain key (see
    :meth:`once`). ``reply_timeout`` bounds, in seconds, the wait for the
    database's reply to each protocol statement (acquire, heartbeat, record):
    past it the connection is closed and the call goes on as after any lost
    connection (retried where that is safe, else :class:`DatabaseUnavailable`).
    It ends the wait on a peer that acknowledges and never answers (a hung
    proxy, a frozen server), which TCP timeouts cannot see; ``None`` waits
    without a bound. Call :meth:`close` (or use ``with``) to stop the
    heartbeat thread and close a private pool.
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
        given = [x is not None for x in (get_conn, pool, conninfo)]
        if sum(given) == 0:
            # Sentinel() with no source: a configured framework (Django) may provide one.
            defaults = framework_defaults()
            if defaults is None:
                raise TypeError("Sentinel() needs one of get_conn=, pool= or conninfo= (or a configured Django)")
            conninfo = defaults["conninfo"]
            namespace = namespace if namespace is not None else defaults.get("namespace")
            default_ttl_ms = default_ttl_ms if default_ttl_ms is not None else defaults.get("default_ttl_ms")
        elif sum(given) != 1:
            raise TypeError("Sentinel() needs exactly one of get_conn=, pool= or conninfo=")
        self.namespace = _check_namespace("default" if namespace is None else namespace)
        self.default_ttl_ms = _check_ttl("default_ttl_ms", 3000 if default_ttl_ms is None else default_ttl_ms)
        self.default_hard_ttl_ms = (
            None if default_hard_ttl_ms is None else _check_ttl("default_hard_ttl_ms", default_hard_ttl_ms)
        )
        self._dumps = dumps or default_dumps
        self._loads: Callable[[Any], Any] = loads or (lambda value: value)
        self._fingerprints = bool(fingerprints)
        if retain_ms is not None and (isinstance(retain_ms, bool) or not isinstance(retain_ms, int)
                                      or not 0 <= retain_ms <= MAX_RETAIN_MS):
            raise InvalidTTL(f"retain_ms must be None or between 0 and {MAX_RETAIN_MS} ms, got {retain_ms!r}")
        self._retain_ms = retain_ms
        if not isinstance(permanent_errors, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in permanent_errors):
            raise TypeError("permanent_errors must be a tuple of exception classes")
        self._permanent = permanent_errors
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidArgument(f"cache_size must be an int >= 0, got {cache_size!r}")
        cache_ttl_s = _check_ttl("cache_ttl_ms", cache_ttl_ms) / 1000.0
        self._cache = ResponseCache(cache_size, cache_ttl_s) if cache_size else None
        self._listen = bool(listen)
        self._poll_s = _check_ttl("poll_interval_ms", poll_interval_ms) / 1000.0
        self._reply_s = _check_reply_timeout(reply_timeout)
        self._listener_obj: Optional[Listener] = None
        self._closed = False
        source: Source
        if get_conn is not None:
            source = GetConnSource(get_conn)
        elif pool is not None:
            source = PoolSource(pool)
        else:
            assert conninfo is not None
            source = conninfo_source(conninfo, max_size=pool_size, timeout=connect_timeout,
                                     prepared_statements=prepared_statements)
        self._source = source
        self._observers: List[Observer] = list(observers)
        self._on_uncertain = on_uncertain
        self._isolation_known = False
        self._explicit_rc = False  # the sessions default to another isolation than read committed
        self._heartbeat = Heartbeater(source, on_lost=self._lease_lost, explicit=lambda: self._explicit_rc,
                                      timeout=self._reply_s)
        self._owner_pid = -1
        self._owner = ""
        self._lock = threading.Lock()
        self._schema_ok = not check_schema
        # A framework's check that no transaction of its own is open around once() (Django's atomic()).
        self._outside_transaction = transaction_guard()
        track_fork(self)

    # -- lifecycle ---------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every :class:`Event` from now on."""
        if not callable(observer):
            raise TypeError("an observer must be callable")
        self._observers.append(observer)

    def _emit(self, kind: str, ns: str, key: str, fence: Optional[int] = None, attempt: Optional[int] = None,
              duration_s: Optional[float] = None, error: Optional[BaseException] = None, **details: Any) -> None:
        if not self._observers and not logger.isEnabledFor(
                logging.WARNING if kind in ("uncertain", "fenced", "lease_lost") else logging.DEBUG):
            return  # nobody listens: build no event (this is on every call's path)
        emit(self._observers, Event(kind, ns, key, fence, attempt, duration_s, error, details))

    def _lease_lost(self, lease: Lease) -> None:
        self._emit("lease_lost", lease.namespace, lease.key, lease.fence, reason=lease.lost_reason)

    def _failure_reported(
        self, ns: str, key: str, fence: int, attempt: int, took: float, exc: BaseException,
        rec: Optional[Tuple[Any, ...]], permanent: bool, log_extra: Dict[str, Any], **details: Any,
    ) -> None:
        """Report what fail_v2 answered for a function that raised (sync and async paths alike).

        ``uncertain`` is the database's rule for a late failure: the function
        raised after its lease was lost, may have had effects, and the key
        stays uncertain with the error kept as evidence for the reconciler.
        """
        if rec is not None and rec[0] == "stale":
            self._emit("fenced", ns, key, fence, attempt, took, exc, state=rec[1], **details)
        elif rec is not None and rec[0] == "uncertain":
            logger.warning("%s/%s raised %s after its lease was lost under fence %s; the key stays "
                           "uncertain (the error is kept for the reconciler)", ns, key, type(exc).__name__, fence,
                           extra=log_extra)
            self._emit("uncertain", ns, key, fence, attempt, took, exc, reason="late failure", **details)
        else:
            self._emit("failed", ns, key, fence, attempt, took, exc, persisted=rec is not None, permanent=permanent,
                       **details)

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections, leases and listener (see ``_fork``)."""
        self._lock = threading.Lock()
        self._source.after_fork()
        # The parent's leases are the parent's to renew; its threads are not here.
        self._heartbeat = Heartbeater(self._source, on_lost=self._lease_lost, explicit=lambda: self._explicit_rc,
                                      timeout=self._reply_s)
        self._listener_obj = None
        if self._cache is not None:
            self._cache.after_fork()

    def close(self) -> None:
        """Stop the heartbeat and listener threads and close Sentinel's own connections."""
        self._closed = True
        self._heartbeat.close()
        if self._listener_obj is not None:
            self._listener_obj.close()
        self._source.close()

    def __enter__(self) -> Sentinel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def owner(self) -> str:
        """This process's owner tag, ``host:pid:random`` (for diagnostics only)."""
        pid = os.getpid()
        if pid != self._owner_pid:
            with self._lock:
                if pid != self._owner_pid:
                    self._owner = f"{socket.gethostname()[:120]}:{pid}:{secrets.token_hex(4)}"
                    self._owner_pid = pid
        return self._owner

    def _to_json(self, value: Any) -> Tuple[str, Any]:
        """A function's result as the JSON text to record and as a replay will see it; raises if it cannot be."""
        text = self._dumps(value)
        if not isinstance(text, str):
            raise TypeError(f"the serializer returned {type(text).__name__}, not str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"it holds a lone surrogate ({text[exc.start:exc.end]!r}, typically os.fsdecode() of bytes that are "
                "not UTF-8), which PostgreSQL cannot store: decode such names with errors='replace' or "
                "errors='backslashreplace', or return the bytes as base64"
            ) from None
        return text, self._loads(decode_like_jsonb(text))

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        """On first use, refuse a schema this client cannot work with, and learn the sessions' isolation."""
        if self._schema_ok and self._isolation_known:
            return
        if not self._schema_ok:
            level = check_compatible(conn).isolation
            self._schema_ok = True
        else:  # check_schema=False: one question, once
            with wrap_exceptions():
                row = conn.execute("show transaction_isolation").fetchone()
            level = str(row[0]) if row else "read committed"
        self._isolation_seen(level)

    def _isolation_seen(self, level: str) -> None:
        """Run protocol calls in explicit read committed transactions when the sessions default to another level."""
        self._isolation_known = True
        self._explicit_rc = level != "read committed"
        if self._explicit_rc:
            logger.info("the sessions' default isolation is %s; protocol calls run in explicit read "
                        "committed transactions (alter the role's default_transaction_isolation to read committed "
                        "to save that)", level)

    # -- once --------------------------------------------------------------

    def _ttls(self, ttl_ms: Optional[int], hard_ttl_ms: Optional[int]) -> Tuple[int, int]:
        ttl = _check_ttl("ttl_ms", self.default_ttl_ms if ttl_ms is None else ttl_ms)
        if hard_ttl_ms is None:
            hard = self.default_hard_ttl_ms if ttl_ms is None and self.default_hard_ttl_ms else ttl
            hard = max(hard, ttl)
        else:
            hard = _check_ttl("hard_ttl_ms", hard_ttl_ms)
        if hard < ttl:
            raise InvalidTTL(f"hard_ttl_ms ({hard}) must be >= ttl_ms ({ttl})")
        return ttl, hard

    def _call(
        self, key: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: Optional[Mapping[str, Any]],
        ttl_ms: Optional[int], hard_ttl_ms: Optional[int], fingerprint: Union[str, bool, None],
        pass_context: bool, retain_ms: Optional[int], permanent: Tuple[Type[BaseException], ...],
    ) -> _Call:
        """Check every argument of once() before anything runs or is written."""
        key = _check_key(key)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        ttl, hard = self._ttls(ttl_ms, hard_ttl_ms)
        kw = dict(kwargs) if kwargs is not None else {}
        fp: Optional[str]
        if fingerprint is False:
            fp = None
        elif fingerprint is None or fingerprint is True:
            fp = auto_fingerprint(args, kw) if (self._fingerprints or fingerprint is True) else None
        elif isinstance(fingerprint, str) and 0 < len(fingerprint) <= 200:
            fp = fingerprint
        else:
            raise InvalidText("fingerprint must be a str of 1 to 200 characters, True, False or None")
        retain = self._retain_ms if retain_ms is None else retain_ms
        if retain is not None and (isinstance(retain, bool) or not isinstance(retain, int)
                                   or retain < 0 or retain > MAX_RETAIN_MS):
            raise InvalidTTL(f"retain_ms must be None or between 0 and {MAX_RETAIN_MS} ms, got {retain!r}")
        if not isinstance(permanent, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException)
                                                       for t in permanent):
            raise TypeError("permanent must be a tuple of exception classes")
        return _Call(key, fn, tuple(args), kw, ttl, hard, fp, pass_context, retain,
                     self._permanent + permanent)

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

        ``fingerprint``: by default (when the ``Sentinel`` has
        ``fingerprints=True``) a hash of the canonical JSON of the
        arguments (never of ``fn`` itself: a renamed function, or another
        callable asking, replays the result) is stored with the claim, and a
        later call with the same key and other arguments raises
        :class:`KeyMismatch`; give your own text to name the work, or
        ``False`` to opt out for this call. ``retain_ms`` (default the ``Sentinel``'s): the finished
        record may be purged that long afterwards (``purge_expired``).
        ``permanent``: exception classes recorded as permanent failures,
        replayed to later callers instead of re-run (added to the
        ``Sentinel``'s ``permanent_errors``). With ``pass_context`` the function
        is called as ``fn(ctx, *args, **kwargs)``.

        ``on_uncertain`` (default: the ``Sentinel``'s) is a probe called with an
        :class:`UncertainKey` when the key is uncertain. It asks the real system
        and answers :class:`Happened` (its response is recorded through
        ``reconcile_v1`` and replayed), :class:`DidNotHappen` (the key is
        released and the function runs now) or :class:`Unknown` (the result
        stays uncertain). The probe is recorded as the reconcile's actor; the
        role needs the operator grant.
        """
        if self._closed:
            raise SentinelError("this Sentinel is closed")
        call = self._call(key, fn, args, kwargs, ttl_ms, hard_ttl_ms, fingerprint, pass_context, retain_ms,
                          permanent)
        if self._outside_transaction is not None:
            self._outside_transaction(call.key)
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or wait_ms < 0 or wait_ms > MAX_TTL_MS:
            raise InvalidTTL(f"wait_ms must be an int between 0 and {MAX_TTL_MS}, got {wait_ms!r}")
        if self._cache is not None:
            hit = self._cache.get(self.namespace, call.key, call.fingerprint)
            if hit is not None:
                self._emit("replayed", self.namespace, call.key, hit[1], hit[2], cached=True)
                return Result(self.namespace, call.key, "completed", response=hit[0], replayed=True, fence=hit[1],
                              attempt=hit[2], cached=True)
        result = self._attempt(call)
        if result.execution_alive and wait_ms > 0:
            result = self._wait(call, result, wait_ms)
        probe = on_uncertain or self._on_uncertain
        if result.uncertain and probe is not None:
            result = self._probe(probe, result, call)
        return result

    def _wait(self, call: _Call, result: Result, wait_ms: int) -> Result:
        """Wait for another worker's outcome: NOTIFY wakes us, polling is the fallback.

        Until the LISTEN connection is ready (or when it cannot be, behind a
        transaction-pooling PgBouncer) the call polls every ``poll_interval_ms``;
        once it is ready, the key is watched (``watch_v1``) and checked again,
        and a notification wakes the call at the other worker's commit.
        """
        deadline = time.monotonic() + wait_ms / 1000.0
        listener = self._listener()
        event = listener.register(call.key) if listener is not None else None
        watch_id: Optional[int] = None
        try:
            while True:
                if watch_id is None and listener is not None and listener.ready.is_set():
                    watch_id = self._watch(call.key, max(int((deadline - time.monotonic()) * 1000), 1))
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
                pause = min(remaining, max(self._poll_s, 1.0) if listening else self._poll_s)
                if event is not None and listening:
                    event.wait(pause)
                elif listener is not None and not listener.ready.is_set():
                    listener.ready.wait(pause)  # LISTEN coming up: watch as soon as it is
                else:
                    time.sleep(pause)
        finally:
            if listener is not None and event is not None:
                listener.unregister(call.key, event)
            if watch_id is not None:
                try:
                    with self._source.connection() as conn, wrap_exceptions():
                        protocol_row(conn, "select sentinel.unwatch_v1(%s)", (watch_id,), explicit=self._explicit_rc,
                                     timeout=self._reply_s)
                except SentinelError as exc:  # the watcher expires by itself
                    logger.debug("unwatch failed: %s", exc)

    def _watch(self, key: str, wait_ms: int) -> Optional[int]:
        """Ask the database to NOTIFY this key's outcome (it notifies only watched keys)."""
        try:
            with self._source.connection() as conn, wrap_exceptions():
                row = protocol_row(conn, "select sentinel.watch_v1(%s, %s, %s)", (self.namespace, key, wait_ms),
                                   explicit=self._explicit_rc, timeout=self._reply_s)
                return int(row[0]) if row else None
        except (DatabaseUnavailable, SerializationConflict) as exc:
            logger.debug("watch_v1 failed (%s); polling instead", exc)
            return None

    def _listener(self) -> Optional[Listener]:
        if not self._listen:
            return None
        with self._lock:
            if self._listener_obj is None:
                self._listener_obj = Listener(self._source, self.namespace)
            return self._listener_obj

    def _probe(self, probe: Probe, result: Result, call: _Call) -> Result:
        """Ask ``probe`` about an uncertain key and apply its answer through reconcile_v1."""
        key = call.key
        record = self.inspect(key) or {}
        info = UncertainKey(self.namespace, key, result.fence or 0, result.attempt or 0, record)
        try:
            answer: ProbeAnswer = probe(info)
        except Exception as exc:
            logger.exception("probe %r failed for %s/%s", probe, self.namespace, key)
            answer = Unknown(f"the probe raised {type(exc).__name__}: {exc}")
        actor = probe_name(probe)
        try:
            if isinstance(answer, Happened):
                self.reconcile(key, action="completed", response=answer.response, actor=actor,
                               reason="probe: the effect happened")
            elif isinstance(answer, DidNotHappen):
                self.reconcile(key, action="release", actor=actor, reason=f"probe: {answer.reason}"[:1000])
            else:
                self._emit("uncertain", self.namespace, key, result.fence, result.attempt,
                           reason=getattr(answer, "reason", "unknown"), probe=actor)
                return result
        except ReconcileRefused:
            # Somebody resolved the key meanwhile: what it is now is the answer.
            pass
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
                                           explicit=self._explicit_rc, timeout=self._reply_s)
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
                time.sleep(pause)
            except SerializationConflict:
                # The acquire was aborted with nothing written (repeatable read or
                # serializable session): asking again is safe.
                pause = retry.after_conflict()
                if pause is None:
                    raise
                time.sleep(pause)
            except BaseException as exc:
                if claimed is not None and not begun:
                    self._release_unstarted(ns, key, claimed, call, exc)
                raise

    def _release_unstarted(self, ns: str, key: str, fence: int, call: _Call, exc: BaseException) -> None:
        """Give back a claim whose function never started: a retryable failure saying so, never uncertain."""
        log_extra = {"sentinel_namespace": ns, "sentinel_key": key, "sentinel_fence": fence}
        try:
            rec = self._record(None, _FAIL_SQL, (ns, key, fence, _not_started_document(exc), False, call.retain_ms),
                               time.monotonic() + 2.0, log_extra)
        except Exception as err:  # never hide the original exception
            rec = None
            logger.error("could not release %s/%s: %s", ns, key, err, extra=log_extra)
        self._not_started_reported(ns, key, fence, exc, rec, log_extra)

    def _not_started_reported(self, ns: str, key: str, fence: int, exc: BaseException,
                              rec: Optional[Tuple[Any, ...]], log_extra: Dict[str, Any]) -> None:
        """Report the release of a claim whose function never started (sync and async paths alike)."""
        if rec is not None and rec[0] == "recorded":
            logger.warning("%s/%s was released: %s arrived after the claim and before the function "
                           "started; the next caller runs it", ns, key, type(exc).__name__, extra=log_extra)
            self._emit("failed", ns, key, fence, None, None, exc, persisted=True, permanent=False, started=False)
        else:
            logger.error("%s/%s: the function never started, but its claim could not be released (%s); "
                         "it will read uncertain once its lease lapses", ns, key, rec[0] if rec else "unreachable",
                         extra=log_extra)

    def _observed(
        self, call: _Call, outcome: str, fence: int, state: str, attempt: int,
        response: Any, error: Any, hard_at: Optional[datetime],
    ) -> Result:
        ns, key = self.namespace, call.key
        if outcome == "completed":
            value = self._loads(response)
            if self._cache is not None:
                self._cache.put(ns, key, value, fence, attempt, call.fingerprint, known=False)
            self._emit("replayed", ns, key, fence, attempt)
            return Result(ns, key, state, response=value, replayed=True, fence=fence, attempt=attempt)
        if outcome == "failed":
            self._emit("replayed", ns, key, fence, attempt, failed=True)
            return Result(ns, key, state, replayed=True, error=error, fence=fence, attempt=attempt)
        if outcome == "alive":
            self._emit("alive", ns, key, fence, attempt)
            return Result(ns, key, state, execution_alive=True, fence=fence, attempt=attempt, hard_expires_at=hard_at)
        if outcome == "uncertain":
            self._emit("uncertain", ns, key, fence, attempt)
            return Result(ns, key, state, uncertain=True, fence=fence, attempt=attempt, hard_expires_at=hard_at)
        if outcome == "mismatch":
            raise KeyMismatch(
                f"key {ns}/{key} was first used with another fingerprint: a key reused for different work "
                "(pass fingerprint=False to opt out)",
                namespace=ns, key=key,
            )
        raise SentinelError(f"unexpected acquire outcome {outcome!r}")  # pragma: no cover

    def _execute(
        self, conn: Optional[psycopg.Connection[Any]], call: _Call, fence: int, attempt: int,
        claimed_at: datetime, hard_at: datetime, deadline: float, begun: List[bool],
    ) -> Result:
        ns, key = self.namespace, call.key
        lease = Lease(ns, key, fence, call.ttl, deadline)
        ctx = ExecutionContext(ns, key, fence, attempt, claimed_at, hard_at, lease)
        log_extra = {"sentinel_namespace": ns, "sentinel_key": key, "sentinel_fence": fence}
        self._heartbeat.register(lease)
        token = _current.set(ctx)
        started = time.perf_counter()
        try:
            begun.append(True)
            value = call.fn(ctx, *call.args, **call.kwargs) if call.pass_context else call.fn(*call.args, **call.kwargs)
        except Exception as exc:
            self._heartbeat.unregister(lease)
            took = time.perf_counter() - started
            permanent = isinstance(exc, call.permanent) if call.permanent else False
            try:
                rec = self._record(conn, _FAIL_SQL, (ns, key, fence, _error_document(exc), permanent,
                                                     call.retain_ms), deadline, log_extra)
            except DocumentTooLarge:  # the DBA's cap is below our document: a shorter one still records it
                rec = self._record(conn, _FAIL_SQL, (ns, key, fence, _error_document(exc, 200), permanent,
                                                     call.retain_ms), deadline, log_extra)
            self._failure_reported(ns, key, fence, attempt, took, exc, rec, permanent, log_extra)
            raise
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit, ...: the function may have had effects.
            self._heartbeat.unregister(lease)
            self._abandon(conn, ns, key, fence, f"interrupted by {type(exc).__name__}", log_extra, deadline=None)
            raise
        finally:
            _current.reset(token)
        self._heartbeat.unregister(lease)
        took = time.perf_counter() - started

        try:
            text, recorded_value = self._to_json(value)
        except Exception as exc:
            recorded = self._abandon(
                conn, ns, key, fence, f"result not serialisable: {type(exc).__name__}: {exc}"[:1000],
                log_extra, deadline=deadline,
            )
            raise ResultNotSerializable(
                f"{ns}/{key}: the function ran but its result ({type(value).__name__}) could not be "
                f"serialised to JSON ({exc}); the key is marked uncertain and will not run again until reconciled",
                value=value, recorded=recorded,
            ) from exc

        try:
            rec = self._record(conn, _COMPLETE_SQL, (ns, key, fence, text, call.retain_ms), deadline, log_extra)
        except (psycopg.DataError, DocumentTooLarge) as exc:
            # The database refused the JSON (a \u0000 escape in jsonb, a document over its cap).
            recorded = self._abandon(
                conn, ns, key, fence, f"result refused by the database: {exc}"[:1000], log_extra, deadline=deadline
            )
            raise ResultNotSerializable(
                f"{ns}/{key}: the function ran but PostgreSQL refused to store its result as jsonb ({exc}); "
                "the key is marked uncertain and will not run again until reconciled",
                value=value, recorded=recorded,
            ) from exc
        if rec is None:
            self._emit("completed", ns, key, fence, attempt, took, persisted=False)
            logger.error("%s/%s ran under fence %s but its response could not be recorded before the "
                         "hard deadline; other callers will see it uncertain", ns, key, fence, extra=log_extra)
            return Result(ns, key, "executing", response=recorded_value, fence=fence, attempt=attempt,
                          persisted=False, hard_expires_at=hard_at)
        if rec[0] == "stale":
            self._emit("fenced", ns, key, fence, attempt, took, state=rec[1])
            raise FencedOut(
                f"{ns}/{key}: the function ran under fence {fence}, but the key was reconciled meanwhile "
                f"(state now {rec[1]}); its response was not recorded",
                response=recorded_value, fence=fence, state=rec[1],
            )
        self._emit("completed", ns, key, fence, attempt, took, persisted=True)
        if self._cache is not None:
            self._cache.put(ns, key, recorded_value, fence, attempt, call.fingerprint, known=True)
        return Result(ns, key, "completed", response=recorded_value, fence=fence, attempt=attempt,
                      hard_expires_at=hard_at)

    def _record(
        self, conn: Optional[psycopg.Connection[Any]], sql: str, params: Tuple[Any, ...], deadline: float,
        log_extra: Dict[str, Any],
    ) -> Optional[Tuple[Any, ...]]:
        """Run a recording call, retrying on connection loss, a lock timeout or a conflict until ``deadline``.

        Returns the function's row, or None if the database stayed out of reach
        until the deadline. Other errors propagate.
        """
        delay = 0.05
        current: Optional[psycopg.Connection[Any]] = conn
        while True:
            try:
                if current is not None and not current.closed and not current.broken:
                    with wrap_exceptions():
                        row = protocol_row(current, sql, params, explicit=self._explicit_rc, timeout=self._reply_s)
                else:
                    with self._source.connection() as fresh, wrap_exceptions():
                        row = protocol_row(fresh, sql, params, explicit=self._explicit_rc, timeout=self._reply_s)
                return tuple(row) if row is not None else None
            except (DatabaseUnavailable, KeyLocked, SerializationConflict) as exc:
                if isinstance(exc, DatabaseUnavailable):
                    current = None  # a lock timeout or a conflict leaves the connection usable
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                held = _throttle(("record", sql, *params[:3]))
                if held is not None:
                    logger.warning("recording failed (%s); retrying for up to %.1fs%s", one_line(exc), remaining,
                                   held_back(held), extra=log_extra)
                time.sleep(min(delay * (0.5 + random.random()), remaining))
                delay = min(delay * 2, 1.0)

    def _abandon(
        self, conn: Optional[psycopg.Connection[Any]], ns: str, key: str, fence: int, reason: str,
        log_extra: Dict[str, Any], *, deadline: Optional[float],
    ) -> bool:
        """Mark our execution uncertain; True if the database recorded it."""
        try:
            rec = self._record(conn, _ABANDON_SQL, (ns, key, fence, reason),
                               deadline if deadline is not None else time.monotonic(), log_extra)
        except Exception as exc:  # never hide the original exception
            logger.error("could not mark %s/%s uncertain: %s", ns, key, exc, extra=log_extra)
            return False
        if rec is None:
            logger.error("could not mark %s/%s uncertain (database unavailable); it will read "
                         "uncertain once its lease lapses", ns, key, extra=log_extra)
            return False
        if rec[0] == "uncertain":
            self._emit("uncertain", ns, key, fence, reason=reason)
        else:
            logger.warning("%s/%s marked %s: %s", ns, key, rec[0], reason, extra=log_extra)
        return rec[0] in ("uncertain", "released")

    # -- operator calls ----------------------------------------------------

    def inspect(self, key: str) -> Optional[Dict[str, Any]]:
        """The execution record of ``key`` in this namespace, or None."""
        key = _check_key(key)
        with self._source.connection() as conn, wrap_exceptions():
            self._check_schema(conn)
            with bounded(conn, self._reply_s):
                cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (self.namespace, key))
            row = cur.fetchone()
            if row is None:
                return None
            names = [d.name for d in (cur.description or [])]
            return dict(zip(names, row))

    def list(self, state: Optional[str] = None, *, older_than_ms: Optional[int] = None,
             max_rows: int = 100, bodies: bool = False) -> List[Dict[str, Any]]:
        """Execution records of this namespace, oldest change first, optionally by effective state.

        ``response`` and ``error`` are None unless ``bodies=True`` (a record's
        full body is :meth:`inspect`'s).
        """
        with self._source.connection() as conn, wrap_exceptions(), bounded(conn, self._reply_s):
            cur = conn.execute("select * from sentinel.list_v2(%s, %s, %s, %s, %s)",
                               (self.namespace, state, older_than_ms, max_rows, bool(bodies)))
            names = [d.name for d in (cur.description or [])]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def reconcile(self, key: str, *, action: str, actor: str, reason: str, response: Any = None,
                  error: Any = None, force: bool = False) -> Dict[str, Any]:
        """Resolve a key as ``completed`` (with ``response``), ``failed`` or ``release`` it.

        Always takes a new fence, so a late worker is fenced out; records
        ``actor`` and ``reason``. Refuses keys that are not uncertain, failed or
        a lapsed claim unless ``force``.
        """
        key = _check_key(key)
        resp = None if response is None and action != "completed" else self._dumps(response)
        err = None if error is None else self._dumps(error)
        with self._source.connection() as conn, wrap_exceptions(), bounded(conn, self._reply_s):
            cur = conn.execute(
                "select * from sentinel.reconcile_v1(%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)",
                (self.namespace, key, action, actor, reason, resp, err, force),
            )
            names = [d.name for d in (cur.description or [])]
            row = cur.fetchone()
            assert row is not None
            out = dict(zip(names, row))
        self._emit("reconciled", self.namespace, key, out.get("fence"), action=action, actor=actor,
                   reason=reason, previous_state=out.get("previous_state"))
        return out

    def events(self, key: str, *, max_rows: int = 1000) -> List[Dict[str, Any]]:
        """The event log of ``key`` (newest ``max_rows``, oldest first): one row per transition."""
        key = _check_key(key)
        with self._source.connection() as conn, wrap_exceptions(), bounded(conn, self._reply_s):
            cur = conn.execute("select * from sentinel.events_v1(%s, %s, %s)", (self.namespace, key, max_rows))
            names = [d.name for d in (cur.description or [])]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def stats(self) -> Dict[str, Any]:
        """Records of this namespace by effective state, the oldest uncertain, executions per minute."""
        with self._source.connection() as conn, wrap_exceptions(), bounded(conn, self._reply_s):
            cur = conn.execute("select * from sentinel.stats_v1(%s)", (self.namespace,))
            names = [d.name for d in (cur.description or [])]
            row = cur.fetchone()
            assert row is not None
            return dict(zip(names, row))

    def purge_events(self, older_than_ms: int, *, batch_size: int = 10000) -> int:
        """Delete events (of every namespace) older than ``older_than_ms``, in batches; returns the count."""
        total = 0
        with self._source.connection() as conn, wrap_exceptions():
            while True:
                row = protocol_row(conn, "select sentinel.purge_events_v1(%s, %s)", (older_than_ms, batch_size),
                                   explicit=self._explicit_rc)
                n = int(row[0]) if row else 0
                total += n
                if n < batch_size:
                    return total

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
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = self.once(key(*args, **kwargs), fn, args, kwargs, ttl_ms=ttl_ms, hard_ttl_ms=hard_ttl_ms,
                                   wait_ms=wait_ms, fingerprint=fingerprint, retain_ms=retain_ms,
                                   permanent=permanent)
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
        with protocol_errors(user_raised), conn.transaction():
            self._check_schema(conn)
            row = conn.execute(_ACQUIRE_SQL, (ns, call.key, self.owner, call.ttl, call.hard, call.fingerprint,
                                              None)).fetchone()
            assert row is not None
            outcome, fence, state, attempt, response, error = row[:6]
            tx = Transaction(self, conn, call, outcome, fence, state, attempt,
                             self._loads(response) if outcome == "completed" else None, error)
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

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Delete this namespace's finished records whose ``retain_ms`` has passed, in batches."""
        total = 0
        with self._source.connection() as conn, wrap_exceptions():
            while True:
                row = conn.execute("select sentinel.purge_expired_v1(%s, %s)",
                                   (self.namespace, batch_size)).fetchone()
                n = int(row[0]) if row else 0
                total += n
                if n < batch_size:
                    return total

    def purge(self, older_than_ms: int, *, batch_size: int = 1000) -> int:
        """Delete completed and failed records finished ``older_than_ms`` ago, in batches; returns the count."""
        total = 0
        with self._source.connection() as conn, wrap_exceptions():
            while True:
                row = conn.execute("select sentinel.purge_v1(%s, %s, %s)",
                                   (self.namespace, older_than_ms, batch_size)).fetchone()
                n = int(row[0]) if row else 0
                total += n
                if n < batch_size:
                    return total


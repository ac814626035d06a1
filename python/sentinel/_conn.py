"""Where connections come from, and the one place driver errors are translated."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from ._watchdog import bounded
from .errors import (
    DatabaseUnavailable,
    ForkedPool,
    KeyLocked,
    LoginRefused,
    PermissionDenied,
    ReconcileRefused,
    SchemaError,
    SentinelError,
    SerializationConflict,
    TransactionInProgress,
    from_sqlstate,
)

logger = logging.getLogger("sentinel")

GetConn = Callable[[], "psycopg.Connection[Any]"]

# SQLSTATEs that mean the session is gone: connection exceptions (class 08) and
# operator intervention (admin shutdown, crash shutdown, cannot connect now).
_GONE = ("57P01", "57P02", "57P03")


# The server's own words when it refuses a login (libpq gives no SQLSTATE for a
# failed connection attempt): wrong password, unknown role or database, pg_hba.
_LOGIN_REFUSED = re.compile(
    r"FATAL:\s+(password authentication failed|\w+ authentication failed|role \".*\" does not exist"
    r"|database \".*\" does not exist|no pg_hba\.conf entry)"
    # libpq's own words when the server asks for a password and the DSN has none
    r"|fe_sendauth: no password supplied"
)


# TCP settings of the connections Sentinel opens itself, unless the conninfo
# names them: a peer that vanished (a crashed host, a dropped NAT entry, a
# half-open connection) fails the connection within about 10 s instead of
# blocking a call, or the heartbeat, for the kernel's default of minutes to
# hours. libpq ignores them for Unix sockets.
TCP_DEFAULTS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout": 10000}


def tcp_options(conninfo: str) -> Dict[str, Any]:
    """The TCP settings of :data:`TCP_DEFAULTS` that ``conninfo`` does not set itself."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return {}  # let the connection attempt report the bad conninfo
    return {k: v for k, v in TCP_DEFAULTS.items() if k not in given}


def login_refused(exc: BaseException) -> Optional[str]:
    """The server's refusal when ``exc`` is a refused login (not an outage), else None."""
    if not isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", None) is not None:
        return None
    m = _LOGIN_REFUSED.search(str(exc))
    return str(exc).strip()[m.start():].splitlines()[0] if m else None


def is_connection_loss(exc: BaseException) -> bool:
    """Whether a driver error means the database or the session went away."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - psycopg-pool is a dependency
        PoolTimeout = ()  # type: ignore[assignment,misc]
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return False
    if login_refused(exc) is not None:
        return False
    code = getattr(exc, "sqlstate", None)
    return code is None or code.startswith("08") or code in _GONE


def _permission_denied(exc: psycopg.Error) -> PermissionDenied:
    """The PermissionDenied for a 42501, saying which grant gives the right that is missing."""
    text = (exc.diag.message_primary or str(exc)).strip()
    if text.startswith("sentinel: role "):
        # A right missing in a namespace: the database names the role, the namespace and the grant.
        hint = (exc.diag.message_hint or "").strip()
        return PermissionDenied(f"{text[len('sentinel: '):]}; {hint}" if hint else text)
    match = re.search(r"\bfunction (\w+)", text)
    if match and match.group(1).startswith(("reconcile", "purge")):
        # An operator's function: an application role lacks it by design.
        return PermissionDenied(
            f"{text}: this is an operator's function; the schema owner grants it with "
            "`sentinel grant <role> --namespace <ns> --operator` (reconcile) or `--purge`"
        )
    if (match and match.group(1).endswith(("_v1", "_v2", "_v3"))) or "schema sentinel" in text:
        return PermissionDenied(
            f"{text}: the schema owner grants what an application needs with "
            "`sentinel grant <role> --namespace <ns>` (or `select sentinel.grant_v2('<role>', '<ns>')`)"
        )
    return PermissionDenied(
        f"{text}: only the schema owner (or a superuser) may do this; roles given `sentinel grant` "
        "call the functions and touch no table"
    )


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Translate psycopg errors into Sentinel's exceptions; let others pass."""
    try:
        yield
    except SentinelError:
        raise
    except psycopg.Error as exc:
        code = getattr(exc, "sqlstate", None)
        mapped = from_sqlstate(code)
        if mapped is not None:
            diag = exc.diag
            message = diag.message_primary or str(exc)
            if mapped is ReconcileRefused:  # the database speaks SQL; this caller speaks Python
                message = message.replace("pass force => true", "pass force=True")
            raise mapped(message) from exc
        if code in ("40001", "40P01"):
            raise SerializationConflict(
                "the server aborted the call for a concurrent update (nothing was written); this session runs at "
                "repeatable read or serializable, and the protocol needs read committed: "
                "`alter role <role> set default_transaction_isolation = 'read committed'`: "
                f"{(exc.diag.message_primary or str(exc)).strip()}"
            ) from exc
        if code == "55P03":
            raise KeyLocked(
                "a row lock held by another session's open transaction was not released within the protocol "
                "function's lock_timeout; commit or roll back that transaction (pg_stat_activity shows it as "
                f"'idle in transaction'): {(exc.diag.message_primary or str(exc)).strip()}"
            ) from exc
        if code == "42501":
            raise _permission_denied(exc) from exc
        if code in ("42883", "3F000", "42P01"):
            raise SchemaError(
                "the Sentinel schema is not installed in this database "
                "(run sentinel.init_db(conn) or `make demo` to see how): " + str(exc).strip()
            ) from exc
        refusal = login_refused(exc)
        if refusal is not None:
            raise LoginRefused(
                f"the server refused the login ({refusal}): check the user, password and database name in the "
                "DSN, or the server's pg_hba.conf"
            ) from exc
        if is_connection_loss(exc):
            raise DatabaseUnavailable(f"database unavailable: {str(exc).strip() or type(exc).__name__}") from exc
        raise
    except Exception as exc:
        if is_connection_loss(exc):
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        raise


# The protocol needs read committed: a claim racing another under repeatable
# read or serializable is aborted by the server (40001), and under serializable
# even a heartbeat racing readers is. A client learns its sessions' isolation
# (the role's or database's default_transaction_isolation) with its schema
# check, in the same round trip, and passes ``explicit`` when it is another.
_BEGIN_RC = "begin isolation level read committed"


def protocol_row(conn: psycopg.Connection[Any], query: Any, params: Any = None, *,
                 explicit: bool = False, timeout: Optional[float] = None) -> Optional[Tuple[Any, ...]]:
    """Run one protocol statement of an autocommit connection at read committed; its first row.

    On a session whose default is read committed (the usual case) it is the
    statement alone, one round trip. With ``explicit`` it is wrapped in
    ``begin isolation level read committed`` ... ``commit``, pipelined in one
    round trip where libpq supports it. ``timeout`` bounds the wait for the
    reply (see ``_watchdog``). psycopg errors pass as they are.
    """
    with bounded(conn, timeout):
        return _protocol_row(conn, query, params, explicit)


def _protocol_row(conn: psycopg.Connection[Any], query: Any, params: Any, explicit: bool) -> Optional[Tuple[Any, ...]]:
    if not explicit:
        row = conn.execute(query, params).fetchone()
        return None if row is None else tuple(row)
    try:
        if psycopg.Pipeline.is_supported():
            with conn.pipeline():
                conn.execute(_BEGIN_RC)
                cur = conn.execute(query, params)
                conn.execute("commit")
        else:  # pragma: no cover - libpq < 14
            conn.execute(_BEGIN_RC)
            cur = conn.execute(query, params)
            conn.execute("commit")
        row = cur.fetchone()
        return None if row is None else tuple(row)
    except BaseException:
        if not conn.closed and not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                conn.execute("rollback")
        raise


@contextlib.contextmanager
def protocol_errors(user_raised: List[BaseException]) -> Iterator[None]:
    """``wrap_exceptions`` for a block that also runs the caller's own code.

    An exception the caller's code raised (recorded in ``user_raised``) is
    the caller's and passes unchanged: a typo in their SQL is not a missing
    Sentinel schema. Everything else (the protocol calls, the commit) is
    translated as usual.
    """
    try:
        yield
    except BaseException as exc:
        if any(exc is mine for mine in user_raised):
            raise
        with wrap_exceptions():
            raise


@contextlib.contextmanager
def autocommit(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """Use ``conn`` in autocommit mode, so each protocol call commits by itself.

    Refuses a connection inside an open transaction: a claim made there would
    not be visible to anyone until the caller commits.
    """
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        if status in (pq.TransactionStatus.UNKNOWN,) or conn.closed:
            raise DatabaseUnavailable("database unavailable: the connection is closed or broken")
        raise TransactionInProgress(
            "once() needs a connection outside a transaction: the claim must be committed "
            f"before the function runs (transaction status: {status.name})"
        )
    previous = conn.autocommit
    if not previous:
        conn.autocommit = True
    try:
        yield conn
    finally:
        if not previous and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            conn.autocommit = previous


class Source:
    """A supply of connections for protocol calls and for the heartbeat."""

    #: Keep the call's connection while the user's function runs (True when
    #: getting another one costs a new connection), or give it back (a pool).
    hold_during_fn = True

    def connection(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        """A connection for one call, in autocommit mode, given back afterwards."""
        raise NotImplementedError

    def dedicated(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        """A connection of the heartbeat's own, never competing with calls for a pool slot."""
        return self.connection()

    def close(self) -> None:
        """Release what this source holds."""

    def after_fork(self) -> None:
        """In a forked child: forget, without closing, what belongs to the parent."""


class GetConnSource(Source):
    """Calls the user's ``get_conn()`` for every call and closes what it returns."""

    def __init__(self, get_conn: GetConn) -> None:
        if not callable(get_conn):
            raise TypeError("get_conn must be a callable returning a psycopg connection")
        self._get_conn = get_conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with wrap_exceptions():
            conn = self._get_conn()
        if not isinstance(conn, psycopg.Connection):
            raise TypeError(f"get_conn() must return a psycopg.Connection, got {type(conn).__name__}")
        try:
            with autocommit(conn):
                yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()


class PoolSource(Source):
    """Borrows connections from a ``psycopg_pool.ConnectionPool``.

    A call gives its connection back while the user's function runs, and the
    heartbeat opens its own connection with the pool's settings: a pool full of
    running executions must not starve the heartbeat that keeps them alive.
    """

    hold_during_fn = False

    def __init__(self, pool: Any, *, owned: bool = False) -> None:
        self._pool = pool
        self._owned = owned
        self._forked_from: Optional[int] = None

    def after_fork(self) -> None:
        # psycopg_pool knows nothing of fork: its idle connections are the
        # parent's sockets and its worker threads stayed in the parent.
        self._forked_from = os.getppid()

    def _check_process(self) -> None:
        if self._forked_from is not None:
            raise ForkedPool(
                f"this Sentinel's connection pool was opened in process {self._forked_from} before it forked "
                f"process {os.getpid()}; the pool's connections belong to the parent. Create the pool and the "
                "Sentinel in the child (for example in gunicorn's post_fork hook), or give Sentinel conninfo= "
                "(its own connections are reopened after a fork)"
            )

    @contextlib.contextmanager
    def dedicated(self) -> Iterator[psycopg.Connection[Any]]:
        self._check_process()
        conninfo = self._pool.conninfo
        conninfo = conninfo() if callable(conninfo) else conninfo  # psycopg_pool 3.3 accepts callables
        kwargs = getattr(self._pool, "kwargs", None) or {}
        kwargs = dict(kwargs() if callable(kwargs) else kwargs)
        kwargs["autocommit"] = True
        for name, value in tcp_options(conninfo or "").items():
            kwargs.setdefault(name, value)
        connection_class = getattr(self._pool, "connection_class", None) or psycopg.Connection
        with wrap_exceptions():
            conn = connection_class.connect(conninfo, **kwargs)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        self._check_process()
        with wrap_exceptions(), self._pool.connection() as conn:
            with autocommit(conn):
                yield conn

    def close(self) -> None:
        if self._owned and self._forked_from is None:
            self._pool.close()


class ConninfoSource(Source):
    """Sentinel's own connections to ``conninfo``: a small LIFO of idle autocommit connections.

    A call takes an idle connection (or opens one), and gives it back after;
    at most ``max_idle`` are kept. Nothing waits for a free slot: each
    concurrent call has its own connection. A call gives its connection back
    while the user's function runs; the heartbeat and the listener have
    dedicated connections.
    """

    hold_during_fn = False

    def __init__(self, conninfo: str, *, max_idle: int = 10, connect_timeout: float = 10.0,
                 prepared_statements: bool = False) -> None:
        self._conninfo = conninfo
        # Server-side prepared statements break behind a transaction-pooling
        # PgBouncer (before 1.21); the protocol functions cache their own plans.
        self._prepare_threshold: Optional[int] = 5 if prepared_statements else None
        self._max_idle = max(0, max_idle)
        self._timeout = max(1, int(round(connect_timeout)))
        self._idle: List[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._tcp = tcp_options(conninfo)

    def _connect(self) -> psycopg.Connection[Any]:
        with wrap_exceptions():
            return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=self._timeout,
                                   prepare_threshold=self._prepare_threshold, **self._tcp)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn: Optional[psycopg.Connection[Any]] = None
        with self._lock:
            while self._idle:
                candidate = self._idle.pop()
                if _healthy(candidate):
                    conn = candidate
                    break
                with contextlib.suppress(Exception):
                    candidate.close()
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            kept = False
            if (not self._closed and not conn.closed and not conn.broken
                    and conn.info.transaction_status == pq.TransactionStatus.IDLE):
                with self._lock:
                    if len(self._idle) < self._max_idle:
                        self._idle.append(conn)
                        kept = True
            if not kept:
                with contextlib.suppress(Exception):
                    conn.close()

    @contextlib.contextmanager
    def dedicated(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._connect()
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def after_fork(self) -> None:
        # The idle connections are the parent's sockets: dropped, never closed
        # (closing would end the parent's sessions). The lock may have been
        # held by a thread that does not exist here.
        self._idle = []
        self._lock = threading.Lock()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def conninfo_source(conninfo: str, *, max_size: int = 10, timeout: float = 10.0,
                    prepared_statements: bool = False) -> ConninfoSource:
    """Sentinel's own connections to ``conninfo`` (see :class:`ConninfoSource`).

    ``timeout``: libpq's connect timeout, in seconds (at least 1).
    """
    return ConninfoSource(conninfo, max_idle=max_size, connect_timeout=timeout,
                          prepared_statements=prepared_statements)


def _healthy(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection that the server has not closed meanwhile.

    A server restart or a terminated backend makes the socket of an idle
    connection readable (an error message, or end of file): such a connection
    is dropped here, without a round trip, instead of failing the next call.
    """
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable

"""Sentinel's exceptions.

Every exception Sentinel raises derives from :class:`SentinelError`. The SQL
functions raise errors of the SQLSTATE class ``SN``; each such code maps to one
class here (see :func:`from_sqlstate`), so a Python caller and a psql user read
the same condition. Checks that the driver makes before calling the database
raise the same classes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Type

__all__ = [
    "SentinelError",
    "InvalidArgument",
    "InvalidKey",
    "InvalidNamespace",
    "InvalidTTL",
    "InvalidText",
    "InvalidFence",
    "InvalidOption",
    "ExecutionNotFound",
    "ReconcileRefused",
    "InvalidResponse",
    "NotBegun",
    "UnknownRole",
    "AppendOnly",
    "DatabaseUnavailable",
    "DocumentTooLarge",
    "SerializationConflict",
    "ForkedPool",
    "KeyLocked",
    "PermissionDenied",
    "SchemaError",
    "TransactionInProgress",
    "ClientClosed",
    "KeyMismatch",
    "ResultNotSerializable",
    "ExecutionInProgress",
    "OutcomeUncertain",
    "PermanentFailure",
    "FencedOut",
    "RecordConflict",
    "TooManyWatchers",
    "from_sqlstate",
]

_BY_SQLSTATE: Dict[str, Type[SentinelError]] = {}


class SentinelError(Exception):
    """Base class of every error raised by Sentinel."""

    #: The SQLSTATE the SQL functions raise for this condition, if any.
    sqlstate: ClassVar[Optional[str]] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("sqlstate")
        if code is not None:
            if code in _BY_SQLSTATE:
                raise TypeError(f"SQLSTATE {code} is already mapped to {_BY_SQLSTATE[code].__name__}")
            _BY_SQLSTATE[code] = cls


class InvalidArgument(SentinelError, ValueError):
    """An argument is outside what Sentinel accepts; nothing was run or written."""


# -- generated from sql/protocol.json by tools/gen_protocol.py: do not edit by hand --


class InvalidKey(InvalidArgument):
    """Empty key, key with a NUL character, or key over 1024 UTF-8 bytes (SQLSTATE SN001)."""

    sqlstate = "SN001"


class InvalidNamespace(InvalidArgument):
    """Namespace outside ``^[a-z0-9][a-z0-9_.-]{0,62}$`` (SQLSTATE SN002)."""

    sqlstate = "SN002"


class InvalidTTL(InvalidArgument):
    """A TTL or age out of range, or ``hard_ttl_ms < ttl_ms`` (SQLSTATE SN003)."""

    sqlstate = "SN003"


class InvalidText(InvalidArgument):
    """An owner, actor, reason or fingerprint that is empty or too long (SQLSTATE SN004)."""

    sqlstate = "SN004"


class InvalidFence(InvalidArgument):
    """A NULL or non-positive fence (SQLSTATE SN005)."""

    sqlstate = "SN005"


class InvalidOption(InvalidArgument):
    """An unknown state, reconcile action, or a row or batch limit out of range (SQLSTATE SN006)."""

    sqlstate = "SN006"


class ExecutionNotFound(SentinelError, LookupError):
    """No execution record for the key (SQLSTATE SN007)."""

    sqlstate = "SN007"


class ReconcileRefused(SentinelError):
    """The key is not uncertain, failed or a lapsed claim, and force was not given (SQLSTATE SN008)."""

    sqlstate = "SN008"


class InvalidResponse(InvalidArgument):
    """A response or error given as SQL NULL (SQLSTATE SN009)."""

    sqlstate = "SN009"


class NotBegun(SentinelError):
    """complete was called for a claim that was never begun (SQLSTATE SN011)."""

    sqlstate = "SN011"


class UnknownRole(InvalidArgument):
    """``grant_v1`` was given a role that does not exist (SQLSTATE SN012)."""

    sqlstate = "SN012"


class AppendOnly(SentinelError):
    """An UPDATE, DELETE or TRUNCATE of the event log was refused (SQLSTATE SN013)."""

    sqlstate = "SN013"


class DocumentTooLarge(InvalidArgument):
    """A response or error document over its cap in ``sentinel.limits`` (SQLSTATE SN015); nothing was recorded.

    The caps (``max_response_bytes``, default 1 MiB; ``max_error_bytes``,
    default 64 KiB) are the DBA's to change. ``once()`` raises
    :class:`ResultNotSerializable` for a result over the cap (the key is
    marked uncertain: the function ran) and stores a shortened error document
    for an exception.
    """

    sqlstate = "SN015"


class TooManyWatchers(SentinelError):
    """The role already holds ``max_watchers_per_role`` live watchers (SQLSTATE SN016): a waiter polls instead."""

    sqlstate = "SN016"


class DirectWriteRefused(SentinelError):
    """An INSERT or UPDATE of ``sentinel.executions`` outside the functions (SQLSTATE SN017).

    Only the Sentinel functions write the table, each change with its event;
    nothing was written.
    """

    sqlstate = "SN017"


# -- end of the generated part --


class PermissionDenied(SentinelError, PermissionError):
    """The database role may not call a Sentinel function (SQLSTATE 42501).

    The schema owner gives an application role what it needs with
    ``select sentinel.grant_v1('role')`` or ``sentinel grant ROLE``.
    """


class DatabaseUnavailable(SentinelError, ConnectionError):
    """The database could not be reached, or the connection broke during a call."""


class LoginRefused(SentinelError):
    """The server answered but refused the login: wrong password, unknown role or database, no pg_hba.conf entry.

    Not an outage, so it is never retried: fix the user, password or database
    name in the DSN (or the server's pg_hba.conf).
    """


class KeyLocked(SentinelError):
    """A protocol call waited its bound for a row lock held by another session's open transaction.

    Each protocol function carries a ``lock_timeout`` (5 s; 100 ms for a
    heartbeat), so no call waits without limit behind, say, an operator's
    ``begin; select sentinel.acquire_v1(...)`` left open in psql. Nothing was
    changed; commit or roll back that transaction (``pg_stat_activity`` shows
    it as ``idle in transaction``). ``once()`` raises it for the acquire only;
    recordings are retried until the hard deadline.
    """


class SerializationConflict(SentinelError):
    """The server aborted a protocol call for a concurrent update (SQLSTATE 40001 or 40P01); nothing was written.

    It happens when the session's isolation is repeatable read or serializable
    (the role's or database's ``default_transaction_isolation``). ``once()``
    retries such a call and raises this only if it keeps conflicting; set the
    role's default back to read committed.
    """


class ForkedPool(SentinelError):
    """A ``Sentinel`` built on a connection pool is used in a process forked after the pool was opened.

    A pool's idle connections are its parent's sockets and its worker threads
    stayed in the parent, so the child cannot use it safely. Create the pool
    and the ``Sentinel`` in the child (gunicorn's ``post_fork`` hook, a
    Celery ``worker_process_init`` handler), or give ``Sentinel`` a
    ``conninfo=``: its own connections are reopened after a fork.
    """


class SchemaError(SentinelError):
    """The Sentinel schema is missing, older than this client needs, or differs from its files."""


class ClientClosed(SentinelError, RuntimeError):
    """The client was closed: it claims nothing more (a claim whose function can never run reads uncertain)."""


class TransactionInProgress(SentinelError):
    """``once()`` was given a connection inside an open transaction.

    The claim must commit before the function runs, so Sentinel will not use a
    connection whose transaction the caller still holds open.
    """


class KeyMismatch(SentinelError):
    """The key was first used with another fingerprint: a key reused for different work."""

    def __init__(self, message: str, *, namespace: str, key: str) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.key = key


class _ResultError(SentinelError):
    def __init__(self, message: str, *, result: Any) -> None:
        super().__init__(message)
        #: the :class:`sentinel.Result` of the call
        self.result = result


class ExecutionInProgress(_ResultError):
    """Raised by ``@idempotent`` functions: another worker is running the key now."""


class OutcomeUncertain(_ResultError):
    """Raised by ``@idempotent`` functions: the key's outcome is unknown until reconciled."""


class PermanentFailure(_ResultError):
    """Raised by ``@idempotent`` functions: a failure recorded as permanent is replayed."""


class ResultNotSerializable(SentinelError, TypeError):
    """The function ran but its return value could not be serialised.

    The key is marked uncertain (the function had its effects; its response
    could not be stored) and is never run again on its own; an operator
    reconciles it. ``value`` holds the value the function returned.
    """

    def __init__(self, message: str, *, value: Any, recorded: bool) -> None:
        super().__init__(message)
        self.value = value
        self.recorded = recorded


class FencedOut(SentinelError):
    """The function ran, but its fence was no longer current when its outcome was recorded.

    An operator reconciled the key (taking a new fence) while the function was
    running; the database kept the operator's decision. ``response`` holds the
    value the function returned, ``fence`` the fence it ran under.
    """

    def __init__(self, message: str, *, response: Any, fence: int, state: Optional[str]) -> None:
        super().__init__(message)
        self.response = response
        self.fence = fence
        self.state = state


class RecordConflict(SentinelError):
    """The function ran, but its fence already holds another recorded outcome, which stands.

    ``complete_v3``/``fail_v3`` answered ``conflict``: the record under this
    fence was written with a different response or error than the one this
    call reports. Only the holder of the claim's token can record under it, so
    this means the record was written without the token (a role that still
    has the legacy ``complete_v1``/``complete_v2``) or a bug. Every replay
    serves the stored outcome; ``response`` holds what the function returned.
    Inspect the key's events and reconcile it if the stored outcome is wrong.
    """

    def __init__(self, message: str, *, response: Any, fence: int, state: Optional[str]) -> None:
        super().__init__(message)
        self.response = response
        self.fence = fence
        self.state = state


def from_sqlstate(sqlstate: Optional[str]) -> Optional[Type[SentinelError]]:
    """Return the class mapped to a SQLSTATE of class SN, or None."""
    if sqlstate is None:
        return None
    return _BY_SQLSTATE.get(sqlstate)

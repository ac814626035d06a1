"""Sentinel: run work that is not safe to retry at most once per key, coordinated by PostgreSQL.

The protocol lives in the database as versioned SQL functions
(``sentinel.acquire_v1``, ``sentinel.complete_v1``, ...); this package installs
them (:func:`init_db`), calls them, runs your function and keeps its lease
alive::

    from sentinel import Sentinel, init_db

    sentinel = Sentinel(conninfo="postgresql://...", namespace="payments")
    result = sentinel.once("payment-order-789", charge, kwargs={"amount": 9900})
"""

from __future__ import annotations

from ._client import Sentinel, Transaction
from ._client_async import AsyncSentinel, AsyncTransaction
from ._events import EVENT_KINDS, DidNotHappen, Event, Happened, Observer, Probe, ProbeAnswer, UncertainKey, Unknown
from ._io_async import AsyncExecutionContext
from ._ops import Operations
from ._ops_async import AsyncOperations
from ._results import ExecutionContext, LeaseLost, Result, current_execution, unwrap
from ._rows import EventRow, ExecutionRecord, Reconciled, Stats
from ._schema import SchemaStatus, check_compatible, init_db, migrations, required_version, sql_dir, status
from .errors import (
    AppendOnly,
    ClientClosed,
    DatabaseUnavailable,
    DocumentTooLarge,
    ExecutionInProgress,
    ExecutionNotFound,
    FencedOut,
    ForkedPool,
    InvalidArgument,
    InvalidFence,
    InvalidKey,
    InvalidNamespace,
    InvalidOption,
    InvalidResponse,
    InvalidText,
    InvalidTTL,
    KeyLocked,
    KeyMismatch,
    LoginRefused,
    NotBegun,
    OutcomeUncertain,
    PermanentFailure,
    PermissionDenied,
    ReconcileRefused,
    RecordConflict,
    ResultNotSerializable,
    SchemaError,
    SentinelError,
    SerializationConflict,
    TooManyWatchers,
    TransactionInProgress,
    UnknownRole,
)

__version__ = "0.4.0"

__all__ = [
    "Sentinel",
    "AsyncSentinel",
    "Operations",
    "AsyncOperations",
    "ExecutionRecord",
    "EventRow",
    "Stats",
    "Reconciled",
    "AsyncExecutionContext",
    "AsyncTransaction",
    "Result",
    "ExecutionContext",
    "LeaseLost",
    "current_execution",
    "Transaction",
    "unwrap",
    "ExecutionInProgress",
    "OutcomeUncertain",
    "PermanentFailure",
    "Event",
    "EVENT_KINDS",
    "Observer",
    "Probe",
    "ProbeAnswer",
    "UncertainKey",
    "Happened",
    "DidNotHappen",
    "Unknown",
    "init_db",
    "status",
    "check_compatible",
    "SchemaStatus",
    "migrations",
    "required_version",
    "sql_dir",
    "SentinelError",
    "InvalidArgument",
    "InvalidKey",
    "InvalidNamespace",
    "InvalidTTL",
    "InvalidText",
    "InvalidFence",
    "InvalidOption",
    "InvalidResponse",
    "ExecutionNotFound",
    "ReconcileRefused",
    "NotBegun",
    "DatabaseUnavailable",
    "PermissionDenied",
    "SchemaError",
    "SerializationConflict",
    "TransactionInProgress",
    "ClientClosed",
    "UnknownRole",
    "AppendOnly",
    "KeyLocked",
    "KeyMismatch",
    "DocumentTooLarge",
    "ForkedPool",
    "LoginRefused",
    "ResultNotSerializable",
    "FencedOut",
    "RecordConflict",
    "TooManyWatchers",
    "__version__",
]

"""The rows the operator calls return, typed: one ``TypedDict`` per SQL result type of the protocol.

They are plain dicts at run time (``record["state"]``), so code written for the
untyped rows keeps working; a type checker now knows each column.
tests/test_rows.py checks each against the columns of its SQL type.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, TypedDict

__all__ = ["ExecutionRecord", "EventRow", "Stats", "Reconciled"]


class ExecutionRecord(TypedDict):
    """An execution record (``sentinel.execution_v1``), as ``inspect`` and ``list`` return it.

    ``state`` is the effective state (a lapsed execution reads ``uncertain``
    before anyone marked it); ``stored_state`` the column as stored.
    """

    namespace: str
    key: str
    state: str
    stored_state: str
    fence: int
    owner: Optional[str]
    attempt: int
    fingerprint: Optional[str]
    ttl_ms: int
    claimed_at: datetime
    started_at: Optional[datetime]
    lease_expires_at: datetime
    hard_expires_at: datetime
    finished_at: Optional[datetime]
    response: Any
    error: Any
    error_permanent: bool
    uncertain_reason: Optional[str]
    reconciled_by: Optional[str]
    reconciled_at: Optional[datetime]
    reconcile_reason: Optional[str]
    updated_at: datetime
    now: datetime


class EventRow(TypedDict):
    """One transition of a key (``sentinel.events``), as ``events`` returns it."""

    id: int
    namespace: str
    key: str
    fence: int
    from_state: Optional[str]
    to_state: str
    owner: Optional[str]
    actor: Optional[str]
    reason: Optional[str]
    at: datetime
    details: Any
    #: the login role (session_user) of the call that caused the event (None before schema version 12)
    db_user: Optional[str]
    #: the role it had set with SET ROLE, if any
    db_role: Optional[str]


class Stats(TypedDict):
    """A namespace's records by effective state (``sentinel.stats_v1``), as ``stats`` returns it."""

    namespace: str
    claimed: int
    executing: int
    completed: int
    failed: int
    uncertain: int
    oldest_uncertain_at: Optional[datetime]
    started_last_minute: int
    finished_last_minute: int
    now: datetime


class Reconciled(TypedDict):
    """What ``reconcile`` did (``sentinel.reconcile_result_v1``): the state before and after, the new fence."""

    previous_state: Optional[str]
    state: str
    previous_fence: Optional[int]
    fence: int
    now: datetime

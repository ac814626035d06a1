"""What once() answers: :class:`Result`, the running function's :class:`ExecutionContext`, transaction state."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from ._heartbeat import Lease
from .errors import (
    ExecutionInProgress,
    OutcomeUncertain,
    PermanentFailure,
    SentinelError,
)

__all__ = ["ExecutionContext", "LeaseLost", "Result", "current_execution", "unwrap"]


_current: contextvars.ContextVar[Optional[ExecutionContext]] = contextvars.ContextVar(
    "sentinel_execution", default=None
)


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



"""One background thread that keeps the leases of a process's executions alive."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import psycopg

from ._conn import Source, is_connection_loss, protocol_row
from ._logs import held_back, one_line
from ._logs import throttle as _throttle

logger = logging.getLogger("sentinel")

HEARTBEAT_SQL = "select alive, state, lease_expires_at from sentinel.heartbeat_v2(%s, %s, %s, %s)"


class Lease:
    """The heartbeat's view of one running execution."""

    __slots__ = ("namespace", "key", "fence", "token", "interval", "lost", "lost_reason", "id", "lease_expires_at",
                 "deadline", "on_lost", "hint")

    def __init__(self, namespace: str, key: str, fence: int, ttl_ms: int, deadline: Optional[float] = None,
                 token: str = "") -> None:
        self.namespace = namespace
        #: the claim's token (heartbeat_v2 renews only for its holder)
        self.token = token
        #: time.monotonic() value of the hard deadline (estimated from the database clock)
        self.deadline = deadline
        self.key = key
        self.fence = fence
        # Renew three times per lease, but not more often than every 10 ms.
        self.interval = max(ttl_ms / 3000.0, 0.01)
        self.lost = threading.Event()
        self.lost_reason: Optional[str] = None
        self.id = 0
        self.lease_expires_at: Any = None
        #: called once when the lease is lost (the client's ``lease_lost`` event)
        self.on_lost: Optional[Callable[[Lease], None]] = None
        #: what to tell the user when the lease is lost (the call gave no ttl: which option to set)
        self.hint: Optional[str] = None

    def lose(self, why: str) -> None:
        """Mark the lease lost, once: the first reason is kept and ``on_lost`` is called."""
        if self.lost.is_set():
            return
        self.lost_reason = why
        self.lost.set()
        self._notify()

    def _notify(self) -> None:
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:
                logger.exception("lease-lost callback failed")

    def past_deadline(self) -> bool:
        """Whether the lease is lost, checking the hard deadline on the local clock too.

        No renewal can succeed past the hard deadline, so the function is told
        on time even when the heartbeat cannot ask the database (a connection
        that hangs without an error, a renewal stuck behind a lock).
        """
        if not self.lost.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            logger.warning("%s/%s reached its hard deadline under fence %s%s", self.namespace, self.key,
                           self.fence, f"; {self.hint}" if self.hint else "",
                           extra={"sentinel_namespace": self.namespace, "sentinel_key": self.key,
                                  "sentinel_fence": self.fence})
            self.lose("hard deadline passed")
        return self.lost.is_set()

    def wait(self, timeout: Optional[float]) -> bool:
        """Block until the lease is lost (or its hard deadline passes) or ``timeout`` seconds pass."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.past_deadline():
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            waits = [t - now for t in (end, self.deadline) if t is not None]
            self.lost.wait(max(0.0, min(waits)) if waits else None)
        return True


def renewal_bound(timeout: Optional[float], lease: Lease) -> Optional[float]:
    """How long a renewal may wait for its reply: the client's ``reply_timeout``, but at most one renewal
    interval (at least a second), so a hung connection is replaced while the lease still lives."""
    return None if timeout is None else min(timeout, max(1.0, round(lease.interval, 1)))


class Renewals:
    """What the heartbeat thread and the heartbeat task decide alike about a lease they could not renew."""

    def unregister(self, lease: Lease) -> None:  # pragma: no cover - both heartbeats define it
        raise NotImplementedError

    def _reschedule(self, lease: Lease, delay: float) -> None:  # pragma: no cover - both heartbeats define it
        raise NotImplementedError

    def _lose(self, lease: Lease, why: str) -> None:
        logger.warning(
            "%s/%s lost its lease under fence %s (%s)%s", lease.namespace, lease.key, lease.fence, why,
            f"; {lease.hint}" if lease.hint else "",
            extra={"sentinel_namespace": lease.namespace, "sentinel_key": lease.key, "sentinel_fence": lease.fence},
        )
        self.unregister(lease)
        lease.lose(why)

    def _cannot_connect(self, lease: Lease, exc: BaseException) -> None:
        """The heartbeat's connection could not be opened: say so (throttled) and try the lease again soon."""
        held = _throttle(("connect", id(self)))
        if held is not None:
            logger.warning("heartbeat cannot connect (%s); retrying%s", one_line(exc), held_back(held),
                           extra={"sentinel_key": lease.key, "sentinel_fence": lease.fence})
        self._unreachable(lease)

    def _renewal_failed(self, lease: Lease, exc: BaseException, conn: Any) -> bool:
        """The renewal raised: say so (throttled), try again soon; True if the connection can be kept.

        A lock timeout (another session holds this row) or a conflict (a
        repeatable-read session) leaves the connection usable.
        """
        locked = getattr(exc, "sqlstate", None) in ("55P03", "40001", "40P01")
        level = logging.WARNING if is_connection_loss(exc) or locked else logging.ERROR
        held = _throttle(("renew", lease.namespace, lease.key, lease.fence))
        if held is not None:
            logger.log(level, "heartbeat for %s/%s failed (%s); retrying%s", lease.namespace, lease.key,
                       one_line(exc), held_back(held), extra={"sentinel_key": lease.key, "sentinel_fence": lease.fence})
        self._unreachable(lease)
        return locked and not conn.broken and not conn.closed

    def _renewed(self, lease: Lease, row: Any, registered: bool) -> None:
        """What heartbeat_v2 answered: renewed (schedule the next), or the execution is no longer ours."""
        if row is not None and row[0]:
            lease.lease_expires_at = row[2]
            self._reschedule(lease, lease.interval)
        elif registered:
            self._lose(lease, f"state now {row[1] if row else None}")

    def _unreachable(self, lease: Lease) -> None:
        """The renewal did not reach the database: retry soon, or give up after the hard deadline."""
        if lease.deadline is not None and time.monotonic() >= lease.deadline:
            # No renewal can succeed past the hard deadline: tell the function,
            # even though the database cannot be asked.
            self._lose(lease, "hard deadline passed while the database was unreachable")
        else:
            self._reschedule(lease, min(lease.interval, 0.2))


class Heartbeater(Renewals):
    """Renews the leases of every in-flight execution of one ``Sentinel``.

    A single daemon thread, started on first use, sleeps until the next lease is
    due, renews it with ``heartbeat_v2`` on its own connection, and sets the
    lease's ``lost`` event when the database says the execution is no longer
    ours (lease lapsed, hard deadline passed, fence taken over). It never
    decides anything itself: the database does.
    """

    def __init__(self, source: Source, on_lost: Optional[Callable[[Lease], None]] = None,
                 explicit: Callable[[], bool] = lambda: False, timeout: Optional[float] = None) -> None:
        self._source = source
        self._timeout = timeout  # the client's reply_timeout
        self._on_lost = on_lost
        self._explicit = explicit  # protocol calls in explicit read committed transactions (see _conn)
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int]] = []
        self._leases: Dict[int, Lease] = {}
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def register(self, lease: Lease) -> None:
        """Start renewing ``lease``; its first renewal is one interval from now."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this Sentinel is closed")
            lease.id = next(self._ids)
            lease.on_lost = self._on_lost
            self._leases[lease.id] = lease
            due = time.monotonic() + lease.interval
            wakes_earlier = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, lease.id))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sentinel-heartbeat", daemon=True)
                self._thread.start()
            elif wakes_earlier:
                # Wake the thread only when this lease is due before its next wake-up.
                self._cond.notify()

    def unregister(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its entry in the schedule is dropped lazily)."""
        with self._cond:
            self._leases.pop(lease.id, None)

    def close(self) -> None:
        """Stop the thread; leases still registered are no longer renewed."""
        with self._cond:
            self._closed = True
            self._leases.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _next_due(self) -> Optional[List[Lease]]:
        """Wait until at least one lease is due; None when closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                while self._heap and self._heap[0][1] not in self._leases:
                    heapq.heappop(self._heap)
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    due: List[Lease] = []
                    while self._heap and self._heap[0][0] <= now:
                        _, lid = heapq.heappop(self._heap)
                        lease = self._leases.get(lid)
                        if lease is not None:
                            due.append(lease)
                    if due:
                        return due
                    continue
                timeout = (self._heap[0][0] - now) if self._heap else None
                self._cond.wait(timeout)

    def _registered(self, lease: Lease) -> bool:
        with self._cond:
            return lease.id in self._leases

    def _reschedule(self, lease: Lease, delay: float) -> None:
        with self._cond:
            if lease.id in self._leases:
                heapq.heappush(self._heap, (time.monotonic() + delay, lease.id))

    def _idle(self) -> bool:
        with self._cond:
            return not self._leases

    def _run(self) -> None:
        conn_cm: Any = None
        conn: Optional[psycopg.Connection[Any]] = None
        try:
            while True:
                due = self._next_due()
                if due is None:
                    return
                for lease in due:
                    if not self._registered(lease):
                        continue  # finished while this round was being picked
                    if conn is None:
                        try:
                            conn_cm = self._source.dedicated()
                            conn = conn_cm.__enter__()
                        except Exception as exc:
                            conn_cm = conn = None
                            self._cannot_connect(lease, exc)
                            continue
                    try:
                        params = (lease.namespace, lease.key, lease.fence, lease.token)
                        row = protocol_row(conn, HEARTBEAT_SQL, params,
                                           explicit=self._explicit(), timeout=renewal_bound(self._timeout, lease))
                    except Exception as exc:
                        if not self._renewal_failed(lease, exc, conn):
                            with contextlib.suppress(Exception):
                                conn_cm.__exit__(type(exc), exc, exc.__traceback__)
                            conn_cm = conn = None
                        continue
                    self._renewed(lease, row, self._registered(lease))
                if conn_cm is not None and self._idle():
                    # Nothing in flight: give the connection back until needed.
                    try:
                        conn_cm.__exit__(None, None, None)
                    except Exception:
                        pass
                    conn_cm = conn = None
        finally:
            if conn_cm is not None:
                try:
                    conn_cm.__exit__(None, None, None)
                except Exception:
                    pass

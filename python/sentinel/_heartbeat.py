"""The background thread that keeps the leases of a process's executions alive, and what it shares with the task."""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import psycopg

from ._conn import Source, is_connection_loss, protocol_row
from ._logs import held_back, one_line
from ._logs import throttle as _throttle

logger = logging.getLogger("sentinel")

HEARTBEAT_SQL = "select alive, state, lease_expires_at from sentinel.heartbeat_v2(%s, %s, %s, %s)"
#: many claims of one namespace in one statement; one row back: what each claim got, as arrays
HEARTBEAT_MANY_SQL = ("select array_agg(h.ord), array_agg(h.outcome), array_agg(h.state), array_agg(h.lease_expires_at)"
                      " from sentinel.heartbeat_many_v1(%s, %s::text[], %s::bigint[], %s::text[]) h")


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
    """What the heartbeat thread and the heartbeat task decide alike, apart from their I/O.

    Leases wait in a schedule (a heap of ``(due, lease id)``). When the
    earliest is due, every lease due within a short window joins it
    (:meth:`_due`), so each keeps its ``ttl/3`` cadence, renewed at most a
    window early; they are renewed per namespace, up to ``BATCH_MAX`` claims
    in one ``heartbeat_many_v1`` statement (:meth:`_batches`). A row another
    session holds locked is skipped by that statement and handed to a second
    lane that asks ``heartbeat_v2`` for it alone (which waits up to 100 ms
    for the lock), so one stuck key never delays the others.
    """

    #: claims renewed by one statement at most (the SQL function takes up to 10000)
    BATCH_MAX = 1000
    #: seconds: a lease due this soon (and within a quarter of its interval) joins a batch being sent
    BATCH_WINDOW = 0.05
    #: seconds the second lane keeps its connection without work
    LANE_IDLE = 10.0

    _heap: List[Tuple[float, int]]
    _leases: Dict[int, Any]  # id -> Lease (AsyncLease for the task)
    #: monotonic time the heartbeat looks at the schedule next (infinity: when a lease is registered)
    _wake_at: float = float("inf")
    #: how long it looks again after finding nothing scheduled: the latest interval registered
    _idle_s: float = 1.0
    _idle_once: bool = False
    #: False once the database or the role cannot batch (no heartbeat_many_v1): each lease alone then
    _batched: bool

    def unregister(self, lease: Lease) -> None:  # pragma: no cover - both heartbeats define it
        raise NotImplementedError

    def _reschedule(self, lease: Lease, delay: float) -> None:  # pragma: no cover - both heartbeats define it
        raise NotImplementedError

    def _registered(self, lease: Lease) -> bool:
        return lease.id in self._leases

    # -- the schedule ---------------------------------------------------------------

    def _schedule(self, lease: Any) -> bool:
        """Put a new lease's first renewal (one interval from now) in the schedule; True when the heartbeat
        must be woken for it, which is only when it is due before the heartbeat looks again anyway: a
        wake-up per call would cost each call a switch of threads (most leases end before their first
        renewal)."""
        due = time.monotonic() + lease.interval
        heapq.heappush(self._heap, (due, lease.id))
        self._idle_s = lease.interval
        if due < self._wake_at:
            self._wake_at = due
            return True
        return False

    def _sleep_for(self, now: float, wait: Optional[float]) -> Optional[float]:
        """How long the heartbeat sleeps after :meth:`_due` found nothing due (``wait``: until the next
        renewal; ``None``: nothing scheduled), noting when it looks again. With nothing scheduled it
        looks once more after an interval's length (the leases registered meanwhile are due later, so
        they wake nobody), then sleeps until a lease is registered. None: until woken."""
        if wait is not None:
            self._idle_once = False
        elif not self._idle_once:
            self._idle_once = True
            wait = self._idle_s
        else:
            self._wake_at = float("inf")
            return None
        self._wake_at = now + wait
        return wait

    def _due(self, now: float) -> Tuple[List[Lease], Optional[float]]:
        """Take the leases to renew now: ``(due, None)``, or ``([], seconds until the next is due)``
        (``None``: nothing is scheduled). Call it holding whatever guards the schedule."""
        heap, leases = self._heap, self._leases
        while heap and heap[0][1] not in leases:
            heapq.heappop(heap)  # finished while it waited
        if not heap:
            return [], None
        if heap[0][0] > now:
            return [], heap[0][0] - now
        due: List[Lease] = []
        later: List[Tuple[float, int]] = []
        while heap and heap[0][0] <= now + self.BATCH_WINDOW:
            entry = heapq.heappop(heap)
            lease = leases.get(entry[1])
            if lease is None:
                continue
            if entry[0] <= now + min(self.BATCH_WINDOW, lease.interval / 4):
                due.append(lease)
            else:
                later.append(entry)  # too early for its own cadence
        for entry in later:
            heapq.heappush(heap, entry)
        return due, None

    def _batches(self, due: List[Lease]) -> List[List[Lease]]:
        """The statements to send for ``due``: one namespace each, at most ``BATCH_MAX`` claims."""
        by_namespace: Dict[str, List[Lease]] = {}
        for lease in due:
            by_namespace.setdefault(lease.namespace, []).append(lease)
        return [group[i:i + self.BATCH_MAX] for group in by_namespace.values()
                for i in range(0, len(group), self.BATCH_MAX)]

    @staticmethod
    def _batch_params(batch: List[Lease]) -> Tuple[str, List[str], List[int], List[str]]:
        return (batch[0].namespace, [lease.key for lease in batch], [lease.fence for lease in batch],
                [lease.token for lease in batch])

    @staticmethod
    def _batch_bound(timeout: Optional[float], batch: List[Lease]) -> Optional[float]:
        """How long a batch may wait for its reply: the shortest bound of its leases (see renewal_bound)."""
        return renewal_bound(timeout, min(batch, key=lambda lease: lease.interval))

    # -- what the database answered ---------------------------------------------------

    def _answered(self, batch: List[Lease], row: Any) -> List[Lease]:
        """What heartbeat_many_v1 answered for ``batch``; returns the leases to ask heartbeat_v2 for (locked)."""
        ords, outcomes, states, expires = row if row is not None else (None, None, None, None)
        answered = [False] * len(batch)
        locked: List[Lease] = []
        for ord_, outcome, state, expires_at in zip(ords or (), outcomes or (), states or (), expires or ()):
            lease = batch[ord_ - 1]
            answered[ord_ - 1] = True
            if outcome == "renewed":
                lease.lease_expires_at = expires_at
                self._reschedule(lease, lease.interval)
            elif outcome == "locked":
                locked.append(lease)
            elif self._registered(lease):
                self._lose(lease, f"state now {state}")
        for lease, done in zip(batch, answered):
            if not done:  # no answer for it: as if the statement had not reached the database
                self._unreachable(lease)
        return locked

    def _batch_failed(self, batch: List[Lease], exc: BaseException, conn: Any) -> Tuple[bool, List[Lease]]:
        """The batch raised: ``(keep the connection, leases to ask heartbeat_v2 for)``.

        Every lease is retried soon (or lost past its hard deadline), as when
        a single renewal fails. A database without ``heartbeat_many_v1``
        (schema older than version 13) or a role that may not call it makes
        this heartbeat renew each lease alone from then on.
        """
        usable = not conn.broken and not conn.closed
        code = getattr(exc, "sqlstate", None)
        if self._batched and (code == "42883" or (code == "42501" and "heartbeat_many_v1" in str(exc))):
            self._batched = False
            logger.warning("heartbeat cannot renew leases in batches (%s); renewing each lease alone with "
                           "heartbeat_v2: run `sentinel migrate` (schema version 13 adds heartbeat_many_v1), or "
                           "grant the role EXECUTE on it (grant_v2 does)", one_line(exc),
                           extra={"sentinel_namespace": batch[0].namespace})
            return usable, list(batch)
        locked = code in ("55P03", "40001", "40P01")
        level = logging.WARNING if is_connection_loss(exc) or locked else logging.ERROR
        held = _throttle(("renew-batch", id(self), batch[0].namespace))
        if held is not None:
            logger.log(level, "heartbeat for %d lease(s) of %s failed (%s); retrying%s", len(batch),
                       batch[0].namespace, one_line(exc), held_back(held),
                       extra={"sentinel_namespace": batch[0].namespace})
        for lease in batch:
            self._unreachable(lease)
        return locked and usable, []

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
        """A single renewal (heartbeat_v2) raised: say so (throttled), try again soon; True if the connection
        can be kept.

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


class _Dedicated:
    """A connection of the heartbeat's own: opened when first needed, given back when idle or broken."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._cm: Any = None
        self.conn: Optional[psycopg.Connection[Any]] = None

    def get(self) -> psycopg.Connection[Any]:
        """The connection, opened now if need be (raises what opening it raised)."""
        if self.conn is None:
            cm = self._source.dedicated()
            self.conn = cm.__enter__()
            self._cm = cm
        return self.conn

    def drop(self, exc: Optional[BaseException] = None) -> None:
        """Give the connection back (after ``exc``, if it failed)."""
        cm, self._cm, self.conn = self._cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


class Heartbeater(Renewals):
    """Renews the leases of every in-flight execution of one ``Sentinel``.

    A daemon thread (``sentinel-heartbeat``), started on first use, sleeps
    until leases are due and renews them together, one ``heartbeat_many_v1``
    statement per namespace and batch, on a connection of its own (held only
    while executions are in flight). A key whose row another session holds
    locked goes to a second thread (``sentinel-heartbeat-single``, started
    when first needed) that renews it alone with ``heartbeat_v2``, so it
    never delays the others. A lease is marked lost when the database says
    the execution is no longer ours (lease lapsed, hard deadline passed,
    fence taken over), or when the hard deadline passed while the database
    was unreachable. It decides nothing itself: the database does.
    """

    def __init__(self, source: Source, on_lost: Optional[Callable[[Lease], None]] = None,
                 explicit: Callable[[], bool] = lambda: False, timeout: Optional[float] = None) -> None:
        self._source = source
        self._timeout = timeout  # the client's reply_timeout
        self._on_lost = on_lost
        self._explicit = explicit  # protocol calls in explicit read committed transactions (see _conn)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # the batch thread waits for due leases here
        self._queued = threading.Condition(self._lock)  # the single lane waits for locked keys here
        self._heap = []
        self._leases = {}
        self._singles: Deque[Lease] = collections.deque()
        self._batched = True
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None
        self._single_thread: Optional[threading.Thread] = None
        self._closed = False

    def register(self, lease: Lease) -> None:
        """Start renewing ``lease``; its first renewal is one interval from now."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this Sentinel is closed")
            lease.id = next(self._ids)
            lease.on_lost = self._on_lost
            self._leases[lease.id] = lease
            wake = self._schedule(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sentinel-heartbeat", daemon=True)
                self._thread.start()
            elif wake:
                self._cond.notify()

    def unregister(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its entry in the schedule is dropped lazily)."""
        with self._lock:
            self._leases.pop(lease.id, None)

    def close(self) -> None:
        """Stop the threads; leases still registered are no longer renewed."""
        with self._lock:
            self._closed = True
            self._leases.clear()
            self._singles.clear()
            self._cond.notify_all()
            self._queued.notify_all()
        for thread in (self._thread, self._single_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)

    def _registered(self, lease: Lease) -> bool:
        with self._lock:
            return lease.id in self._leases

    def _reschedule(self, lease: Lease, delay: float) -> None:
        with self._lock:
            if lease.id in self._leases:
                due = time.monotonic() + delay
                if not self._heap or due < self._heap[0][0]:
                    self._cond.notify()  # (from the single lane) due before the batch thread's next wake-up
                heapq.heappush(self._heap, (due, lease.id))

    def _hand_over(self, leases: List[Lease]) -> None:
        """Renew these leases alone, with heartbeat_v2, on the single lane."""
        if not leases:
            return
        with self._lock:
            if self._closed:
                return
            self._singles.extend(leases)
            if self._single_thread is None or not self._single_thread.is_alive():
                self._single_thread = threading.Thread(target=self._run_single, name="sentinel-heartbeat-single",
                                                       daemon=True)
                self._single_thread.start()
            else:
                self._queued.notify()

    def _idle(self) -> bool:
        with self._lock:
            return not self._leases

    def _next_due(self) -> Optional[List[Lease]]:
        """Wait until leases are due; None when closed."""
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                due, wait = self._due(now)
                if due:
                    return due
                self._cond.wait(self._sleep_for(now, wait))
            return None

    def _next_single(self, idle: Optional[float]) -> Tuple[bool, Optional[Lease]]:
        """The next lease of the single lane: ``(False, lease)``; ``(False, None)`` after ``idle`` seconds
        without one; ``(True, None)`` when closed."""
        with self._lock:
            while not self._closed:
                if self._singles:
                    return False, self._singles.popleft()
                if not self._queued.wait(idle):
                    return False, None
            return True, None

    def _run(self) -> None:
        lane = _Dedicated(self._source)
        try:
            while True:
                due = self._next_due()
                if due is None:
                    return
                if not self._batched:
                    self._hand_over(due)
                    continue
                for batch in self._batches(due):
                    batch = [lease for lease in batch if self._registered(lease)]  # some finished meanwhile
                    if not batch:
                        continue
                    try:
                        conn = lane.get()
                    except Exception as exc:
                        for lease in batch:
                            self._cannot_connect(lease, exc)
                        continue
                    try:
                        row = protocol_row(conn, HEARTBEAT_MANY_SQL, self._batch_params(batch),
                                           explicit=self._explicit(), timeout=self._batch_bound(self._timeout, batch))
                    except Exception as exc:
                        keep, alone = self._batch_failed(batch, exc, conn)
                        if not keep:
                            lane.drop(exc)
                        self._hand_over(alone)
                        continue
                    self._hand_over(self._answered(batch, row))
                if lane.conn is not None and self._idle():
                    lane.drop()  # nothing in flight: give the connection back until needed
        finally:
            lane.drop()

    def _run_single(self) -> None:
        lane = _Dedicated(self._source)
        try:
            while True:
                closed, lease = self._next_single(self.LANE_IDLE if lane.conn is not None else None)
                if closed:
                    return
                if lease is None:
                    lane.drop()  # idle for a while: give the connection back until needed
                    continue
                if not self._registered(lease):
                    continue  # finished while it waited
                try:
                    conn = lane.get()
                except Exception as exc:
                    self._cannot_connect(lease, exc)
                    continue
                try:
                    params = (lease.namespace, lease.key, lease.fence, lease.token)
                    row = protocol_row(conn, HEARTBEAT_SQL, params,
                                       explicit=self._explicit(), timeout=renewal_bound(self._timeout, lease))
                except Exception as exc:
                    if not self._renewal_failed(lease, exc, conn):
                        lane.drop(exc)
                    continue
                self._renewed(lease, row, self._registered(lease))
                if self._idle():
                    lane.drop()
        finally:
            lane.drop()

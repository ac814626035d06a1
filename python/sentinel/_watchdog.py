"""A bound on the wait for the database's reply to one protocol statement.

TCP keepalives and ``tcp_user_timeout`` end a connection whose peer stops
acknowledging; the server's ``lock_timeout`` and ``statement_timeout`` end a
statement the server is slow to run. Nothing ends the wait on a peer that
acknowledges every packet and never answers: a hung proxy or middlebox, a
frozen backend or virtual machine. One daemon thread per process watches the
statements in flight; when one has waited past its bound, it shuts down that
connection's socket. The blocked read then returns, psycopg reports a broken
connection, and the driver handles it as any connection loss (retried where
that is safe, else :class:`~sentinel.DatabaseUnavailable`, whose message names
the bound). A connection the watchdog touched is never used again.

The cost on the hot path is two short lock holds and a dict insert and delete
per statement: statements of one bound end in about the order they began, so
the oldest in flight is always first in its dict. The thread sleeps until the
oldest deadline in flight, or a bound's length when none is, and is woken only
for a statement whose deadline comes before that, never once per statement: a
wake-up costs the caller a switch of threads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psycopg

from . import _fork

logger = logging.getLogger("sentinel")


class _Armed:
    __slots__ = ("id", "fd", "seconds", "deadline", "fired")

    def __init__(self, ident: int, fd: int, seconds: float, deadline: float) -> None:
        self.id = ident
        self.fd = fd
        self.seconds = seconds
        self.deadline = deadline
        self.fired = False


class Watchdog:
    def __init__(self) -> None:
        self._reset()
        _fork.track(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        #: per bound (seconds), the statements in flight, oldest first
        self._flights: Dict[float, Dict[int, _Armed]] = {}
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None
        #: when the thread looks next (monotonic)
        self._wake_at = float("inf")
        #: how long the thread sleeps with nothing in flight: the latest bound
        self._idle_s = 1.0

    def _after_fork(self) -> None:
        """In a forked child: the parent's statements and thread are not here."""
        self._reset()

    def arm(self, fd: int, seconds: float) -> _Armed:
        armed = _Armed(next(self._ids), fd, seconds, time.monotonic() + seconds)
        with self._cond:
            flights = self._flights.get(seconds)
            if flights is None:
                flights = self._flights[seconds] = {}
            flights[armed.id] = armed
            self._idle_s = seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sentinel-watchdog", daemon=True)
                self._thread.start()
            elif armed.deadline < self._wake_at:
                self._wake_at = armed.deadline  # the thread looks again by then
                self._cond.notify()
        return armed

    def disarm(self, armed: _Armed) -> bool:
        """The statement ended; True if the watchdog had already shut its connection down."""
        with self._cond:
            flights = self._flights.get(armed.seconds)
            if flights is not None:
                flights.pop(armed.id, None)
            return armed.fired

    def _overdue(self) -> Tuple[List[_Armed], Optional[float]]:
        """Under the lock: the statements past their bound (marked fired), and when to look next."""
        now = time.monotonic()
        due: List[_Armed] = []
        wake: Optional[float] = None
        for flights in self._flights.values():
            while flights:
                armed = next(iter(flights.values()))
                if armed.deadline > now:
                    wake = armed.deadline if wake is None else min(wake, armed.deadline)
                    break
                del flights[armed.id]
                armed.fired = True
                due.append(armed)
        return due, wake

    def _run(self) -> None:
        while True:
            with self._cond:
                due, wake = self._overdue()
                if not due:
                    if wake is None:  # nothing in flight: look again after a bound's length
                        wake = time.monotonic() + self._idle_s
                    self._wake_at = wake
                    self._cond.wait(max(0.0, wake - time.monotonic()))
                    continue
                for armed in due:  # still under the lock: the statement cannot end and free its fd meanwhile
                    _shut(armed.fd)
            for armed in due:
                logger.warning("no reply from the database within %g s; closing that connection",
                               armed.seconds)


def _shut(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = Watchdog()


@contextlib.contextmanager
def bounded(conn: Any, seconds: Optional[float]) -> Iterator[None]:
    """Run a statement of ``conn`` (sync or async) with at most ``seconds`` of waiting for its reply.

    Past the bound the connection is shut down and the statement raises
    ``psycopg.OperationalError`` saying so; when the reply came as the bound
    passed, the statement's result stands and the connection is closed.
    """
    if seconds is None:
        yield
        return
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        yield  # a closed connection: the statement raises by itself
        return
    armed = _watchdog.arm(fd, seconds)
    try:
        yield
    except psycopg.Error as exc:
        if _watchdog.disarm(armed):
            raise psycopg.OperationalError(
                f"no reply from the database within {seconds:g} s (reply_timeout); the connection was closed"
            ) from exc
        raise
    except BaseException:
        _watchdog.disarm(armed)
        raise
    else:
        if _watchdog.disarm(armed):
            with contextlib.suppress(Exception):
                conn.pgconn.finish()  # half shut down: never reuse it

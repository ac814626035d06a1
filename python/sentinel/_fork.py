"""After ``fork()``: a child never talks on its parent's sockets nor renews its parent's leases.

A process that forks after using Sentinel (gunicorn ``--preload``,
``multiprocessing`` with the fork start method, Celery prefork) copies every
client into the child: idle connections whose sockets the parent still uses,
a heartbeat schedule full of the parent's leases, a listener. None of the
parent's threads exist in the child. ``os.register_at_fork`` calls
:func:`_after_fork_in_child` in the child, which asks every live client to
drop what belongs to the parent, *without closing it*: closing a connection
sends a Terminate message on the shared socket and ends the parent's session
(psycopg itself never finalises a connection in another process than the one
that opened it). The child then opens connections, and starts a heartbeat, of
its own on first use.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def track(client: Any) -> None:
    """Call ``client._after_fork()`` in every child forked from now on (while ``client`` lives)."""
    _clients.add(client)


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python >= 3.7
    os.register_at_fork(after_in_child=_after_fork_in_child)

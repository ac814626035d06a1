"""A TCP proxy between a driver and PostgreSQL that the tests can stall, for faults no server setting produces.

``Proxy(dsn)`` listens on 127.0.0.1 and forwards every connection to the
server of ``dsn`` (its Unix socket or its TCP address); ``proxy.dsn`` is the
DSN to give the client. ``stall()`` stops forwarding in both directions while
every socket stays open, as a half-open connection or a hung middlebox does:
the client's reads then block with no error. ``resume()`` forwards again,
including what was held back. ``drop_reply_to(b"acquire_v2")`` forwards the
next statement containing those bytes, lets the server run (and commit) it,
reads its whole reply up to ReadyForQuery, and then closes that connection
without passing the reply on: a reply lost after the commit.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class Proxy:
    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "/var/run/postgresql")
        port = int(params.get("port") or 5432)
        self._upstream: Tuple[int, Any] = (
            (socket.AF_UNIX, os.path.join(host, f".s.PGSQL.{port}")) if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        params.update(host="127.0.0.1", port=str(self._listener.getsockname()[1]), sslmode="disable")
        params.pop("hostaddr", None)
        self.dsn = make_conninfo(**params)
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = False
        self._sockets: List[socket.socket] = []
        self.connections = 0
        self._drop_pattern: Optional[bytes] = None
        self.dropped = 0  # replies dropped so far
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def stall(self) -> None:
        """Stop forwarding, keeping every connection open."""
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def drop_reply_to(self, pattern: bytes) -> None:
        """Drop the reply to the next statement that contains ``pattern`` (once)."""
        self._drop_pattern = pattern

    def close(self) -> None:
        self._closed = True
        self._forwarding.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(self._upstream[0], socket.SOCK_STREAM)
            try:
                upstream.connect(self._upstream[1])
            except OSError:
                client.close()
                continue
            self.connections += 1
            self._sockets += [client, upstream]
            state: Dict[str, Any] = {"dropping": False}
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, state), name="proxy-pump",
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, state: Dict[str, Any]) -> None:
        pending = b""
        try:
            while not self._closed:
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable:
                    continue
                self._forwarding.wait()  # stalled: hold the bytes back, keep the socket open
                data = src.recv(65536)
                if not data:
                    break
                self._forwarding.wait()
                pattern = self._drop_pattern
                if up and pattern is not None and pattern in data:
                    self._drop_pattern = None
                    state["dropping"] = True
                elif not up and state["dropping"]:
                    pending += data
                    if b"Z\x00\x00\x00\x05" in pending:  # ReadyForQuery: the server is done (and committed)
                        self.dropped += 1
                        break  # close both sides; the client never sees the reply
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

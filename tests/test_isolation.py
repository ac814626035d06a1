"""A role whose default isolation is repeatable read or serializable: no raw serialization failure, no lost response.

The driver runs every call in autocommit, at the session's default isolation.
Under repeatable read or serializable, a protocol statement racing another on
the same row is aborted by the server (SQLSTATE 40001) with nothing written;
the driver must never let that reach the caller or cost a response. Real
threads, each with its own Sentinel and connections, race on the same keys as
a role whose default is set with ALTER ROLE.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, Dict, Iterator, List

import psycopg
import pytest

import sentinel


@pytest.fixture(params=["read committed", "repeatable read", "serializable"])
def strict_dsn(dsn: str, request: Any) -> Iterator[str]:
    role = f"sentinel_iso_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v1(%s)", (role,))
        admin.execute(f"alter role {role} set default_transaction_isolation = '{request.param}'")
    strict = psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
    with psycopg.connect(strict, autocommit=True) as check:
        assert check.execute("show transaction_isolation").fetchone() == (request.param,)
    yield strict
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"drop owned by {role}")
        admin.execute(f"drop role {role}")


def test_racing_acquires_and_completions_under_strict_isolation(strict_dsn: str, namespace: str) -> None:
    keys = [f"k{i}" for i in range(12)]
    workers = 6
    barrier = threading.Barrier(workers)
    runs: List[str] = []
    errors: List[BaseException] = []
    seen: Dict[str, List[Any]] = {k: [] for k in keys}
    lock = threading.Lock()

    def worker(n: int) -> None:
        # A short lease: the heartbeat renews every 200 ms while the function runs,
        # racing the completion on the same row.
        with sentinel.Sentinel(conninfo=strict_dsn, namespace=namespace, fingerprints=False) as s:
            barrier.wait(30)
            for key in keys[n % 3:] + keys[:n % 3]:
                def fn(key: str = key) -> str:
                    with lock:
                        runs.append(key)
                    threading.Event().wait(1.0)  # several heartbeats long
                    return f"done {key}"
                try:
                    r = s.once(key, fn, ttl_ms=600, hard_ttl_ms=60000, wait_ms=30000)
                    with lock:
                        seen[key].append((r.state, r.response, r.persisted))
                except BaseException as exc:
                    with lock:
                        errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        import traceback
        trace = "".join(traceback.format_exception(errors[0]))
    assert errors == [], f"{len(errors)} calls failed, first: {trace}"
    assert sorted(runs) == sorted(keys), "each key ran exactly once"
    for key in keys:
        assert seen[key] and set(seen[key]) == {("completed", f"done {key}", True)}, (key, seen[key])


def test_async_racing_callers_under_strict_isolation(strict_dsn: str, namespace: str) -> None:
    keys = [f"a{i}" for i in range(8)]
    runs: List[str] = []

    async def main() -> List[Any]:
        clients = [sentinel.AsyncSentinel(conninfo=strict_dsn, namespace=namespace, fingerprints=False)
                   for _ in range(3)]
        try:
            async def call(s: sentinel.AsyncSentinel, key: str) -> Any:
                async def fn() -> str:
                    runs.append(key)
                    await asyncio.sleep(1.0)  # several heartbeats long
                    return f"done {key}"
                r = await s.once(key, fn, ttl_ms=600, hard_ttl_ms=60000, wait_ms=30000)
                return (key, r.state, r.response)
            return list(await asyncio.gather(*(call(s, k) for s in clients for k in keys)))
        finally:
            for s in clients:
                await s.close()

    results = asyncio.run(main())
    assert sorted(runs) == sorted(keys), "each key ran exactly once"
    assert sorted(set(results)) == sorted((k, "completed", f"done {k}") for k in keys)

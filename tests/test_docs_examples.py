"""The README's Python examples run as written: the schema install, then the quick start, as an app role."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(path: Path) -> List[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def test_the_readme_quick_start_runs_as_written(empty_db: Callable[[], str]) -> None:
    owner_dsn = empty_db()
    role, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    app_dsn = psycopg.conninfo.make_conninfo(owner_dsn, user=role, password=password)
    blocks = _python_blocks(ROOT / "README.md")
    quick_start = next(b for b in blocks if ".once(" in b)
    install = next(b for b in blocks if "init_db" in b)
    # The examples name a server of their own; only the addresses change.
    install = install.replace('"postgresql://owner@db/shop"', repr(owner_dsn))
    quick_start = quick_start.replace('"postgresql://app@db/shop"', repr(app_dsn))
    assert repr(owner_dsn) in install and repr(app_dsn) in quick_start, "the README's DSNs changed"

    exec(compile(install, "README.md (install)", "exec"), {})
    with psycopg.connect(owner_dsn, autocommit=True) as admin:  # what `sentinel grant app` does
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v1(%s)", (role,))
    try:
        runs: List[Dict[str, Any]] = []
        for _ in range(2):  # fresh, then replayed
            scope: Dict[str, Any] = {}
            exec(compile(quick_start, "README.md (quick start)", "exec"), scope)
            runs.append(scope)
            scope["s"].close()
        first, second = (r["result"] for r in runs)
        assert first.completed and not first.replayed and "receipt" in runs[0]
        assert second.completed and second.replayed and second.fence == first.fence
    finally:
        with psycopg.connect(owner_dsn, autocommit=True) as admin:
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")

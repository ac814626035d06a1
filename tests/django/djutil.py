"""Helpers of the Django tests (importable: conftest.py puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import psycopg

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "django"


def sentinel_state(dsn: str, namespace: str, key: str) -> Optional[str]:
    """The effective state of a key, read on a connection of its own (None: no record)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select state from sentinel.inspect_v1(%s, %s)", (namespace, key)).fetchone()
    return None if row is None else str(row[0])

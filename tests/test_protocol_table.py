"""sql/protocol.json, the one table of limits and SQLSTATEs, against what the SQL functions really do."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

import psycopg
import pytest

import sentinel
from sentinel import errors
from sentinel._options import MAX_KEY_BYTES, MAX_TTL_MS, NAMESPACE_PATTERN

ROOT = Path(__file__).resolve().parent.parent
TABLE: Dict[str, Any] = json.loads((ROOT / "sql" / "protocol.json").read_text())
LIMITS = TABLE["limits"]


def test_every_sqlstate_the_functions_raise_is_in_the_table_and_nothing_else() -> None:
    raised = set()
    for path in (ROOT / "sql" / "schema").glob("*.sql"):
        raised |= set(re.findall(r"errcode\s*=\s*'(SN\d{3})'", path.read_text()))
    assert raised == set(TABLE["sqlstates"]), (sorted(raised), sorted(TABLE["sqlstates"]))


def test_the_python_classes_are_the_table() -> None:
    for code, entry in TABLE["sqlstates"].items():
        cls = errors.from_sqlstate(code)
        assert cls is not None and cls.__name__ == entry["class"] and cls.sqlstate == code, code
        assert [b.__name__ for b in cls.__bases__] == entry["bases"], code
    limits = (LIMITS["max_key_bytes"], LIMITS["max_ttl_ms"], LIMITS["namespace_pattern"])
    assert limits == (MAX_KEY_BYTES, MAX_TTL_MS, NAMESPACE_PATTERN)


def _raises(conn: psycopg.Connection[Any], sql: str, params: Any) -> str:
    """The SQLSTATE ``sql`` raises, or '' when it succeeds (rolled back either way)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql, params)
    except psycopg.Error as exc:
        return exc.sqlstate or "?"
    return ""


ACQUIRE = "select sentinel.acquire_v2(%s, %s, %s, %s, %s, true, %s, null)"


@pytest.mark.parametrize("case", ["key", "ttl", "owner", "fingerprint", "namespace"])
def test_the_functions_enforce_each_limit_at_its_boundary(conn: psycopg.Connection[Any], namespace: str,
                                                         case: str) -> None:
    at, over = {
        "key": ((namespace, "k" * LIMITS["max_key_bytes"], "w", 1000, None, None),
                (namespace, "k" * (LIMITS["max_key_bytes"] + 1), "w", 1000, None, None)),
        "ttl": ((namespace, "t", "w", LIMITS["max_ttl_ms"], None, None),
                (namespace, "t", "w", LIMITS["max_ttl_ms"] + 1, None, None)),
        "owner": ((namespace, "o", "w" * LIMITS["max_owner_chars"], 1000, None, None),
                  (namespace, "o", "w" * (LIMITS["max_owner_chars"] + 1), 1000, None, None)),
        "fingerprint": ((namespace, "f", "w", 1000, None, "x" * LIMITS["max_fingerprint_chars"]),
                        (namespace, "f", "w", 1000, None, "x" * (LIMITS["max_fingerprint_chars"] + 1))),
        "namespace": (("a" * 63, "n", "w", 1000, None, None), ("a" * 64, "n", "w", 1000, None, None)),
    }[case]
    code = {"key": "SN001", "ttl": "SN003", "owner": "SN004", "fingerprint": "SN004", "namespace": "SN002"}[case]
    assert _raises(conn, ACQUIRE, at) == "", f"{case} at its limit must be accepted"
    assert _raises(conn, ACQUIRE, over) == code, f"{case} one past its limit must raise {code}"
    assert re.fullmatch(LIMITS["namespace_pattern"], "a" * 63) and not re.fullmatch(LIMITS["namespace_pattern"],
                                                                                     "a" * 64)


def test_reason_actor_and_rows_limits(dsn: str, conn: psycopg.Connection[Any], namespace: str) -> None:
    reconcile = "select sentinel.reconcile_v1(%s, 'r', 'release', %s, %s, null, null, true)"
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        s.once("r", lambda: 1, fingerprint=False)
    assert _raises(conn, reconcile, (namespace, "a" * LIMITS["max_actor_chars"], "why")) == ""
    assert _raises(conn, reconcile, (namespace, "a" * (LIMITS["max_actor_chars"] + 1), "why")) == "SN004"
    assert _raises(conn, reconcile, (namespace, "ops", "y" * LIMITS["max_reason_chars"])) == ""
    assert _raises(conn, reconcile, (namespace, "ops", "y" * (LIMITS["max_reason_chars"] + 1))) == "SN004"
    listing = "select * from sentinel.list_v2(%s, null, null, %s, false)"
    assert _raises(conn, listing, (namespace, LIMITS["max_rows"])) == ""
    assert _raises(conn, listing, (namespace, LIMITS["max_rows"] + 1)) == "SN006"

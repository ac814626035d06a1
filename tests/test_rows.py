"""The typed rows of the operator calls name exactly the columns of their SQL types."""

from __future__ import annotations

from typing import Any, List

import psycopg
import pytest

import sentinel


def _columns(conn: psycopg.Connection[Any], relation: str) -> List[str]:
    rows = conn.execute("select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
                        " and not attisdropped order by attnum", (relation,)).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("row, relation", [
    (sentinel.ExecutionRecord, "sentinel.execution_v1"),
    (sentinel.EventRow, "sentinel.events"),
    (sentinel.Stats, "sentinel.stats_v1"),
    (sentinel.Reconciled, "sentinel.reconcile_result_v1"),
])
def test_each_row_type_is_its_sql_type(conn: psycopg.Connection[Any], row: Any, relation: str) -> None:
    assert list(row.__annotations__) == _columns(conn, relation)


def test_the_calls_return_those_rows(client: Any) -> None:
    client.once("typed", lambda: {"ok": True})
    record = client.inspect("typed")
    assert record is not None and set(record) == set(sentinel.ExecutionRecord.__annotations__)
    assert set(client.events("typed")[0]) == set(sentinel.EventRow.__annotations__)
    assert set(client.stats()) == set(sentinel.Stats.__annotations__)

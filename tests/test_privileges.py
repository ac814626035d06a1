"""An application role with EXECUTE on the protocol can use once(), and nothing more."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

import sentinel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app_dsn(dsn: str) -> Iterator[str]:
    role = f"sentinel_app_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v1(%s)", (role,))
    yield psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"drop owned by {role}")
        admin.execute(f"drop role {role}")


def test_app_role_can_use_once(app_dsn: str, namespace: str) -> None:
    with sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as s:
        assert s.once("k", lambda: {"ok": 1}).response == {"ok": 1}
        assert s.once("k", lambda: None).replayed
        with pytest.raises(RuntimeError):
            s.once("boom", lambda: (_ for _ in ()).throw(RuntimeError("x")))
        assert s.inspect("boom")["state"] == "failed"  # type: ignore[index]


@pytest.mark.parametrize(
    "statement",
    [
        "insert into sentinel.executions (namespace, key, state, fence, attempt, ttl_ms, claimed_at,"
        " lease_expires_at, hard_expires_at, updated_at) values ('x', 'k', 'completed', 1, 1, 1, now(), now(),"
        " now(), now())",
        "update sentinel.executions set state = 'completed'",
        "delete from sentinel.executions",
        "select * from sentinel.executions",
        "select nextval('sentinel.fence_seq')",
        "create or replace function sentinel._now() returns timestamptz language sql as $$ select now() $$",
        "select * from sentinel.reconcile_v1('x', 'k', 'release', 'me', 'because')",
        "select * from sentinel.purge_v1('x', 0)",
    ],
)
def test_app_role_cannot_touch_tables_clock_or_operator_functions(app_dsn: str, statement: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_public_cannot_execute_the_protocol(app_dsn: str, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """select p.oid::regprocedure::text from pg_proc p
                where p.pronamespace = 'sentinel'::regnamespace
                  and has_function_privilege('public', p.oid, 'execute')"""
        ).fetchall()
    assert rows == []


def test_operator_grant_adds_reconcile_and_purge(app_dsn: str, dsn: str, namespace: str) -> None:
    role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
    with psycopg.connect(dsn, autocommit=True) as admin:
        ran = admin.execute("select sentinel.grant_v1(%s, operator => true)", (role,)).fetchone()
    assert ran is not None and any("reconcile_v1" in stmt for stmt in ran[0])
    with sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as s:
        s.once("k", lambda: 1)
        assert s.purge(0) == 1


def test_grant_unknown_role_is_a_clear_error(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error, match="role 'no_such_role' does not exist") as info:
        conn.execute("select sentinel.grant_v1('no_such_role')")
    assert info.value.sqlstate == "SN012"
    assert sentinel.errors.from_sqlstate("SN012") is sentinel.UnknownRole


def test_the_operations_guide_shows_the_grant_function() -> None:
    assert "select sentinel.grant_v2('app', 'payments');" in (ROOT / "docs" / "operations.md").read_text()


def test_an_app_role_can_run_check_and_status_as_a_readiness_probe(app_dsn: str) -> None:
    """`sentinel check` with the application's credentials: no owner password in the deployment."""
    from test_cli import run

    check = run("check", "--dsn", app_dsn)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: schema version"), check.stdout
    st = run("status", "--dsn", app_dsn)
    assert st.returncode == 0 and "permission denied" not in st.stderr, st.stderr
    assert "may not read sentinel.migrations" in st.stdout and "pending" not in st.stdout, st.stdout
    assert st.stdout.rstrip().endswith("ok"), st.stdout


def test_an_app_role_refused_an_operator_function_is_told_about_operator(app_dsn: str, namespace: str) -> None:
    with sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as s:
        with pytest.raises(sentinel.PermissionDenied, match=r"sentinel grant <role> --namespace <ns> --operator"
                           ) as caught:
            s.reconcile("k", action="release", actor="ops", reason="test", force=True)
    assert "permission denied for function reconcile_v1" in str(caught.value)

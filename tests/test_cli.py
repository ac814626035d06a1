"""The `sentinel` command, end to end through subprocesses against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgserver
import sentinel
from test_schema import catalog


def run(*argv: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """`python -m sentinel ARGV`, with no DSN inherited from the environment unless given in ``env``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PG") and k not in ("SENTINEL_DSN", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "sentinel", *argv], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def psql() -> str:
    found = shutil.which("psql")
    if found is None:
        bindir = pgserver.embedded_bin()
        assert bindir is not None, "neither a system psql nor the embedded one is available"
        found = str(bindir / "psql")
    return found


@pytest.mark.parametrize("command", ["sql", "migrate", "status", "check", "grant"])
def test_help_on_every_command(command: str) -> None:
    r = run(command, "--help")
    assert r.returncode == 0 and "--dsn" in r.stdout and "--json" in r.stdout


def test_bad_usage_exits_2() -> None:
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("sql", "--to", "x").returncode == 2


def test_printed_sql_applied_with_psql_equals_init_db(empty_db: Callable[[], str]) -> None:
    by_psql, by_init = empty_db(), empty_db()
    sql = run("sql")
    assert sql.returncode == 0 and sql.stdout.count("commit;") == len(sentinel.migrations())
    applied = subprocess.run([psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", by_psql], input=sql.stdout,
                             capture_output=True, text=True, env=dict(os.environ, **pgserver.libpq_env(by_psql)))
    assert applied.returncode == 0, applied.stderr
    with psycopg.connect(by_init, autocommit=True) as conn:
        sentinel.init_db(conn)
    a, b = catalog(by_psql), catalog(by_init)
    assert a == b
    assert run("check", "--dsn", by_psql).returncode == 0


def test_sql_from_to_and_plain() -> None:
    only_second = run("sql", "--from", "1", "--to", "2")
    assert "0002_pre_grants" in only_second.stdout and "0001_pre_core" not in only_second.stdout
    plain = run("sql", "--plain", "--to", "1").stdout
    assert "begin;" not in plain and "sentinel.migrations (id, name, checksum)\n    values" not in plain
    listed = json.loads(run("sql", "--json").stdout)
    assert [m["name"] for m in listed] == [m.name for m in sentinel.migrations()]
    assert run("sql", "--from", "99").returncode == 1


def test_migrate_status_check_lifecycle(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    dry = run("migrate", "--dry-run", "--dsn", dsn)
    assert dry.returncode == 0 and "would apply: " + ", ".join(m.name for m in sentinel.migrations()) in dry.stdout
    not_installed = run("check", "--dsn", dsn)
    assert not_installed.returncode == 1 and "not installed" in not_installed.stdout

    assert run("migrate", "--to", "1", "--dsn", dsn).returncode == 0
    behind = run("check", "--dsn", dsn)
    assert behind.returncode == 1 and "sentinel migrate" in behind.stdout
    st = json.loads(run("status", "--json", "--dsn", dsn).stdout)
    later = [m.name for m in sentinel.migrations()][1:]
    assert [m["state"] for m in st["migrations"]] == ["applied"] + ["pending"] * len(later)
    assert st["schema_version"] == 1

    up = run("migrate", "--dsn", dsn)
    assert up.returncode == 0 and "applied: " + ", ".join(later) in up.stdout
    assert run("check", "--dsn", dsn).returncode == 0
    text = run("status", "--dsn", dsn).stdout
    assert later[-1] in text and "applied" in text and text.strip().endswith("ok")
    assert "nothing to apply" in run("migrate", "--dsn", dsn).stdout


def test_drift_is_reported_and_refused(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    run("migrate", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update sentinel.migrations set checksum = 'hand-edited' where id = 2")
    st = json.loads(run("status", "--json", "--dsn", dsn).stdout)
    assert st["migrations"][1]["state"] == "drift" and not st["ok"]
    assert run("check", "--dsn", dsn).returncode == 1
    refused = run("migrate", "--dsn", dsn)
    assert refused.returncode == 1 and "drift" in refused.stderr


def test_dsn_from_environment(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    run("migrate", "--dsn", dsn)
    assert run("check", env={"SENTINEL_DSN": dsn}).returncode == 0
    assert run("check", env={"DATABASE_URL": dsn}).returncode == 0
    assert run("check", env=pgserver.libpq_env(dsn)).returncode == 0


def test_unreachable_database_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for command in (["status"], ["list", "--namespace", "payments"], ["inspect", "--namespace", "payments", "k"]):
        r = run(*command, "--dsn", f"host=127.0.0.1 port={port} connect_timeout=2")
        assert r.returncode == 3 and "database unavailable" in r.stderr, (command, r.stderr)
        assert r.stderr.count("database unavailable") == 1, f"{command[0]}: the prefix is repeated: {r.stderr!r}"


@pytest.fixture
def role(dsn: str) -> Iterator[Dict[str, str]]:
    name, password = f"sentinel_cli_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {name} login password '{password}'")
    yield {"name": name, "dsn": psycopg.conninfo.make_conninfo(dsn, user=name, password=password)}
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"drop owned by {name}")
        admin.execute(f"drop role {name}")


def test_grant_gives_a_role_what_once_needs(dsn: str, role: Dict[str, str], namespace: str) -> None:
    with sentinel.Sentinel(conninfo=role["dsn"], namespace=namespace, connect_timeout=5) as s:
        with pytest.raises(sentinel.PermissionDenied, match="sentinel grant"):
            s.once("k", lambda: 1)
    r = run("grant", role["name"], "--dsn", dsn)
    assert r.returncode == 0 and f"grant usage on schema sentinel to {role['name']};" in r.stdout
    assert "reconcile_v1" not in r.stdout
    with sentinel.Sentinel(conninfo=role["dsn"], namespace=namespace) as s:
        assert s.once("k", lambda: 1).response == 1
        with pytest.raises(sentinel.PermissionDenied):
            s.purge(0)
    op = json.loads(run("grant", role["name"], "--operator", "--json", "--dsn", dsn).stdout)
    assert any("purge_v1" in stmt for stmt in op["statements"])


def test_grant_unknown_role_fails_clearly(dsn: str) -> None:
    r = run("grant", "no_such_role_here", "--dsn", dsn)
    assert r.returncode == 1 and "role 'no_such_role_here' does not exist" in r.stderr


def test_old_schema_is_refused_at_first_use_with_the_command(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    run("migrate", "--to", "1", "--dsn", dsn)
    calls: list[Any] = []
    with sentinel.Sentinel(conninfo=dsn) as s, pytest.raises(sentinel.SchemaError, match="sentinel migrate"):
        s.once("k", lambda: calls.append(1))
    assert calls == []


@pytest.mark.parametrize("change", [{"dbname": "sentinel_no_such_db"}, {"user": "sentinel_no_such_role"}])
def test_refused_login_is_not_an_outage(dsn: str, change: Dict[str, str]) -> None:
    bad = make_conninfo(dsn, **change)
    r = run("list", "--namespace", "payments", "--dsn", bad)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "database unavailable" not in r.stderr and "refused the login" in r.stderr, r.stderr
    assert "check the user, password and database name" in r.stderr
    with sentinel.Sentinel(conninfo=bad, namespace="payments") as s:
        with pytest.raises(sentinel.LoginRefused):
            s.once("k", lambda: 1)


def test_with_no_dsn_the_cli_says_where_it_looked(tmp_path: Any) -> None:
    """No --dsn, $SENTINEL_DSN or $DATABASE_URL: libpq's defaults were used, and the message says so."""
    r = run("status", env={"PGHOST": str(tmp_path), "PGPORT": "1"})  # a socket folder with no server in it
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "no --dsn, $SENTINEL_DSN or $DATABASE_URL was given" in r.stderr, r.stderr
    assert f"PGHOST={tmp_path}" in r.stderr and "pass --dsn" in r.stderr, r.stderr
    given = run("status", "--dsn", f"host={tmp_path} port=1")
    assert given.returncode == 3 and "no --dsn" not in given.stderr, given.stderr


def test_a_dsn_without_the_password_the_server_asks_for_is_a_refused_login() -> None:
    """libpq's wording when the server wants a password and the DSN has none (PostgreSQL 15 in CI does)."""
    from sentinel._conn import login_refused

    exc = psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                                   "fe_sendauth: no password supplied")
    assert login_refused(exc) == "fe_sendauth: no password supplied"
    assert login_refused(psycopg.OperationalError("connection failed: Connection refused")) is None

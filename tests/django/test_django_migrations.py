"""`manage.py migrate` installs exactly the schema `init_db` installs, and both agree on the ledger."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List

import psycopg
import pytest
from djutil import EXAMPLE

import sentinel
from test_schema import CATALOG_QUERIES, catalog

SQL_NAMES = [m.name for m in sentinel.migrations()]


def manage(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python examples/django/manage.py ARGS`` with the example's database at ``dsn``."""
    env = dict(os.environ, SENTINEL_DJANGO_DSN=dsn, DJANGO_SETTINGS_MODULE="shop.settings")
    return subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True,
                          text=True, timeout=120)


def django_sentinel_migrations() -> List[Any]:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    return sorted((m for (app, _), m in loader.disk_migrations.items() if app == "sentinel"), key=lambda m: m.name)


def test_every_sql_file_is_applied_by_exactly_one_django_migration() -> None:
    from sentinel.contrib.django.operations import ApplySentinelMigration

    found = django_sentinel_migrations()
    assert [m.name for m in found] == SQL_NAMES, "one Django migration per SQL file, named after it"
    referenced: List[str] = []
    for migration in found:
        assert all(isinstance(op, ApplySentinelMigration) for op in migration.operations)
        referenced += [op.name for op in migration.operations]
    assert referenced == SQL_NAMES, "every SQL file is referenced exactly once, in order"
    # a linear chain in the files' order
    assert found[0].dependencies == []
    for before, after in zip(found, found[1:]):
        assert after.dependencies == [("sentinel", before.name)]
    # the operations read the packaged files (no copy of the SQL in Python)
    shipped = {m.name: m for m in sentinel.migrations()}
    for migration in found:
        op = migration.operations[0]
        assert op.migration() == shipped[op.name]


def test_makemigrations_finds_nothing_to_do(django_dsn: str) -> None:
    out = manage(django_dsn, "makemigrations", "--check", "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No changes detected" in out.stdout


def test_the_session_database_was_migrated_by_django(django_dsn: str) -> None:
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        st = sentinel.status(conn)
        assert st.pending == [] and st.drifted == [] and st.unknown == []
        assert [a.name for a in st.applied] == SQL_NAMES
        django_rows = conn.execute("select name from django_migrations where app = 'sentinel' order by id").fetchall()
    assert [r[0] for r in django_rows] == SQL_NAMES


def test_migrate_from_zero_builds_the_catalog_of_init_db(empty_db: Callable[[], str]) -> None:
    by_django, by_init_db = empty_db(), empty_db()
    out = manage(by_django, "migrate", "--no-input")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in SQL_NAMES:
        assert f"Applying sentinel.{name}... OK" in out.stdout
    with psycopg.connect(by_init_db, autocommit=True) as conn:
        assert sentinel.init_db(conn) == SQL_NAMES
    a, b = catalog(by_django), catalog(by_init_db)
    assert a["functions"] and a["ledger"], "the catalog query found nothing: the comparison would prove nothing"
    for part in CATALOG_QUERIES:
        assert a[part] == b[part], f"manage.py migrate and init_db differ in {part}"

    # init_db, `sentinel status` and `sentinel check` agree afterwards
    with psycopg.connect(by_django, autocommit=True) as conn:
        assert sentinel.init_db(conn) == []
        st = sentinel.status(conn)
    assert st.pending == [] and st.drifted == [] and st.problems() == []
    check = subprocess.run([sys.executable, "-m", "sentinel", "check", "--dsn", by_django], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    # reversing is refused, and changes nothing
    back = manage(by_django, "migrate", "sentinel", "zero", "--no-input")
    assert back.returncode != 0
    assert "IrreversibleError" in back.stderr and "0014_pre_lean_calls" in back.stderr
    assert catalog(by_django) == a


def test_migrate_after_init_db_applies_only_what_is_missing(empty_db: Callable[[], str]) -> None:
    partly, reference = empty_db(), empty_db()
    with psycopg.connect(partly, autocommit=True) as conn:
        assert sentinel.init_db(conn, to=2) == SQL_NAMES[:2]
        before = conn.execute("select id, applied_at from sentinel.migrations order by id").fetchall()
    out = manage(partly, "migrate", "--no-input")
    assert out.returncode == 0, out.stdout + out.stderr
    with psycopg.connect(reference, autocommit=True) as conn:
        sentinel.init_db(conn)
    a, b = catalog(partly), catalog(reference)
    for part in CATALOG_QUERIES:
        assert a[part] == b[part], f"init_db + manage.py migrate and init_db differ in {part}"
    with psycopg.connect(partly, autocommit=True) as conn:
        after = conn.execute("select id, applied_at from sentinel.migrations order by id").fetchall()
        recorded = conn.execute("select name from django_migrations where app = 'sentinel' order by id").fetchall()
    assert after[:2] == before, "the rows init_db wrote are kept, not rewritten"
    assert [r[0] for r in recorded] == SQL_NAMES


def test_migrate_refuses_a_drifted_ledger(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn, to=1)
        conn.execute("update sentinel.migrations set checksum = 'not-the-file' where id = 1")
    out = manage(dsn, "migrate", "--no-input")
    assert out.returncode != 0
    assert "drifted" in out.stderr and "0001_pre_core" in out.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from sentinel.migrations").fetchone() == (1,)


def test_sqlmigrate_prints_the_file_and_its_ledger_row() -> None:
    from django.core.management import call_command

    m = sentinel.migrations()[1]
    out = io.StringIO()
    call_command("sqlmigrate", "sentinel", m.name, stdout=out)
    text = out.getvalue()
    assert m.sql.strip() in text
    assert f"values ({m.id}, '{m.name}', '{m.checksum}')" in text
    assert "pg_advisory_xact_lock(hashtext('sentinel.init_db'))" in text


def test_the_schema_goes_only_to_sentinels_database(settings: Any) -> None:
    """On another alias (here SQLite) the operation does nothing; on Sentinel's alias it must be PostgreSQL."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    from sentinel.contrib.django.operations import ApplySentinelMigration

    op = ApplySentinelMigration(SQL_NAMES[0])

    class Editor:
        collect_sql = False
        executed: List[str] = []

        def __init__(self, alias: str) -> None:
            self.connection = connections[alias]

        def execute(self, sql: str, params: Any = None) -> None:
            self.executed.append(sql)

    op.database_forwards("sentinel", Editor("lite"), None, None)
    assert Editor.executed == []
    settings.SENTINEL = {"DATABASE": "lite"}
    with pytest.raises(ImproperlyConfigured, match="needs PostgreSQL"):
        op.database_forwards("sentinel", Editor("lite"), None, None)
    assert Editor.executed == []


def test_system_check_reports_a_database_that_is_not_postgresql(settings: Any) -> None:
    from sentinel.contrib.django.apps import check_settings

    assert check_settings() == []
    settings.SENTINEL = {"DATABASE": "lite"}
    errors: List[Dict[str, Any]] = [{"id": e.id, "msg": e.msg} for e in check_settings()]
    assert len(errors) == 1 and errors[0]["id"] == "sentinel.E001"
    assert "sqlite" in errors[0]["msg"]

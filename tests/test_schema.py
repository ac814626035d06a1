"""The schema's life cycle: schema.sql versus migrations, init_db, packaging."""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import psycopg
import pytest

import sentinel
from sentinel import SchemaError

ROOT = Path(__file__).resolve().parent.parent
ALL = [m.name for m in sentinel.migrations()]

# Everything that defines the schema, as text, so two databases can be compared.
CATALOG_QUERIES: Dict[str, str] = {
    "schema": """
        select n.nspname, obj_description(n.oid, 'pg_namespace'), n.nspacl::text
          from pg_namespace n where n.nspname = 'sentinel'""",
    "relations": """
        select c.relname, c.relkind, c.reloptions::text, c.relacl::text, obj_description(c.oid, 'pg_class')
          from pg_class c where c.relnamespace = 'sentinel'::regnamespace order by 1""",
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
          from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
          left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
         where c.relnamespace = 'sentinel'::regnamespace order by 1, 2""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          from pg_constraint where connamespace = 'sentinel'::regnamespace order by 1, 2""",
    "indexes": """
        select indexname, indexdef from pg_indexes where schemaname = 'sentinel' order by 1""",
    "sequences": """
        select seqrelid::regclass::text, seqtypid::regtype::text, seqstart, seqincrement, seqmax, seqmin,
               seqcache, seqcycle
          from pg_sequence where seqrelid::regclass::text like 'sentinel.%' order by 1""",
    "functions": """
        select p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               p.prosrc, p.prosecdef, p.proconfig::text, p.provolatile, p.proacl::text,
               obj_description(p.oid, 'pg_proc'), l.lanname
          from pg_proc p join pg_language l on l.oid = p.prolang
         where p.pronamespace = 'sentinel'::regnamespace order by 1, 2""",
    "types": """
        select t.typname, t.typtype, obj_description(t.oid, 'pg_type')
          from pg_type t where t.typnamespace = 'sentinel'::regnamespace order by 1""",
    "triggers": """
        select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
          from pg_trigger where not tgisinternal
           and tgrelid in (select oid from pg_class where relnamespace = 'sentinel'::regnamespace) order by 1, 2""",
    "grantable": "select function, operator from sentinel.grantable order by 1",
    "limits": "select name, value from sentinel.limits order by 1",
    "ledger": "select id, name, checksum from sentinel.migrations order by id",
}


def catalog(dsn: str) -> Dict[str, List[Tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: [tuple(r) for r in conn.execute(q).fetchall()] for name, q in CATALOG_QUERIES.items()}


def _psql_install(dsn: str) -> None:
    """`psql -f sql/schema.sql`, as a DBA installs a new database by hand."""
    from test_cli import psql

    done = subprocess.run([psql(), "--single-transaction", "-v", "ON_ERROR_STOP=1", "-q", "-d", dsn,
                           "-f", str(sentinel.sql_dir() / "schema.sql")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _differences(a: Dict[str, List[Tuple[Any, ...]]], b: Dict[str, List[Tuple[Any, ...]]]) -> List[str]:
    return [part for part in CATALOG_QUERIES if a[part] != b[part]]


def test_the_current_schema_and_the_migrations_build_the_same_catalog(empty_db: Callable[[], str]) -> None:
    """init_db on an empty database (sql/schema/), psql -f sql/schema.sql, and every migration in turn."""
    fresh, by_psql, upgraded = empty_db(), empty_db(), empty_db()
    with psycopg.connect(fresh, autocommit=True) as conn:
        assert sentinel.init_db(conn) == ALL
    _psql_install(by_psql)
    with psycopg.connect(upgraded, autocommit=True) as conn:
        for m in sentinel.migrations():  # one migration at a time, as the upgrades of real databases went
            assert sentinel.init_db(conn, to=m.id) == [m.name]
    a, b, c = catalog(fresh), catalog(by_psql), catalog(upgraded)
    assert a["functions"] and a["triggers"] and a["grantable"], "the catalog query found nothing to compare"
    assert _differences(a, c) == [], "sql/schema/ and the migrations build different catalogs"
    assert _differences(b, c) == [], "sql/schema.sql and the migrations build different catalogs"


def test_the_comparison_sees_a_changed_function_body_comment_or_grant(empty_db: Callable[[], str]) -> None:
    """The catalog comparison can fail: one changed line in one function is enough."""
    one, other = empty_db(), empty_db()
    for dsn in (one, other):
        with psycopg.connect(dsn, autocommit=True) as conn:
            sentinel.init_db(conn)
    assert _differences(catalog(one), catalog(other)) == []
    with psycopg.connect(other, autocommit=True) as conn:
        body = conn.execute("select pg_get_functiondef('sentinel.heartbeat_v1(text, text, bigint)'::regprocedure)"
                            ).fetchone()
        assert body is not None
        changed = body[0].replace("$function$\n", "$function$\n-- one line more\n", 1)
        assert changed != body[0]
        conn.execute(changed.encode())
    assert _differences(catalog(one), catalog(other)) == ["functions"]
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("comment on table sentinel.limits is 'changed'")
        conn.execute("insert into sentinel.grantable values ('sentinel.nothing()', false, 'app')")
    assert _differences(catalog(one), catalog(other)) == ["relations", "functions", "grantable"]


def test_schema_sql_records_the_checksums_of_the_migration_files(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    _psql_install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert sentinel.init_db(conn) == [], "init_db after schema.sql must find nothing to apply"


def test_init_db_twice_applies_nothing_the_second_time(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn) as conn:  # not autocommit: init_db must cope and restore it
        assert sentinel.init_db(conn) == ALL
        assert sentinel.init_db(conn) == []
        assert conn.autocommit is False
        version = conn.execute("select sentinel.schema_version()").fetchone()
    assert version == (sentinel.required_version(),)


def _init_worker(dsn: str, barrier: Any, out: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        barrier.wait(timeout=30)
        try:
            out.put(("ok", sentinel.init_db(conn)))
        except Exception as exc:  # reported to the test, which fails on it
            out.put(("error", repr(exc)))


def test_eight_concurrent_installers_apply_each_migration_once(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_init_worker, args=(dsn, barrier, out)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [r for r in results if r[0] != "ok"] == []
    applied = [r[1] for r in results if r[1]]
    assert applied == [ALL], f"exactly one installer applies the migrations, got {results}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select id, count(*) from sentinel.migrations group by id order by id").fetchall()
    assert rows == [(m.id, 1) for m in sentinel.migrations()]


def test_drift_is_refused(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute("update sentinel.migrations set checksum = 'edited' where id = 1")
        with pytest.raises(SchemaError, match="drifted"):
            sentinel.init_db(conn)


def test_once_without_schema_says_how_to_install(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    calls: List[int] = []
    with sentinel.Sentinel(conninfo=dsn) as s, pytest.raises(SchemaError, match="init_db"):
        s.once("k", lambda: calls.append(1))
    assert calls == []


def test_migration_files_are_numbered_and_name_their_phase() -> None:
    names = sorted(p.name for p in (sentinel.sql_dir() / "migrations").iterdir())
    assert names, "no migration files"
    for i, name in enumerate(names, start=1):
        assert re.fullmatch(r"\d{4}_(pre|post)_[a-z0-9_]+\.sql", name), name
        assert int(name[:4]) == i, f"{name}: migrations must be numbered 1..N without gaps"


def test_every_function_has_a_comment(conn: psycopg.Connection[Any]) -> None:
    missing = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'sentinel'::regnamespace and obj_description(p.oid, 'pg_proc') is null"""
    ).fetchall()
    assert missing == []


def test_wheel_ships_the_sql(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sentinel_coordination-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    for m in sentinel.migrations():
        assert f"sentinel/sql/migrations/{m.name}.sql" in names
    assert {"sentinel/sql/schema.sql", "sentinel/sql/schema/20_acquire.sql", "sentinel/py.typed",
            "sentinel/__init__.py"} <= names
    # Imported from the wheel, the package finds its own SQL, not the checkout's.
    found = subprocess.run(
        [sys.executable, "-c", "import sentinel; print(sentinel.sql_dir())"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert found == str((tmp_path / "site" / "sentinel" / "sql").resolve())

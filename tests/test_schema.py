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
    "ledger": "select id, name, checksum from sentinel.migrations order by id",
}


def catalog(dsn: str) -> Dict[str, List[Tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: [tuple(r) for r in conn.execute(q).fetchall()] for name, q in CATALOG_QUERIES.items()}


def test_schema_sql_and_migrations_build_the_same_catalog(empty_db: Callable[[], str]) -> None:
    from_file, from_migrations = empty_db(), empty_db()
    with psycopg.connect(from_file, autocommit=True) as conn:
        conn.execute((sentinel.sql_dir() / "schema.sql").read_text().encode())
    with psycopg.connect(from_migrations, autocommit=True) as conn:
        applied = sentinel.init_db(conn)
    assert applied == [m.name for m in sentinel.migrations()]
    a, b = catalog(from_file), catalog(from_migrations)
    assert a["functions"], "the catalog query found no functions: the comparison would prove nothing"
    for part in CATALOG_QUERIES:
        assert a[part] == b[part], f"schema.sql and the migrations differ in {part}"


def test_schema_sql_records_the_checksums_of_the_migration_files(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((sentinel.sql_dir() / "schema.sql").read_text().encode())
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
    assert {"sentinel/sql/schema.sql", "sentinel/py.typed", "sentinel/__init__.py"} <= names
    # Imported from the wheel, the package finds its own SQL, not the checkout's.
    found = subprocess.run(
        [sys.executable, "-c", "import sentinel; print(sentinel.sql_dir())"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert found == str((tmp_path / "site" / "sentinel" / "sql").resolve())

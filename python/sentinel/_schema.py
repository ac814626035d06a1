"""The packaged SQL, the installer (``init_db``) and schema version checks."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import psycopg

from ._conn import autocommit, wrap_exceptions
from .errors import SchemaError

logger = logging.getLogger("sentinel")

#: The protocol versions this client speaks: the ``_v1`` functions, and
#: ``complete_v2``/``fail_v2`` (recording with retention), and version 3: the calls that
#: change a claim present its token (``heartbeat_v2``, ``complete_v3``, ``fail_v3``,
#: ``abandon_v2``) and private notifications (``watch_v2``).
API_VERSIONS = (1, 2, 3)

_MIGRATION_NAME = re.compile(r"^(\d{4})_(pre|post)_([a-z0-9_]+)\.sql$")

# Serialises installers: pg_advisory_lock(hashtext('sentinel.init_db')).
_LOCK_SQL = "select pg_advisory_lock(hashtext('sentinel.init_db'))"
_UNLOCK_SQL = "select pg_advisory_unlock(hashtext('sentinel.init_db'))"

MIGRATE_HINT = "run `sentinel migrate --dsn <this database>` (or sentinel.init_db(conn) from Python)"


def sql_dir() -> Path:
    """The folder holding ``schema/`` (the current schema), ``schema.sql`` and ``migrations/``.

    Inside a wheel it is ``sentinel/sql``; in a source checkout, the top-level
    ``sql/`` folder of the repository.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "sql"
    if (packaged / "migrations").is_dir():
        return packaged
    checkout = here.parent.parent / "sql"
    if (checkout / "migrations").is_dir():
        return checkout
    raise SchemaError(f"Sentinel's SQL files are missing (looked in {packaged} and {checkout})")


@dataclass(frozen=True)
class Migration:
    """One migration file: ``NNNN_(pre|post)_name.sql``."""

    id: int
    name: str
    phase: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, as recorded in ``sentinel.migrations``."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def script(self) -> str:
        """The file wrapped in a transaction that also records it in the ledger (for psql)."""
        return (
            f"-- Sentinel migration {self.name} (sha256 {self.checksum})\n"
            "begin;\n"
            f"{self.sql.rstrip()}\n"
            "insert into sentinel.migrations (id, name, checksum)\n"
            f"    values ({self.id}, '{self.name}', '{self.checksum}');\n"
            "commit;\n"
        )


def migrations(folder: Optional[Path] = None) -> List[Migration]:
    """Every migration shipped with this client (or found in ``folder``), in order."""
    found: List[Migration] = []
    for path in sorted(((folder or sql_dir()) / "migrations").glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if m is None:
            raise SchemaError(f"migration file {path.name} does not match NNNN_(pre|post)_name.sql")
        found.append(Migration(int(m.group(1)), path.stem, m.group(2), path.read_text(encoding="utf-8")))
    ids = [m.id for m in found]
    if ids != list(range(1, len(ids) + 1)):
        raise SchemaError(f"migration numbers must run 1..N without gaps, found {ids}")
    return found


def schema_files(folder: Optional[Path] = None) -> List[Path]:
    """The current schema, one file per part of the protocol (``sql/schema/*.sql``), in the order to apply."""
    found = sorted(((folder or sql_dir()) / "schema").glob("[0-9][0-9]_*.sql"))
    if not found:
        raise SchemaError(f"Sentinel's schema files are missing from {(folder or sql_dir()) / 'schema'}")
    return found


def _install_current(conn: psycopg.Connection[Any], mine: List[Migration]) -> None:
    """Install the current schema (``sql/schema/``) on an empty database, recording every migration, at once."""
    with conn.transaction():
        conn.execute("set local lock_timeout = '10s'")
        conn.execute("set local statement_timeout = '60s'")
        for path in schema_files():
            conn.execute(path.read_text(encoding="utf-8").encode("utf-8"), prepare=False)
        with conn.cursor() as cur:
            cur.executemany("insert into sentinel.migrations (id, name, checksum) values (%s, %s, %s)",
                            [(m.id, m.name, m.checksum) for m in mine])


def required_version(folder: Optional[Path] = None) -> int:
    """The schema version this client needs: its newest ``pre`` migration.

    ``post`` migrations only remove what older clients used, so a client does
    not wait for them.
    """
    pre = [m.id for m in migrations(folder) if m.phase == "pre"]
    return max(pre) if pre else 0


@dataclass
class AppliedMigration:
    """A row of ``sentinel.migrations``."""

    id: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str


@dataclass
class SchemaStatus:
    """Where a database stands against this client's migrations."""

    schema_version: Optional[int]
    required_version: int
    latest_version: int
    api_versions: List[int]
    applied: List[AppliedMigration] = field(default_factory=list)
    pending: List[Migration] = field(default_factory=list)
    drifted: List[str] = field(default_factory=list)
    unknown: List[str] = field(default_factory=list)
    #: the session's transaction isolation as the check saw it (the role's or database's default)
    isolation: str = "read committed"
    #: whether this role may read the ledger ``sentinel.migrations`` (an application role may not: its
    #: status then comes from ``schema_version()`` alone, without the drift check)
    ledger_readable: bool = True

    @property
    def installed(self) -> bool:
        """Whether the schema exists at all."""
        return self.schema_version is not None

    def problems(self) -> List[str]:
        """Why this client cannot use the database as it is (empty when it can)."""
        out: List[str] = []
        if self.schema_version is None:
            out.append(f"the Sentinel schema is not installed: {MIGRATE_HINT}")
            return out
        if self.drifted:
            out.append(
                "applied migrations differ from this client's files (drift): " + ", ".join(self.drifted)
            )
        if self.schema_version < self.required_version:
            out.append(
                f"database schema version {self.schema_version} is older than this client needs "
                f"({self.required_version}): {MIGRATE_HINT}"
            )
        missing = [v for v in API_VERSIONS if v not in self.api_versions]
        if missing and self.schema_version >= self.required_version:
            out.append(
                f"database schema version {self.schema_version} no longer provides protocol "
                f"{', '.join(f'v{v}' for v in missing)} (it provides {self.api_versions}): "
                "upgrade sentinel-coordination"
            )
        return out

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-ready summary (for ``sentinel status --json``)."""
        applied = {a.id: a for a in self.applied}
        rows: List[Dict[str, Any]] = []
        pending = {m.id for m in self.pending}
        for m in migrations():
            a = applied.get(m.id)
            state = ("drift" if m.name in self.drifted else "applied" if a else
                     "pending" if m.id in pending else "applied (ledger not readable)")
            rows.append({
                "id": m.id,
                "name": m.name,
                "phase": m.phase,
                "state": state,
                "applied_at": a.applied_at.isoformat() if a else None,
                "applied_by": a.applied_by if a else None,
            })
        for name in self.unknown:
            rows.append({"id": None, "name": name, "phase": None, "state": "unknown",
                         "applied_at": None, "applied_by": None})
        return {
            "schema_version": self.schema_version,
            "required_version": self.required_version,
            "latest_version": self.latest_version,
            "api_versions": self.api_versions,
            "client_api_versions": list(API_VERSIONS),
            "ok": not self.problems(),
            "problems": self.problems(),
            "ledger_readable": self.ledger_readable,
            "migrations": rows,
        }


def _version_row(conn: psycopg.Connection[Any]) -> tuple[Optional[int], List[int]]:
    version, apis, _ = _version_isolation(conn)
    return version, apis


def _version_isolation(conn: psycopg.Connection[Any]) -> tuple[Optional[int], List[int], str]:
    """Schema version, protocol versions and the session's isolation, from the same round trips."""
    row = conn.execute(
        "select to_regprocedure('sentinel.schema_version()') is not null,"
        " to_regprocedure('sentinel.api_versions()') is not null, current_setting('transaction_isolation')"
    ).fetchone()
    isolation = str(row[2]) if row else "read committed"
    if not row or not row[0]:
        return None, [], isolation
    version_row = conn.execute("select sentinel.schema_version()").fetchone()
    version = int(version_row[0]) if version_row else None
    if row[1]:
        api_row = conn.execute("select sentinel.api_versions()").fetchone()
        apis = sorted(int(v) for v in (api_row[0] if api_row else []))
    else:
        apis = [1]  # schema version 1 predates api_versions() and provides _v1
    return version, apis, isolation


def status(conn: psycopg.Connection[Any]) -> SchemaStatus:
    """Compare the database of ``conn`` with this client's migrations."""
    mine = migrations()
    with wrap_exceptions():
        version, apis = _version_row(conn)
        applied: List[AppliedMigration] = []
        exists = conn.execute(
            "select to_regclass('sentinel.migrations') is not null, to_regclass('sentinel.migrations') is not null"
            " and has_table_privilege('sentinel.migrations', 'select')").fetchone()
        readable = bool(exists and exists[1])
        if readable:
            applied = [
                AppliedMigration(int(r[0]), str(r[1]), str(r[2]), r[3], str(r[4]))
                for r in conn.execute(
                    "select id, name, checksum, applied_at, applied_by from sentinel.migrations order by id"
                )
            ]
    by_id = {m.id: m for m in mine}
    done = {a.id: a for a in applied}
    drifted = [by_id[a.id].name for a in applied if a.id in by_id and by_id[a.id].checksum != a.checksum]
    unknown = [a.name for a in applied if a.id not in by_id]
    unreadable = bool(exists and exists[0]) and not readable
    return SchemaStatus(
        schema_version=version,
        required_version=required_version(),
        latest_version=mine[-1].id if mine else 0,
        api_versions=apis,
        applied=applied,
        # Without the ledger, what schema_version() says is applied is taken as applied.
        pending=[m for m in mine if (m.id > (version or 0) if unreadable else m.id not in done)],
        drifted=drifted,
        unknown=unknown,
        ledger_readable=not unreadable,
    )


def check_compatible(conn: psycopg.Connection[Any]) -> SchemaStatus:
    """Raise :class:`SchemaError` unless this client can use the database as it is.

    Reads only ``schema_version()`` and ``api_versions()``, which every role
    may call, so an application role needs no access to the ledger.
    """
    mine = migrations()
    with wrap_exceptions():
        version, apis, isolation = _version_isolation(conn)
    st = SchemaStatus(schema_version=version, required_version=required_version(),
                      latest_version=mine[-1].id if mine else 0, api_versions=apis, isolation=isolation)
    problems = st.problems()
    if problems:
        raise SchemaError("; ".join(problems))
    return st


def init_db(conn: psycopg.Connection[Any], *, to: Optional[int] = None) -> List[str]:
    """Install or upgrade the Sentinel schema in the database of ``conn``.

    On an empty database (and without ``to``) it installs the current schema,
    ``sql/schema/*.sql``, in one transaction and records every migration in
    ``sentinel.migrations``. Otherwise it applies every pending migration (up
    to and including ``to``, when given), each in its own transaction
    together with its row in ``sentinel.migrations`` (id, name, SHA-256
    checksum). Both paths end in the same catalog. Safe to call many
    times and from several processes at once: installers are serialised by an
    advisory lock, and a second one finds nothing to do.

    Raises :class:`SchemaError` when an applied migration differs from the
    file this client ships (drift), or when the database is newer than this
    client and no longer provides its protocol version. A database that is
    newer but compatible is left alone.

    ``conn`` must not be inside a transaction; its autocommit setting is
    restored afterwards. Returns the names of the migrations applied.
    """
    todo = [m for m in migrations() if to is None or m.id <= to]
    done: List[str] = []
    with wrap_exceptions(), autocommit(conn):
        conn.execute(_LOCK_SQL)
        try:
            st = status(conn)
            if st.drifted:
                raise SchemaError(
                    "applied migrations differ from this client's files, the schema has drifted: "
                    + ", ".join(st.drifted)
                )
            if st.unknown:
                if any(v not in st.api_versions for v in API_VERSIONS):
                    raise SchemaError(st.problems()[-1])
                logger.info("the database has migrations this client does not know (%s); it still "
                            "provides the protocol versions of this client, nothing to do", ", ".join(st.unknown))
            applied = {a.id for a in st.applied}
            if to is None and not st.installed and not applied:
                # An empty database: the current schema in one transaction, the same catalog as
                # every migration in turn (tests/test_schema.py compares them).
                _install_current(conn, todo)
                logger.info("installed schema version %s", todo[-1].id if todo else 0)
                return [m.name for m in todo]
            for m in todo:
                if m.id in applied:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode("utf-8"), prepare=False)
                    conn.execute(
                        "insert into sentinel.migrations (id, name, checksum) values (%s, %s, %s)",
                        (m.id, m.name, m.checksum),
                    )
                logger.info("applied migration %s", m.name, extra={"sentinel_migration": m.name})
                done.append(m.name)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute(_UNLOCK_SQL)
    return done

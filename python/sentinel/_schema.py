"""The packaged SQL and the installer (``init_db``)."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import psycopg

from ._conn import wrap_exceptions
from .errors import SchemaError

logger = logging.getLogger("sentinel")

#: The schema version this client needs: the newest migration it ships.
_MIGRATION_NAME = re.compile(r"^(\d{4})_(pre|post)_([a-z0-9_]+)\.sql$")

# pg_advisory_lock key that serialises installers: hashtext('sentinel.init_db').
_LOCK_SQL = "select pg_advisory_lock(hashtext('sentinel.init_db'))"
_UNLOCK_SQL = "select pg_advisory_unlock(hashtext('sentinel.init_db'))"


def sql_dir() -> Path:
    """The folder holding ``schema.sql`` and ``migrations/``.

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
    """One migration file."""

    id: int
    name: str
    phase: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, as recorded in ``sentinel.migrations``."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def migrations() -> List[Migration]:
    """Every migration shipped with this client, in order."""
    found: List[Migration] = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if m is None:
            raise SchemaError(f"migration file {path.name} does not match NNNN_(pre|post)_name.sql")
        found.append(Migration(int(m.group(1)), path.stem, m.group(2), path.read_text(encoding="utf-8")))
    ids = [m.id for m in found]
    if ids != list(range(1, len(ids) + 1)):
        raise SchemaError(f"migration numbers must run 1..N without gaps, found {ids}")
    return found


def required_version() -> int:
    """The schema version this client needs (its newest migration)."""
    return migrations()[-1].id


def _applied(conn: psycopg.Connection[Any]) -> Optional[dict[int, str]]:
    row = conn.execute("select to_regclass('sentinel.migrations') is not null").fetchone()
    if not row or not row[0]:
        return None
    return {int(r[0]): str(r[1]) for r in conn.execute("select id, checksum from sentinel.migrations")}


def init_db(conn: psycopg.Connection[Any]) -> List[str]:
    """Install or upgrade the Sentinel schema in the database of ``conn``.

    Applies every pending migration, each in its own transaction, and records
    it with its checksum in ``sentinel.migrations``. Safe to call many times and
    from several processes at once: installers are serialised by an advisory
    lock, and a second one finds nothing to do. Raises :class:`SchemaError` if
    an applied migration differs from the file this client ships.

    ``conn`` must not be inside a transaction; it is left in autocommit mode as
    it was found. Returns the names of the migrations applied.
    """
    from ._conn import autocommit

    todo = migrations()
    done: List[str] = []
    with wrap_exceptions(), autocommit(conn):
        conn.execute(_LOCK_SQL)
        try:
            applied = _applied(conn) or {}
            for m in todo:
                if m.id in applied:
                    if applied[m.id] != m.checksum:
                        raise SchemaError(
                            f"migration {m.name} was applied with checksum {applied[m.id][:12]}…, "
                            f"but this client's file has {m.checksum[:12]}…: the schema has drifted"
                        )
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode("utf-8"), prepare=False)
                    conn.execute(
                        "insert into sentinel.migrations (id, name, checksum) values (%s, %s, %s)",
                        (m.id, m.name, m.checksum),
                    )
                logger.info("sentinel: applied migration %s", m.name, extra={"sentinel_migration": m.name})
                done.append(m.name)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute(_UNLOCK_SQL)
    return done

"""The Django migration operation that applies one of Sentinel's packaged SQL migrations.

Each ``sentinel/contrib/django/migrations/NNNN_*.py`` holds one
:class:`ApplySentinelMigration` naming one ``sql/migrations/NNNN_*.sql`` file.
The operation reads the file through :func:`sentinel.migrations` (the same
text ``init_db`` applies; no copy of the SQL lives in Python) and, in the same
transaction, records it in Sentinel's ledger ``sentinel.migrations`` with its
SHA-256, exactly as ``init_db`` does. So ``init_db``, ``sentinel status`` and
``sentinel migrate`` agree with ``manage.py migrate`` in both directions:

- a migration ``init_db`` already applied (same checksum) is skipped, and only
  recorded by Django as applied;
- a ledger row with another checksum (drift) stops ``migrate`` with
  :class:`sentinel.SchemaError`;
- concurrent installers (``init_db`` in another process, a second ``migrate``)
  are serialised by the advisory lock ``init_db`` takes.

The schema is installed only in the database Sentinel uses
(``settings.SENTINEL["DATABASE"]``, default ``"default"``) and where the
database routers allow the app ``sentinel`` to migrate; on other aliases the
operation does nothing (Django still records the migration there). Reversing is
not supported: ``migrate sentinel zero`` raises ``IrreversibleError``. To
remove Sentinel, drop the schema by hand (``drop schema sentinel cascade``)
and ``migrate sentinel zero --fake``.

``manage.py sqlmigrate sentinel 0001`` prints the SQL that would run: the lock,
the file and the ledger row.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from django.db import router
from django.db.migrations.operations import base as _base

from ..._schema import _LOCK_SQL, Migration, migrations
from ...errors import SchemaError

__all__ = ["ApplySentinelMigration"]

# The transaction-level twin of init_db's session lock (same key): an
# installer of either kind waits for the other.
_XACT_LOCK_SQL = _LOCK_SQL.replace("pg_advisory_lock", "pg_advisory_xact_lock")
_LEDGER_SQL = "insert into sentinel.migrations (id, name, checksum) values (%s, %s, %s)"


class ApplySentinelMigration(_base.Operation):  # type: ignore[misc]
    """Apply the packaged SQL migration ``name`` (e.g. ``"0001_pre_core"``) and record it in the ledger."""

    # Django >= 5.1 prefixes descriptions with a category symbol ("s" for SQL).
    category = getattr(getattr(_base, "OperationCategory", None), "SQL", None)
    reversible = False
    reduces_to_sql = True
    atomic = True
    elidable = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.migration()  # fail at load time if the file is not shipped

    def migration(self) -> Migration:
        """The packaged migration this operation applies."""
        for m in migrations():
            if m.name == self.name:
                return m
        raise SchemaError(
            f"Django migration of app 'sentinel' names the SQL migration {self.name!r}, which this "
            f"sentinel-coordination does not ship ({[m.name for m in migrations()]})"
        )

    def deconstruct(self) -> Tuple[str, List[Any], Dict[str, Any]]:
        return (self.__class__.__qualname__, [self.name], {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        """No model state: the schema lives outside Django's models."""

    def describe(self) -> str:
        return f"Apply Sentinel SQL migration {self.name} (and record it in sentinel.migrations)"

    @property
    def migration_name_fragment(self) -> str:
        return f"sentinel_{self.name}"

    def _applies_to(self, connection: Any, app_label: str) -> bool:
        from .conf import check_postgresql, database_alias

        if connection.alias != database_alias():
            return False
        if not router.allow_migrate(connection.alias, app_label):
            return False
        check_postgresql(connection.alias)
        return True

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        connection = schema_editor.connection
        if not self._applies_to(connection, app_label):
            return
        m = self.migration()
        schema_editor.execute(_XACT_LOCK_SQL, params=None)
        if not schema_editor.collect_sql:
            with connection.cursor() as cursor:
                cursor.execute("select to_regclass('sentinel.migrations') is not null")
                (ledger,) = cursor.fetchone()
                row = None
                if ledger:
                    cursor.execute("select checksum from sentinel.migrations where id = %s", [m.id])
                    row = cursor.fetchone()
            if row is not None:
                if row[0] != m.checksum:
                    raise SchemaError(
                        f"sentinel.migrations records {m.name} with checksum {row[0]}, but the shipped file "
                        f"has {m.checksum}: the schema has drifted"
                    )
                return  # applied by init_db / `sentinel migrate` already
        schema_editor.execute(m.sql, params=None)
        schema_editor.execute(_LEDGER_SQL, params=(m.id, m.name, m.checksum))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from django.db.migrations.exceptions import IrreversibleError

        raise IrreversibleError(
            f"Sentinel migration {self.name} cannot be reversed: drop the schema by hand "
            "(drop schema sentinel cascade) and run `migrate sentinel zero --fake`"
        )

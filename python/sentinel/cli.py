"""The ``sentinel`` command: print, apply and check the schema; grant roles.

Every command takes ``--dsn`` (falling back to ``SENTINEL_DSN``, then
``DATABASE_URL``, then libpq's own ``PG*`` variables) and ``--json``. Exit
codes: 0 success, 1 the check or operation failed, 2 bad usage, 3 the database
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

import psycopg

from ._schema import API_VERSION, init_db, migrations, status
from .errors import DatabaseUnavailable, SentinelError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _dsn(args: argparse.Namespace) -> str:
    given: Optional[str] = args.dsn or os.environ.get("SENTINEL_DSN") or os.environ.get("DATABASE_URL")
    return given or ""  # empty: libpq reads PGHOST, PGDATABASE, ...


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(_dsn(args), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect: {str(exc).strip()}") from exc


def _emit(args: argparse.Namespace, data: Dict[str, Any], text: Callable[[], str], out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        out.write(text())


def cmd_sql(args: argparse.Namespace, out: TextIO) -> int:
    """Print migrations (from, to] for review or for psql, Flyway, Sqitch or Liquibase."""
    chosen = [m for m in migrations() if m.id > args.from_ and (args.to is None or m.id <= args.to)]
    if not chosen:
        sys.stderr.write(f"sentinel sql: no migrations after {args.from_}" +
                         (f" up to {args.to}" if args.to is not None else "") + "\n")
        return EXIT_FAILED
    if args.json:
        out.write(json.dumps([{"id": m.id, "name": m.name, "phase": m.phase, "checksum": m.checksum,
                               "sql": m.sql} for m in chosen], indent=2) + "\n")
        return EXIT_OK
    for m in chosen:
        if args.plain:
            out.write(f"-- Sentinel migration {m.name}\n{m.sql.rstrip()}\n\n")
        else:
            out.write(m.script() + "\n")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show applied, pending, drifted and unknown migrations."""
    with _connect(args) as conn:
        st = status(conn)
    data = st.as_dict()

    def text() -> str:
        lines = [
            f"schema version: {st.schema_version if st.installed else 'not installed'} "
            f"(this client needs {st.required_version}, ships {st.latest_version}, speaks protocol "
            f"v{API_VERSION}; database provides {st.api_versions or 'none'})"
        ]
        for row in data["migrations"]:
            when = f"  {row['applied_at']} by {row['applied_by']}" if row["applied_at"] else ""
            lines.append(f"  {row['name']:<32} {row['state']}{when}")
        for p in st.problems():
            lines.append(f"problem: {p}")
        lines.append("ok" if not st.problems() else "not ok")
        return "\n".join(lines) + "\n"

    _emit(args, data, text, out)
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 1 when the schema is behind what this client needs, drifted, or incompatible."""
    with _connect(args) as conn:
        st = status(conn)
    problems = st.problems()
    data = {"ok": not problems, "problems": problems, "schema_version": st.schema_version,
            "required_version": st.required_version}
    _emit(args, data, lambda: "\n".join(problems or [f"ok: schema version {st.schema_version}"]) + "\n", out)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """Apply pending migrations (up to --to), each in its own transaction."""
    with _connect(args) as conn:
        if args.dry_run:
            st = status(conn)
            pending = [m.name for m in st.pending if args.to is None or m.id <= args.to]
            _emit(args, {"dry_run": True, "pending": pending},
                  lambda: ("would apply: " + ", ".join(pending) if pending else "nothing to apply") + "\n", out)
            return EXIT_OK
        applied = init_db(conn, to=args.to)
        st = status(conn)
    _emit(args, {"applied": applied, "schema_version": st.schema_version},
          lambda: (f"applied: {', '.join(applied)}" if applied else "nothing to apply")
          + f"\nschema version: {st.schema_version}\n", out)
    return EXIT_OK


def cmd_grant(args: argparse.Namespace, out: TextIO) -> int:
    """Give ROLE what an application (or, with --operator, an operator) needs."""
    from ._conn import wrap_exceptions

    with _connect(args) as conn, wrap_exceptions():
        row = conn.execute("select sentinel.grant_v1(%s, %s)", (args.role, args.operator)).fetchone()
    statements: List[str] = list(row[0]) if row else []
    _emit(args, {"role": args.role, "operator": args.operator, "statements": statements},
          lambda: "".join(s + ";\n" for s in statements), out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="libpq connection string or URL (default: $SENTINEL_DSN, $DATABASE_URL, "
                                      "then PGHOST/PGDATABASE/... as libpq reads them)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="sentinel",
        description="Sentinel schema tools: print, apply and check the SQL; grant roles.",
        epilog="Exit codes: 0 ok, 1 check or operation failed, 2 bad usage, 3 database unreachable.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sentinel-coordination {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("sql", parents=[common], help="print migration SQL for review or psql -f",
                       description=(cmd_sql.__doc__ or "") + " Each migration is wrapped in begin/commit with its "
                       "ledger row, unless --plain.")
    p.add_argument("--from", dest="from_", type=int, default=0, metavar="N",
                   help="start after schema version N (default 0: everything)")
    p.add_argument("--to", type=int, metavar="M", help="stop at schema version M (default: the newest)")
    p.add_argument("--plain", action="store_true",
                   help="the files as they are, without transaction or ledger rows (your migration tool owns both)")
    p.set_defaults(func=cmd_sql, needs_db=False)

    p = sub.add_parser("migrate", parents=[common], help="apply pending migrations", description=cmd_migrate.__doc__)
    p.add_argument("--to", type=int, metavar="M", help="stop at schema version M")
    p.add_argument("--dry-run", action="store_true", help="list what would be applied, apply nothing")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("status", parents=[common], help="applied, pending and drifted migrations",
                       description=cmd_status.__doc__)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", parents=[common], help="exit 1 if the schema is not usable by this client",
                       description=cmd_check.__doc__)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("grant", parents=[common], help="grant a role what it needs", description=cmd_grant.__doc__)
    p.add_argument("role", metavar="ROLE")
    p.add_argument("--operator", action="store_true", help="also reconcile and purge")
    p.set_defaults(func=cmd_grant)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out or sys.stdout
    try:
        code: int = args.func(args, stream)
        return code
    except DatabaseUnavailable as exc:
        sys.stderr.write(f"sentinel {args.command}: database unavailable: {exc}\n")
        return EXIT_UNAVAILABLE
    except (SentinelError, psycopg.Error) as exc:
        sys.stderr.write(f"sentinel {args.command}: {str(exc).strip()}\n")
        return EXIT_FAILED


def console() -> None:
    """Entry point of the ``sentinel`` console script."""
    sys.exit(main())


__all__ = ["main", "build_parser"]

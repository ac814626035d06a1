"""The ``sentinel`` command: the schema (print, apply, check, grant, revoke, rights) and operations.

Every command takes ``--dsn`` (falling back to ``SENTINEL_DSN``, then
``DATABASE_URL``, then libpq's own ``PG*`` variables) and ``--json``. Exit
codes: 0 success, 1 the check or operation failed (a login the server refused
among them: a wrong password is not an outage), 2 bad usage, 3 the database
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence, TextIO

import psycopg

from ._cli_grants import add_grant_commands
from ._cli_io import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    _connect,
    _dsn,
    _emit,
    _table,
    plain,
)
from ._durability import DEFAULT_FENCE_MARGIN, durability, fence_gap, resync_fences
from ._ops import Operations
from ._present import age
from ._schema import API_VERSIONS, init_db, migrations, status
from ._web import add_web_command
from .errors import DatabaseUnavailable, LoginRefused, ReconcileRefused, SentinelError


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
            f"{'+'.join(f'v{v}' for v in API_VERSIONS)}; database provides {st.api_versions or 'none'})"
        ]
        for row in data["migrations"]:
            when = f"  {row['applied_at']} by {row['applied_by']}" if row["applied_at"] else ""
            lines.append(f"  {row['name']:<32} {row['state']}{when}")
        if not st.ledger_readable:
            lines.append("note: this role may not read sentinel.migrations (the schema owner's ledger), so "
                         "the versions come from schema_version() and drift is not checked; run `sentinel "
                         "status` as the owner for the full ledger")
        for p in st.problems():
            lines.append(f"problem: {p}")
        lines.append("ok" if not st.problems() else "not ok")
        return "\n".join(lines) + "\n"

    _emit(args, data, text, out)
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 1 when the schema is behind what this client needs, drifted, or incompatible, or the fence
    sequence is behind the fences recorded; warn when a crash or a failover could lose claims."""
    with _connect(args) as conn:
        st = status(conn)
        problems = st.problems()
        found = durability(conn) if st.installed else None
        gap = fence_gap(conn) if st.installed else None
    if gap is not None:
        problems.append(f"the fence sequence would hand out fence {gap[0]}, but fences up to {gap[1]} are recorded "
                        "(a restore, or a logical replica, whose sequences are not replicated): run `sentinel "
                        "resync-fences` as the schema owner before clients connect")
    warnings = found.warnings if found is not None else []
    data: Dict[str, Any] = {"ok": not problems, "problems": problems, "warnings": warnings,
                            "schema_version": st.schema_version, "required_version": st.required_version,
                            "replication": found.as_dict() if found is not None else None}

    def text() -> str:
        lines = problems or [f"ok: schema version {st.schema_version}"]
        return "\n".join(lines + [f"warning: {w}" for w in warnings]) + "\n"

    _emit(args, data, text, out)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_resync_fences(args: argparse.Namespace, out: TextIO) -> int:
    """Move the fence sequence past every fence recorded, plus a margin (after a restore or a switch to a
    logical replica, as the schema owner, before clients connect); never moves it back."""
    with _connect(args) as conn:
        before, after = resync_fences(conn, args.margin)
    _emit(args, {"next_fence_before": before, "next_fence": after, "margin": args.margin},
          lambda: (f"next fence {after} (was {before})\n" if after != before
                   else f"next fence {after}: already past every recorded fence plus {args.margin}\n"), out)
    return EXIT_OK


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


_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """``500ms``, ``45s``, ``10m``, ``2h``, ``30d`` (or plain milliseconds) as milliseconds."""
    t = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if t.endswith(unit) and t[: -len(unit)].strip().isdigit():
            return int(t[: -len(unit)]) * _UNITS[unit]
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 500ms, 45s, 10m, 2h, 30d)")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def _sentinel(args: argparse.Namespace) -> Operations:
    """The operator calls on the namespace the command names (they run nothing)."""
    return Operations(conninfo=_dsn(args), namespace=args.namespace, connect_timeout=10.0)


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """List a namespace's execution records by effective state, oldest change first."""
    with _sentinel(args) as s:
        rows = s.list(args.state, older_than_ms=args.older_than, max_rows=args.limit, bodies=args.bodies)
    _emit(args, {"namespace": args.namespace, "records": rows}, lambda: _table(
        ["key", "state", "fence", "attempt", "owner", "changed", "reason"],
        [[r["key"], r["state"], r["fence"], r["attempt"], r["owner"], age(r["now"], r["updated_at"]) + " ago",
          r["uncertain_reason"] or r["reconcile_reason"] or ""] for r in rows],
    ) if rows else "no records\n", out)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    """Show one key's record and its event history."""
    with _sentinel(args) as s:
        record = s.inspect(args.key)
        events = s.events(args.key) if record is not None or args.json else []
    if record is None:
        sys.stderr.write(f"sentinel inspect: no execution record for {args.namespace}/{plain(args.key)}\n")
        return EXIT_FAILED

    def text() -> str:
        assert record is not None
        width = max(len(k) for k in record)
        lines = [f"{k.ljust(width)}  {json.dumps(v) if isinstance(v, (dict, list)) else plain(v)}"
                 for k, v in record.items() if v is not None]
        lines.append("")
        lines.append(_table(["at", "fence", "from", "to", "actor", "reason"],
                            [[e["at"], e["fence"], e["from_state"] or "-", e["to_state"], e["actor"], e["reason"]]
                             for e in events]).rstrip())
        return "\n".join(lines) + "\n"

    _emit(args, {"record": record, "events": events}, text, out)
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace, out: TextIO) -> int:
    """Resolve a key under a new fence, recording actor and reason."""
    action = "release" if args.release else args.as_
    if action is None:
        sys.stderr.write("sentinel reconcile: say --as completed, --as failed or --release\n")
        return EXIT_USAGE
    if action == "completed" and args.response is None:
        sys.stderr.write("sentinel reconcile: --as completed needs --response JSON\n")
        return EXIT_USAGE
    actor = args.actor or _default_actor()
    with _sentinel(args) as s:
        before = s.inspect(args.key)
        result = s.reconcile(args.key, action=action, actor=actor, reason=args.reason,
                             response=args.response, error=args.error, force=args.force)
        after = s.inspect(args.key)
    data = {"namespace": args.namespace, "key": args.key, "action": action, "actor": actor, "reason": args.reason,
            "before": before, "after": after, **result}
    _emit(args, data, lambda: (
        f"{args.namespace}/{plain(args.key)}: {result['previous_state']} -> {result['state']}"
        f" (fence {result['previous_fence']} -> {result['fence']}), by {plain(actor)}: {plain(args.reason)}\n"), out)
    return EXIT_OK


def _default_actor() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"[:200]
    except Exception:  # no user name in this environment: the database user is recorded by the caller
        return "unknown"


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """Counts by state, the oldest uncertain record, executions per minute."""
    with _sentinel(args) as s:
        st = dict(s.stats())
    _emit(args, st, lambda: "".join(f"{k:<22} {v}\n" for k, v in st.items()), out)
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, out: TextIO) -> int:
    """Delete old completed/failed records of a namespace, expired ones, or old events, in batches."""
    if args.older_than is None and not args.expired:
        sys.stderr.write("sentinel purge: say --older-than AGE, or --expired\n")
        return EXIT_USAGE
    if args.events and args.older_than is None:
        sys.stderr.write("sentinel purge: --events needs --older-than AGE (the event log has no retain_ms; "
                         "--expired is for records)\n")
        return EXIT_USAGE
    batch: Dict[str, int] = {} if args.batch is None else {"batch_size": args.batch}  # else the library's
    with _sentinel(args) as s:
        if args.events:
            n, what = s.purge_events(args.older_than, **batch), "events"
        elif args.expired:
            n, what = s.purge_expired(**batch), f"expired records of {args.namespace}"
        else:
            n, what = s.purge(args.older_than, **batch), f"records of {args.namespace}"
    _emit(args, {"deleted": n, "what": what}, lambda: f"deleted {n} {what}\n", out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="libpq connection string or URL (default: $SENTINEL_DSN, $DATABASE_URL, "
                                      "then PGHOST/PGDATABASE/... as libpq reads them)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="sentinel",
        description="Sentinel tools: the schema (sql, migrate, status, check, grant, revoke, rights, resync-fences), "
                    "operations (list, inspect, reconcile, stats, purge) and the operator's page (web).",
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

    p = sub.add_parser("resync-fences", parents=[common], help="move the fence sequence past every recorded fence",
                       description=cmd_resync_fences.__doc__)
    p.add_argument("--margin", type=int, default=DEFAULT_FENCE_MARGIN, metavar="N",
                   help=f"this many fences beyond the highest recorded (default {DEFAULT_FENCE_MARGIN:,}), for "
                        "fences handed out after the restore point")
    p.set_defaults(func=cmd_resync_fences)

    add_grant_commands(sub, common)

    ns = argparse.ArgumentParser(add_help=False)
    ns.add_argument("-n", "--namespace", default=os.environ.get("SENTINEL_NAMESPACE", "default"),
                    help="namespace (default: $SENTINEL_NAMESPACE or 'default')")

    p = sub.add_parser("list", parents=[common, ns], help="records by state", description=cmd_list.__doc__)
    p.add_argument("--state", choices=["claimed", "executing", "completed", "failed", "uncertain"])
    p.add_argument("--older-than", type=duration_ms, metavar="AGE", help="last change at least AGE ago (10m, 2h)")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--bodies", action="store_true", help="include responses and errors (with --json)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", parents=[common, ns], help="a record and its history",
                       description=cmd_inspect.__doc__)
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("reconcile", parents=[common, ns], help="resolve an uncertain, failed or stuck key",
                       description=(cmd_reconcile.__doc__ or "") + " Refuses keys that are not uncertain, failed "
                       "or a lapsed claim unless --force.")
    p.add_argument("key", metavar="KEY")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--as", dest="as_", choices=["completed", "failed"], help="record this outcome")
    how.add_argument("--release", action="store_true", help="allow a new attempt")
    p.add_argument("--response", type=_json_arg, metavar="JSON", help="the response, with --as completed")
    p.add_argument("--error", type=_json_arg, metavar="JSON", help="the error document, with --as failed")
    p.add_argument("--reason", required=True, help="why (recorded)")
    p.add_argument("--actor", help="who (recorded; default: OS user@host)")
    p.add_argument("--force", action="store_true", help="also keys that are completed or running")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("stats", parents=[common, ns], help="counts by state", description=cmd_stats.__doc__)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("purge", parents=[common, ns], help="retention", description=cmd_purge.__doc__)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--older-than", type=duration_ms, metavar="AGE", help="finished at least AGE ago (e.g. 30d)")
    what.add_argument("--expired", action="store_true", help="records whose retain_ms has passed")
    p.add_argument("--batch", type=int, default=None, help="rows per batch (default 1000; 10000 with --events)")
    p.add_argument("--events", action="store_true", help="with --older-than: the event log (all namespaces)")
    p.set_defaults(func=cmd_purge)

    add_web_command(sub)
    return parser


def _log_to_stderr() -> None:
    """The library's warnings on stderr as ``sentinel: ...``, unless the application set up logging."""
    log = logging.getLogger("sentinel")
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    log.addHandler(handler)


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out or sys.stdout
    _log_to_stderr()
    try:
        code: int = args.func(args, stream)
        return code
    except DatabaseUnavailable as exc:
        message = str(exc).strip()
        if not message.startswith("database unavailable: "):
            message = f"database unavailable: {message}"
        sys.stderr.write(f"sentinel {args.command}: {message}{_where_dsn(args)}\n")
        return EXIT_UNAVAILABLE
    except (SentinelError, psycopg.Error) as exc:
        message = str(exc).strip()
        if message.startswith("sentinel: "):
            message = message[len("sentinel: "):]
        if isinstance(exc, ReconcileRefused):
            message = message.replace("pass force=True", "pass --force")
        hint = _where_dsn(args) if isinstance(exc, LoginRefused) else ""
        sys.stderr.write(f"sentinel {args.command}: {message}{hint}\n")
        return EXIT_FAILED


def _where_dsn(args: argparse.Namespace) -> str:
    """When no DSN was given, say so: libpq's defaults (PGHOST, PGUSER, the OS user) are easily not meant."""
    if _dsn(args):
        return ""
    seen = ", ".join(f"{k}={os.environ[k]}" for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE") if k in os.environ)
    return ("\n  (no --dsn, $SENTINEL_DSN or $DATABASE_URL was given, so libpq's defaults were used"
            + (f": {seen}" if seen else ": the local socket, your OS user name as the role") + "; pass --dsn)")


def console() -> None:
    """Entry point of the ``sentinel`` console script."""
    sys.exit(main())


__all__ = ["main", "build_parser"]

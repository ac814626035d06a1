"""``sentinel grant``, ``revoke`` and ``rights``: who may do what in which namespace."""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Sequence, TextIO

from ._cli_io import EXIT_OK, EXIT_USAGE, _connect, _emit, _table


def _rights(args: argparse.Namespace) -> List[str]:
    """The rights --probe/--operator/--purge/--app name (app alone when none is given)."""
    chosen = [k for k in ("app", "probe", "operator", "purge") if getattr(args, k, False)]
    return chosen or ["app"]


def _scope(args: argparse.Namespace) -> Optional[str]:
    """The namespace --namespace or --all-namespaces names ('*'), or None for neither."""
    return "*" if args.all_namespaces else args.namespace


def _script(done: Sequence[str]) -> str:
    """What grant_v*/revoke_v1 did, as a script psql could run: the statements, and the rest as comments."""
    return "".join(f"{s};\n" if s.startswith(("grant ", "revoke ")) else f"-- {s}\n" for s in done)


def cmd_grant(args: argparse.Namespace, out: TextIO) -> int:
    """Give ROLE rights in a namespace and EXECUTE on the functions they need.

    --namespace NS (or --all-namespaces) with --probe, --operator or --purge
    (default: the app right): the role proves its claims with their token and
    never gets the legacy calls. Without a namespace: the grant of earlier
    versions, every namespace and the legacy calls (--operator adds reconcile
    and purge).
    """
    from ._conn import wrap_exceptions

    scope = _scope(args)
    if scope is None and (args.probe or args.purge or args.app):
        sys.stderr.write("sentinel grant: --probe, --purge and --app need --namespace NS or --all-namespaces\n")
        return EXIT_USAGE
    with _connect(args) as conn, wrap_exceptions():
        if scope is None:
            row = conn.execute("select sentinel.grant_v1(%s, %s)", (args.role, args.operator)).fetchone()
        else:
            row = conn.execute("select sentinel.grant_v2(%s, %s, %s)", (args.role, scope, _rights(args))).fetchone()
    statements: List[str] = list(row[0]) if row else []
    data = {"role": args.role, "namespace": scope, "rights": _rights(args) if scope else None,
            "operator": args.operator, "statements": statements}
    _emit(args, data, lambda: _script(statements), out)
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace, out: TextIO) -> int:
    """Take rights back from ROLE: in one namespace or all, of the kinds named or all.

    --legacy also revokes the legacy calls (the ones that change a claim
    without its token): run it for every role once all clients speak
    protocol version 3. A role left without rights loses every function.
    """
    from ._conn import wrap_exceptions

    kinds = [k for k in ("app", "probe", "operator", "purge") if getattr(args, k, False)] or None
    with _connect(args) as conn, wrap_exceptions():
        row = conn.execute("select sentinel.revoke_v1(%s, %s, %s, %s)",
                           (args.role, _scope(args), kinds, args.legacy)).fetchone()
    done: List[str] = list(row[0]) if row else []
    _emit(args, {"role": args.role, "namespace": _scope(args), "rights": kinds, "legacy": args.legacy,
                 "statements": done}, lambda: _script(done), out)
    return EXIT_OK


def cmd_rights(args: argparse.Namespace, out: TextIO) -> int:
    """Who holds which right in which namespace ('*': every namespace), and who still has the legacy calls."""
    from ._conn import wrap_exceptions

    with _connect(args) as conn, wrap_exceptions():
        rows = conn.execute(
            "select r.role::text, r.namespace, r.kind, r.granted_at, r.granted_by,"
            " has_function_privilege(r.role::oid, 'sentinel.complete_v1(text, text, bigint, jsonb)', 'execute')"
            " from sentinel.rights r join pg_roles g on g.oid = r.role::oid"
            " where %s::text is null or r.role::text = %s order by 1, 2, 3",
            (args.role, args.role)).fetchall()
    records = [{"role": r[0], "namespace": r[1], "right": r[2], "granted_at": r[3], "granted_by": r[4],
                "legacy_calls": bool(r[5])} for r in rows]
    _emit(args, {"rights": records}, lambda: _table(
        ["role", "namespace", "right", "legacy calls", "granted by"],
        [[r["role"], r["namespace"], r["right"], "yes" if r["legacy_calls"] else "no", r["granted_by"]]
         for r in records]) if records else "no rights\n", out)
    return EXIT_OK


# -- operations ------------------------------------------------------------------


def add_grant_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """grant, revoke and rights, with their shared --namespace and right flags."""
    rights = argparse.ArgumentParser(add_help=False)
    scope = rights.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="the namespace the rights hold in")
    scope.add_argument("--all-namespaces", action="store_true", help="every namespace ('*')")
    rights.add_argument("--app", action="store_true", help="the protocol and reading records (the default right)")
    rights.add_argument("--probe", action="store_true", help="resolve uncertain keys (reconcile without force)")
    rights.add_argument("--operator", action="store_true", help="reconcile any key (with a namespace); without "
                                                                   "one, the legacy grant with reconcile and purge")
    rights.add_argument("--purge", action="store_true", help="purge records (with --all-namespaces, the event log)")

    p = sub.add_parser("grant", parents=[common, rights], help="grant a role rights in a namespace",
                       description=cmd_grant.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", metavar="ROLE")
    p.set_defaults(func=cmd_grant)

    p = sub.add_parser("revoke", parents=[common, rights], help="take rights back from a role",
                       description=cmd_revoke.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", metavar="ROLE")
    p.add_argument("--legacy", action="store_true", help="also revoke the calls that change a claim without its token")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("rights", parents=[common], help="who holds which right in which namespace",
                       description=cmd_rights.__doc__)
    p.add_argument("role", metavar="ROLE", nargs="?", help="only this role")
    p.set_defaults(func=cmd_rights)

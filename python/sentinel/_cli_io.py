"""What every ``sentinel`` command shares: exit codes, the DSN, the connection, and printing."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, TextIO

import psycopg

from ._conn import login_refused, wrap_exceptions
from .errors import DatabaseUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _dsn(args: argparse.Namespace) -> str:
    given: Optional[str] = (getattr(args, "dsn", None) or os.environ.get("SENTINEL_DSN")
                            or os.environ.get("DATABASE_URL"))
    return given or ""  # empty: libpq reads PGHOST, PGDATABASE, ...


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(_dsn(args), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        if login_refused(exc) is not None:
            with wrap_exceptions():
                raise
        raise DatabaseUnavailable(f"cannot connect: {str(exc).strip()}") from exc


def _emit(args: argparse.Namespace, data: Dict[str, Any], text: Callable[[], str], out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        out.write(text())


def plain(value: Any) -> str:
    """``value`` as one line of text a terminal shows as it is: control and format characters escaped.

    Keys, owners, actors and reasons are chosen by applications; printed raw,
    a newline would forge table rows and an ANSI escape would reach the
    operator's terminal. They are shown as Python escapes (``\\n``,
    ``\\x1b``, ``\\u202e``), a backslash as ``\\\\``.
    """
    text = "" if value is None else str(value)
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[plain(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()

    return "\n".join([line(list(headers))] + [line(r) for r in cells]) + "\n"

"""What the operator's views show alike: the CLI, ``sentinel web`` and the Django admin.

Ages at the database's clock, the reason column of a record, and how a
refused operator call reads on a page (its HTTP status, its message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional, Tuple

from ._rows import ExecutionRecord
from .errors import (
    DatabaseUnavailable,
    ExecutionNotFound,
    InvalidArgument,
    LoginRefused,
    PermissionDenied,
    ReconcileRefused,
    SentinelError,
)

STATES = ("claimed", "executing", "completed", "failed", "uncertain")


def age(now: Optional[datetime], then: Optional[datetime]) -> str:
    """How long ago ``then`` was, at the database's ``now``: ``4.2s``, ``3.0m``, ``1.5h``, ``2.0d``."""
    if now is None or then is None:
        return "-"
    secs = max((now - then).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.1f}{unit}"
    return f"{secs:.1f}s"


def why(record: ExecutionRecord) -> str:
    """The reason column of a record: why it is uncertain, or who reconciled it and why."""
    if record["state"] == "uncertain":
        return record["uncertain_reason"] or ""
    if record["reconciled_by"]:
        return f"reconciled by {record['reconciled_by']}: {record['reconcile_reason'] or ''}"
    return ""


_HTTP_STATUS: Tuple[Tuple[type, int], ...] = (
    (ExecutionNotFound, 404), (ReconcileRefused, 409), (PermissionDenied, 403), (InvalidArgument, 400),
    (LoginRefused, 502), (DatabaseUnavailable, 503),
)


def http_status(exc: SentinelError) -> int:
    """The HTTP status a page answers a refused operator call with."""
    for cls, code in _HTTP_STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def form_message(exc: BaseException, force: str) -> str:
    """A refused call's message as a form shows it: no ``sentinel:`` prefix, ``force`` naming the form's box."""
    text = str(exc).strip()
    text = text[len("sentinel: "):] if text.startswith("sentinel: ") else text
    return text.replace("pass force=True to override", f"tick {force} to override")

"""Sentinel settings from Django: which database, which namespace, which lease.

``settings.SENTINEL`` (optional)::

    SENTINEL = {
        "DATABASE": "default",        # the alias of settings.DATABASES holding the sentinel schema
        "NAMESPACE": "shop",          # Sentinel's namespace (default "default")
        "DEFAULT_TTL_MS": 5000,       # Sentinel's default lease (default 3000)
    }

:func:`sentinel_defaults` is what ``Sentinel()`` without arguments uses (through
the ``sentinel.frameworks`` plug-in in ``sentinel.contrib.frameworks``); :func:`get_sentinel` is the
process-wide ``Sentinel`` the view decorator uses unless it is given one.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional, Tuple

import psycopg
from psycopg.conninfo import make_conninfo

from ..._client import Sentinel
from ...errors import TransactionInProgress

__all__ = [
    "KNOWN_KEYS",
    "sentinel_settings",
    "database_alias",
    "conninfo_for_alias",
    "sentinel_defaults",
    "get_sentinel",
    "reset_sentinel",
]

#: The keys ``settings.SENTINEL`` may hold.
KNOWN_KEYS = ("DATABASE", "NAMESPACE", "DEFAULT_TTL_MS")

_LIBPQ_KEYWORDS: Optional[frozenset[str]] = None


def _improperly(message: str) -> Exception:
    from django.core.exceptions import ImproperlyConfigured

    exc: Exception = ImproperlyConfigured(message)
    return exc


def sentinel_settings() -> Dict[str, Any]:
    """``settings.SENTINEL`` with its defaults filled in; ImproperlyConfigured on unknown keys."""
    from django.conf import settings

    given = getattr(settings, "SENTINEL", None) or {}
    if not isinstance(given, dict):
        raise _improperly(f"settings.SENTINEL must be a dict, got {type(given).__name__}")
    unknown = sorted(set(given) - set(KNOWN_KEYS))
    if unknown:
        raise _improperly(
            f"settings.SENTINEL has unknown keys {unknown}; the known keys are {list(KNOWN_KEYS)}"
        )
    return {
        "DATABASE": given.get("DATABASE") or "default",
        "NAMESPACE": given.get("NAMESPACE"),
        "DEFAULT_TTL_MS": given.get("DEFAULT_TTL_MS"),
    }


def database_alias() -> str:
    """The alias of ``settings.DATABASES`` that holds Sentinel's schema."""
    return str(sentinel_settings()["DATABASE"])


def _libpq_keywords() -> frozenset[str]:
    global _LIBPQ_KEYWORDS
    if _LIBPQ_KEYWORDS is None:
        _LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())
    return _LIBPQ_KEYWORDS


def _escape_option(value: str) -> str:
    """Escape a value for libpq's ``options`` (spaces and backslashes)."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _connection(alias: str) -> Any:
    from django.db import connections
    from django.utils.connection import ConnectionDoesNotExist

    try:
        return connections[alias]
    except ConnectionDoesNotExist as exc:
        raise _improperly(
            f"Sentinel uses the database alias {alias!r} (settings.SENTINEL['DATABASE']), "
            f"which is not in settings.DATABASES ({sorted(connections.settings)})"
        ) from exc


def check_postgresql(alias: str) -> Any:
    """The Django connection of ``alias``; ImproperlyConfigured unless it is PostgreSQL."""
    conn = _connection(alias)
    if conn.vendor != "postgresql":
        raise _improperly(
            f"Sentinel needs PostgreSQL, but the database alias {alias!r} uses "
            f"{conn.settings_dict.get('ENGINE')!r} ({conn.vendor}); point settings.SENTINEL['DATABASE'] "
            "at a django.db.backends.postgresql database"
        )
    return conn


def conninfo_for_alias(alias: Optional[str] = None) -> str:
    """A libpq conninfo string for the Django database ``alias`` (default: Sentinel's alias).

    Built from the backend's own connection parameters (NAME, USER, PASSWORD,
    HOST, PORT and the libpq keywords of OPTIONS, such as ``sslmode``,
    ``service`` or ``options``); psycopg/Django-only options (``pool``,
    ``server_side_binding``, ``isolation_level``, ``cursor_factory``, ...) do
    not apply to Sentinel's own connections. ``OPTIONS["assume_role"]``
    becomes ``-c role=...`` in libpq's ``options``, so Sentinel acts as the
    same role as Django.
    """
    alias = alias or database_alias()
    conn = check_postgresql(alias)
    params: Dict[str, Any] = dict(conn.get_connection_params())
    role = (conn.settings_dict.get("OPTIONS") or {}).get("assume_role")
    keywords = _libpq_keywords()
    out = {k: str(v) for k, v in params.items() if k in keywords and v is not None and v != ""}
    if role:
        extra = f"-c role={_escape_option(str(role))}"
        out["options"] = f"{out['options']} {extra}" if out.get("options") else extra
    return make_conninfo("", **out)


def sentinel_defaults() -> Optional[Dict[str, Any]]:
    """What ``Sentinel()`` without arguments uses when Django is configured.

    ``{"conninfo": ..., "namespace": ..., "default_ttl_ms": ...}`` from
    ``settings.SENTINEL`` and the chosen database alias. Raises
    ``django.core.exceptions.ImproperlyConfigured`` when the alias is missing
    or is not PostgreSQL, or ``settings.SENTINEL`` has unknown keys.
    """
    conf = sentinel_settings()
    return {
        "conninfo": conninfo_for_alias(conf["DATABASE"]),
        "namespace": conf["NAMESPACE"],
        "default_ttl_ms": conf["DEFAULT_TTL_MS"],
    }


def refuse_inside_atomic(key: str) -> None:
    """Refuse ``once()`` while one of this thread's Django connections is inside ``atomic()``.

    ``once()`` records its outcome on Sentinel's own connection, at once: if
    the surrounding transaction (``ATOMIC_REQUESTS`` included) then rolled
    back or failed at commit, the recorded success would be replayed for ever
    for writes that never landed.
    """
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            raise TransactionInProgress(
                f"once({key!r}) was called inside transaction.atomic() on database {conn.alias!r} (with "
                "ATOMIC_REQUESTS every view runs in one): Sentinel would record the outcome before that transaction "
                "commits, and replay it even if it rolls back. For database writes use "
                "sentinel.contrib.django.atomic_once(), whose record commits with them; otherwise call once() "
                "outside atomic() (mark the view @transaction.non_atomic_requests, or run it from "
                "transaction.on_commit)"
            )


# -- the process-wide Sentinel --------------------------------------------------

_shared: Optional[Tuple[int, Sentinel]] = None
_shared_lock = threading.Lock()


def get_sentinel() -> Sentinel:
    """The process's ``Sentinel()`` built from the Django settings, created on first use.

    Created lazily in each process (a pre-forking server gets one per worker,
    never one inherited across ``fork``), and rebuilt after a test changes
    ``SENTINEL`` or ``DATABASES`` with ``override_settings``.
    """
    global _shared
    pid = os.getpid()
    current = _shared
    if current is not None and current[0] == pid:
        return current[1]
    with _shared_lock:
        if _shared is None or _shared[0] != pid:
            _shared = (pid, Sentinel())
        return _shared[1]


def reset_sentinel() -> None:
    """Close and forget the process-wide ``Sentinel`` (the next :func:`get_sentinel` builds a new one)."""
    global _shared
    with _shared_lock:
        old, _shared = _shared, None
    if old is not None and old[0] == os.getpid():
        old[1].close()


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting in ("SENTINEL", "DATABASES"):
        reset_sentinel()


def _connect_signals() -> None:
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="sentinel.contrib.django.conf")


_connect_signals()

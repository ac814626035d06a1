"""What a framework tells a client that it cannot know by itself, found without importing the framework's plug-in.

A plug-in (Sentinel's own Django integration, or another package) declares an
object in the entry-point group ``sentinel.frameworks`` with two methods:

- ``defaults()``: the connection settings for ``Sentinel()`` without a source
  (``{"conninfo": ..., "namespace": ..., "default_ttl_ms": ...}``), or None;
- ``transaction_guard()``: a callable ``guard(key)`` that raises when
  ``once()`` is called inside the framework's open transaction, or None.

The core names no plug-in: it loads the declared objects once, on the first
client, and a plug-in whose framework is not installed is skipped.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
from typing import Any, Callable, Dict, List, Optional

GROUP = "sentinel.frameworks"
logger = logging.getLogger("sentinel")

_loaded: Optional[List[Any]] = None
_lock = threading.Lock()


def _frameworks() -> List[Any]:
    global _loaded
    with _lock:
        if _loaded is None:
            found: List[Any] = []
            declared = list(entry_points(group=GROUP))
            if not declared and not _installed():
                # Run from a source tree that was never installed: no entry points exist, yet the Django
                # check of atomic() must not silently vanish. The package's own declaration, as written
                # in its pyproject.toml.
                declared = [EntryPoint("django", "sentinel.contrib.frameworks:django", GROUP)]
            for ep in declared:
                try:
                    found.append(ep.load())
                except ImportError as exc:  # its framework is not installed
                    logger.debug("framework plug-in %s skipped: %s", ep.name, exc)
            _loaded = found
        return _loaded


def _installed() -> bool:
    try:
        distribution("sentinel-coordination")
    except PackageNotFoundError:
        return False
    return True


def defaults() -> Optional[Dict[str, Any]]:
    """The first configured framework's connection settings, or None."""
    for framework in _frameworks():
        found: Optional[Dict[str, Any]] = framework.defaults()
        if found is not None:
            return found
    return None


def transaction_guard() -> Optional[Callable[[str], None]]:
    """One guard running every configured framework's check, or None when there is none."""
    guards = [g for g in (f.transaction_guard() for f in _frameworks()) if g is not None]
    if not guards:
        return None
    if len(guards) == 1:
        only: Callable[[str], None] = guards[0]
        return only

    def guard(key: str) -> None:
        for g in guards:
            g(key)

    return guard

"""Sentinel's own framework plug-ins, declared in the entry-point group ``sentinel.frameworks``.

This module imports no framework: each plug-in looks for its framework only
when asked, so an application without Django pays nothing for it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional


class Django:
    """Django, when it is imported and its settings are configured (see ``sentinel.contrib.django``)."""

    @staticmethod
    def _configured() -> bool:
        if sys.modules.get("django") is None:  # never imported by the application (or blocked)
            return False
        from django.conf import settings

        return bool(settings.configured)

    def defaults(self) -> Optional[Dict[str, Any]]:
        """``Sentinel()`` without arguments: the database, namespace and lease of ``settings.SENTINEL``."""
        if not self._configured():
            return None
        from .django.conf import sentinel_defaults

        return sentinel_defaults()

    def transaction_guard(self) -> Optional[Callable[[str], None]]:
        """Refuse ``once()`` inside Django's ``atomic()``."""
        if not self._configured():
            return None
        from .django.conf import refuse_inside_atomic

        return refuse_inside_atomic


django = Django()

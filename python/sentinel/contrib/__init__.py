"""Optional integrations: OpenTelemetry (extra ``otel``), Prometheus (extra ``prometheus``), Django."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional


def framework_defaults() -> Optional[Dict[str, Any]]:
    """Connection settings for ``Sentinel()`` without arguments, from a configured framework.

    Today: Django, when it is imported and its settings are configured (see
    ``sentinel.contrib.django``). Returns None when no framework provides them.
    """
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured:
            from .django.conf import sentinel_defaults

            return sentinel_defaults()
    return None


def transaction_guard() -> Optional[Callable[[str], None]]:
    """A check that ``once()`` is not called inside a framework's open transaction, or None.

    Today: Django's ``atomic()`` (see ``sentinel.contrib.django``), when Django
    is imported and configured.
    """
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured:
            from .django.conf import refuse_inside_atomic

            return refuse_inside_atomic
    return None

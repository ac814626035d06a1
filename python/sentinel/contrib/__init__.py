"""Optional integrations: OpenTelemetry (extra ``otel``), Prometheus (extra ``prometheus``), Django."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional


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

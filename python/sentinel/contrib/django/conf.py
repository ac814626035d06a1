"""Sentinel settings from Django (placeholder until the integration lands)."""

from __future__ import annotations

from typing import Any, Dict, Optional


def sentinel_defaults() -> Optional[Dict[str, Any]]:
    """No Django integration yet."""
    return None

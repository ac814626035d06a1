"""The Django app ``sentinel.contrib.django`` (label ``sentinel``)."""

from __future__ import annotations

from typing import Any, List

from django.apps import AppConfig
from django.core import checks


class SentinelConfig(AppConfig):  # type: ignore[misc]
    """Installs Sentinel's schema through ``manage.py migrate`` and checks the settings."""

    name = "sentinel.contrib.django"
    label = "sentinel"
    verbose_name = "Sentinel"

    def ready(self) -> None:
        checks.register(check_settings)  # reads settings only; runs with `check`, `runserver`, `migrate`


def check_settings(app_configs: Any = None, **kwargs: Any) -> List[Any]:
    """System check: ``settings.SENTINEL`` is valid and names a PostgreSQL database (``sentinel.E001``)."""
    from django.core.exceptions import ImproperlyConfigured

    from .conf import check_postgresql, database_alias

    try:
        check_postgresql(database_alias())
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="sentinel.E001", obj="settings.SENTINEL")]
    return []

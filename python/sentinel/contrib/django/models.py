"""``Execution``: the handle the Django admin and the permissions of Sentinel's executions hang on.

Sentinel's tables are private to its SQL functions, so this model has no table
and is never queried: the admin (:mod:`sentinel.contrib.django.admin`) reads
through ``list_v2``, ``inspect_v1``, ``events_v1`` and ``stats_v1`` and resolves
through ``reconcile_v1``. It exists for two things:

- the permissions ``sentinel.view_execution`` (see the executions in the
  admin) and ``sentinel.reconcile_execution`` (resolve a key there), created by
  ``manage.py migrate`` with their content type;
- a place in the admin's index ("Sentinel > Executions").

``Meta.auto_created`` keeps it out of Django's migrations (``makemigrations``
and ``migrate`` skip auto-created models), so the app's migrations stay one per
packaged SQL file; ``ContentType.model_class()`` still finds it, so
``remove_stale_contenttypes`` leaves its content type and permissions alone.
"""

from __future__ import annotations

from typing import Any, Tuple

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, models, router
from django.db.models.signals import post_migrate

__all__ = ["Execution", "PERMISSIONS", "create_permissions"]

#: The permissions of the admin of executions: (codename, name).
PERMISSIONS: Tuple[Tuple[str, str], ...] = (
    ("view_execution", "Can view execution"),
    ("reconcile_execution", "Can reconcile execution"),
)


class Execution(models.Model):  # type: ignore[misc]
    """An execution record, as a name for the admin and the permissions; it has no table (see the module)."""

    key = models.TextField(primary_key=True)

    class Meta:
        app_label = "sentinel"
        managed = False
        auto_created = True  # no migration: there is no table
        default_permissions = ("view",)
        permissions = [("reconcile_execution", "Can reconcile execution")]
        verbose_name = "execution"
        verbose_name_plural = "executions"

    def __str__(self) -> str:
        return str(self.key)


def create_permissions(app_config: Any = None, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps,
                       **kwargs: Any) -> None:
    """``post_migrate``: the content type ``sentinel.execution`` and :data:`PERMISSIONS`, if missing.

    Django creates permissions only for models its migrations know; this one
    has none (see the module), so they are made here, on the database being
    migrated, where the routers let ``auth`` migrate.
    """
    if app_config is None or app_config.label != "sentinel":
        return
    try:
        content_type_model = apps.get_model("contenttypes", "ContentType")
        permission_model = apps.get_model("auth", "Permission")
    except LookupError:  # contenttypes or auth not installed (or not migrated yet)
        return
    if not router.allow_migrate_model(using, permission_model):
        return
    content_type, _ = content_type_model.objects.using(using).get_or_create(app_label="sentinel", model="execution")
    for codename, name in PERMISSIONS:
        permission_model.objects.using(using).get_or_create(content_type=content_type, codename=codename,
                                                            defaults={"name": name})


post_migrate.connect(create_permissions, dispatch_uid="sentinel.contrib.django.models.create_permissions")

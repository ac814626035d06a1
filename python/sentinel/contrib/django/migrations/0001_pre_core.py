"""Sentinel's SQL migration 0001_pre_core.sql, applied by Django (see sentinel.contrib.django.operations)."""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [ApplySentinelMigration("0001_pre_core")]

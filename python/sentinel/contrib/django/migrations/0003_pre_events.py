"""Sentinel's SQL migration 0003_pre_events.sql, applied by Django (see sentinel.contrib.django.operations)."""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0002_pre_grants")]

    operations = [ApplySentinelMigration("0003_pre_events")]

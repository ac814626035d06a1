"""Sentinel's SQL migration 0002_pre_grants.sql, applied by Django (see sentinel.contrib.django.operations)."""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0001_pre_core")]

    operations = [ApplySentinelMigration("0002_pre_grants")]

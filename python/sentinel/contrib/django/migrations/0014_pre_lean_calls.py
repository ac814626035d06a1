"""Sentinel's SQL migration 0014_pre_lean_calls.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0013_pre_batched_heartbeats")]

    operations = [ApplySentinelMigration("0014_pre_lean_calls")]

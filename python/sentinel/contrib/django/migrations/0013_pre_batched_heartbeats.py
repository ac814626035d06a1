"""Sentinel's SQL migration 0013_pre_batched_heartbeats.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0012_pre_tenants")]

    operations = [ApplySentinelMigration("0013_pre_batched_heartbeats")]

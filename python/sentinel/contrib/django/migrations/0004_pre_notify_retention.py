"""Sentinel's SQL migration 0004_pre_notify_retention.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0003_pre_events")]

    operations = [ApplySentinelMigration("0004_pre_notify_retention")]

"""Sentinel's SQL migration 0005_pre_late_failure.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0004_pre_notify_retention")]

    operations = [ApplySentinelMigration("0005_pre_late_failure")]

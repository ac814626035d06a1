"""Sentinel's SQL migration 0007_pre_lock_timeouts.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0006_pre_fingerprint_schemes")]

    operations = [ApplySentinelMigration("0007_pre_lock_timeouts")]

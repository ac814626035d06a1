"""Sentinel's SQL migration 0006_pre_fingerprint_schemes.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0005_pre_late_failure")]

    operations = [ApplySentinelMigration("0006_pre_fingerprint_schemes")]

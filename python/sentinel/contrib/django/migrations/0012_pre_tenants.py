"""Sentinel's SQL migration 0012_pre_tenants.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0011_pre_cheaper_triggers")]

    operations = [ApplySentinelMigration("0012_pre_tenants")]

"""Sentinel's SQL migration 0011_pre_cheaper_triggers.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0010_pre_pinned_search_path")]

    operations = [ApplySentinelMigration("0011_pre_cheaper_triggers")]

"""Sentinel's SQL migration 0010_pre_pinned_search_path.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0009_pre_size_caps")]

    operations = [ApplySentinelMigration("0010_pre_pinned_search_path")]

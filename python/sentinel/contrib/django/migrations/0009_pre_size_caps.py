"""Sentinel's SQL migration 0009_pre_size_caps.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0008_pre_claim_token")]

    operations = [ApplySentinelMigration("0009_pre_size_caps")]

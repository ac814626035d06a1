"""Sentinel's SQL migration 0008_pre_claim_token.sql, applied by Django.

See sentinel.contrib.django.operations.
"""

from django.db import migrations

from sentinel.contrib.django.operations import ApplySentinelMigration


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("sentinel", "0007_pre_lock_timeouts")]

    operations = [ApplySentinelMigration("0008_pre_claim_token")]

"""A payment: one row per charge made at the (simulated) card provider."""

from django.conf import settings
from django.db import models


class Payment(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    amount = models.PositiveIntegerField(help_text="in minor units (cents)")
    currency = models.CharField(max_length=3)
    customer = models.CharField(max_length=100)
    charge_id = models.CharField(max_length=40, unique=True)
    idempotency_key = models.CharField(max_length=1100, help_text="the Sentinel key it ran under")
    fence = models.BigIntegerField(help_text="the Sentinel fence it ran under")
    created_at = models.DateTimeField(auto_now_add=True)

    def as_dict(self) -> dict:
        return {
            "id": self.pk,
            "amount": self.amount,
            "currency": self.currency,
            "customer": self.customer,
            "charge_id": self.charge_id,
            "created_at": self.created_at.isoformat(),
        }

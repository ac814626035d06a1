"""The Sentinel example shop: a Django project with a payments API guarded by Idempotency-Key."""

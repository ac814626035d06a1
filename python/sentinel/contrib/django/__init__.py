"""Sentinel for Django (placeholder until the integration lands)."""

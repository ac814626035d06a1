"""Settings of the example shop.

The database comes from ``SENTINEL_DJANGO_DSN`` (or ``DATABASE_URL``): a libpq
URL or key=value conninfo, for example
``SENTINEL_DJANGO_DSN=postgresql://app:secret@localhost/shop``. Sentinel uses the
same database (``SENTINEL["DATABASE"]`` defaults to ``"default"``).
"""

from __future__ import annotations

import os
from typing import Any, Dict

from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict


def database_from_dsn(dsn: str) -> Dict[str, Any]:
    """A ``DATABASES`` entry from a libpq URL or conninfo; other libpq keywords go to OPTIONS."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", None),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


DSN = os.environ.get("SENTINEL_DJANGO_DSN") or os.environ.get("DATABASE_URL")
if not DSN:
    raise ImproperlyConfigured(
        "set SENTINEL_DJANGO_DSN (or DATABASE_URL) to the PostgreSQL database of the example, "
        "e.g. SENTINEL_DJANGO_DSN=postgresql://postgres@localhost/shop"
    )

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-sentinel-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "sentinel.contrib.django",
    "payments",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "shop.auth.BasicAuthMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {"default": database_from_dsn(DSN)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

SENTINEL = {
    "NAMESPACE": "shop",
    "DEFAULT_TTL_MS": 5000,
}

# How long the simulated card provider takes to answer a charge.
PAYMENT_PROVIDER_LATENCY_MS = int(os.environ.get("PAYMENT_PROVIDER_LATENCY_MS", "200"))

"""Django tests: the example project's settings (examples/django), on a fresh database of the test server.

Django is configured lazily by the session fixture ``django_env`` and is
*active only while a test of this folder runs* (the autouse fixture
``_django_active`` swaps the configured settings in and out, as
``override_settings`` does). The rest of the suite never sees a configured
Django: there ``Sentinel()`` without arguments must keep raising TypeError.

The tests do not use pytest-django's ``django_db`` transactions: Sentinel works
on its own connections, which only see committed data, so every write here is
committed, on a database of its own, dropped at the end. pytest-django's
``settings`` (override_settings, undone after each test) and ``rf`` fixtures are used.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLE = ROOT / "examples" / "django"
for _p in (str(EXAMPLE), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pgserver  # noqa: E402

# What the tests change in the example's settings.
TEST_SETTINGS: Dict[str, Any] = {
    "DEBUG": False,
    "ROOT_URLCONF": "sentinel_test_urls",
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast logins
    "MEDIA_URL": "/media/",
    "PAYMENT_PROVIDER_LATENCY_MS": 200,
}


def example_settings(dsn: str) -> Dict[str, Any]:
    """The upper-case names of examples/django/shop/settings.py, read with SENTINEL_DJANGO_DSN=dsn."""
    saved = os.environ.get("SENTINEL_DJANGO_DSN")
    os.environ["SENTINEL_DJANGO_DSN"] = dsn
    try:
        sys.modules.pop("shop.settings", None)
        module = importlib.import_module("shop.settings")
    finally:
        if saved is None:
            os.environ.pop("SENTINEL_DJANGO_DSN", None)
        else:
            os.environ["SENTINEL_DJANGO_DSN"] = saved
    return {name: getattr(module, name) for name in dir(module) if name.isupper()}


def create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return pgserver.with_dbname(server_dsn, name)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def django_dsn(server_dsn: str) -> Iterator[str]:
    """A database of its own for the Django tests (migrated by ``django_env``)."""
    name = f"sentinel_django_{os.getpid()}"
    yield create_database(server_dsn, name)
    drop_database(server_dsn, name)


@pytest.fixture(scope="session")
def django_env(django_dsn: str) -> Iterator[Any]:
    """Configure Django once (example settings + TEST_SETTINGS), migrate; yield the settings object."""
    from django.conf import settings
    from django.core.management import call_command
    from django.utils.functional import empty

    import django

    assert not settings.configured, "Django was configured before the Django tests: the settings would leak"
    values = example_settings(django_dsn)
    values.update(TEST_SETTINGS)
    values["DATABASES"] = dict(values["DATABASES"])
    values["DATABASES"]["lite"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    settings.configure(**values)
    django.setup()
    call_command("migrate", verbosity=0)
    holder = settings._wrapped
    settings._wrapped = empty
    yield holder
    settings._wrapped = holder
    try:
        from django.db import connections

        from sentinel.contrib.django import reset_sentinel

        reset_sentinel()
        connections.close_all()
    finally:
        settings._wrapped = empty


@pytest.fixture(autouse=True)
def _django_active(django_env: Any) -> Iterator[None]:
    """Django's settings, for the duration of one test of this folder only."""
    from django.conf import settings
    from django.utils.functional import empty

    settings._wrapped = django_env
    try:
        yield
    finally:
        settings._wrapped = empty


@pytest.fixture
def make_user() -> Callable[[], Any]:
    """Factory of fresh users (committed: Sentinel's connections must see them)."""
    from django.contrib.auth import get_user_model

    def make() -> Any:
        return get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="pw")

    return make


@pytest.fixture
def user(make_user: Callable[[], Any]) -> Any:
    """A fresh user: keys are scoped per user, so tests never share records."""
    return make_user()


@pytest.fixture
def http(user: Any) -> Any:
    """Django's test Client, logged in as ``user``."""
    from django.test import Client

    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def idem_key() -> str:
    return f"key-{uuid.uuid4().hex}"


@pytest.fixture
def live_url(django_env: Any) -> Iterator[str]:
    """A real HTTP server (Django's LiveServerThread: one thread per request) serving the test URLs."""
    from django.test.testcases import LiveServerThread

    thread = LiveServerThread("127.0.0.1", lambda app: app)
    thread.daemon = True
    thread.start()
    assert thread.is_ready.wait(10), "the live server did not start"
    if thread.error is not None:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()

"""`Sentinel()` without arguments takes its database, namespace and lease from the Django settings."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import psycopg
import pytest
from djutil import sentinel_state
from psycopg.conninfo import conninfo_to_dict

import sentinel
from sentinel.contrib.django import conninfo_for_alias, get_sentinel, sentinel_defaults


@pytest.fixture
def role(django_dsn: str) -> Iterator[str]:
    name = f"sentinel_dj_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        conn.execute(f"create role {name}")
    yield name
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        conn.execute(f"drop role if exists {name}")


def test_sentinel_without_arguments_uses_the_default_database(django_dsn: str) -> None:
    from django.db import connection

    with sentinel.Sentinel() as s:
        assert s.namespace == "shop" and s.default_ttl_ms == 5000  # the example's SENTINEL
        key = f"auto-{uuid.uuid4().hex}"
        result = s.once(key, lambda: {"ok": True})
    assert result.response == {"ok": True} and not result.replayed
    # the record is in Django's database: Django's own connection sees it
    with connection.cursor() as cur:
        cur.execute("select state from sentinel.inspect_v1(%s, %s)", ["shop", key])
        assert cur.fetchone() == ("completed",)
    with psycopg.connect(sentinel_defaults()["conninfo"]) as conn:  # type: ignore[index]
        assert conn.execute("select current_database()").fetchone() == (connection.settings_dict["NAME"],)
    assert sentinel_state(django_dsn, "shop", key) == "completed"


def test_sentinel_setting_chooses_namespace_ttl_and_alias(settings: Any) -> None:
    settings.SENTINEL = {"DATABASE": "default", "NAMESPACE": "billing", "DEFAULT_TTL_MS": 1234}
    with sentinel.Sentinel() as s:
        assert (s.namespace, s.default_ttl_ms) == ("billing", 1234)
    with sentinel.Sentinel(namespace="explicit") as s:  # explicit arguments win
        assert (s.namespace, s.default_ttl_ms) == ("explicit", 1234)
    assert get_sentinel().namespace == "billing"  # the shared one is rebuilt after the change
    settings.SENTINEL = {}
    with sentinel.Sentinel() as s:
        assert (s.namespace, s.default_ttl_ms) == ("default", 3000)


def test_a_database_that_is_not_postgresql_is_improperly_configured(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.SENTINEL = {"DATABASE": "lite"}
    with pytest.raises(ImproperlyConfigured, match=r"needs PostgreSQL.*'lite'.*sqlite3"):
        sentinel.Sentinel()
    settings.SENTINEL = {"DATABASE": "missing"}
    with pytest.raises(ImproperlyConfigured, match=r"'missing'.*not in settings.DATABASES"):
        sentinel.Sentinel()
    settings.SENTINEL = {"DATABSE": "default"}
    with pytest.raises(ImproperlyConfigured, match=r"unknown keys \['DATABSE'\]"):
        sentinel.Sentinel()


def test_conninfo_carries_user_password_host_port_and_libpq_options(role: str) -> None:
    from django.db import connections

    base = dict(connections["default"].settings_dict)
    connections.settings["tuned"] = {
        **base,
        "PASSWORD": "p w'd\\",
        "OPTIONS": {**base["OPTIONS"], "application_name": "shop web", "sslmode": "disable",
                    "connect_timeout": 7, "server_side_binding": True, "assume_role": role,
                    "isolation_level": 1},
    }
    try:
        conninfo = conninfo_for_alias("tuned")
        params = conninfo_to_dict(conninfo)
        assert params["password"] == "p w'd\\"
        assert params["application_name"] == "shop web"
        assert params["sslmode"] == "disable" and params["connect_timeout"] == "7"
        assert params["dbname"] == base["NAME"]
        assert params["options"] == f"-c role={role}"
        for django_only in ("server_side_binding", "assume_role", "isolation_level", "cursor_factory", "context",
                            "prepare_threshold"):
            assert django_only not in params
        # Connect with the real password (a server may check it; the embedded one trusts local connections).
        real = psycopg.conninfo.make_conninfo(conninfo, password=base.get("PASSWORD") or "")
        with psycopg.connect(real) as conn:
            row = conn.execute("select current_user, current_setting('application_name')").fetchone()
        assert row == (role, "shop web")
    finally:
        del connections["tuned"]
        del connections.settings["tuned"]

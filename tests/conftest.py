"""Fixtures: a real PostgreSQL (never a mock), one database with the schema, a namespace per test."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pgserver  # noqa: E402
import sentinel  # noqa: E402


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the server: SENTINEL_TEST_DSN, or a throwaway embedded PostgreSQL."""
    with pgserver.server() as dsn:
        yield dsn


def _create_db(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return pgserver.with_dbname(server_dsn, name)


def _drop_db(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def dsn(server_dsn: str) -> Iterator[str]:
    """DSN of a database with the Sentinel schema installed, shared by the session."""
    name = f"sentinel_test_{os.getpid()}"
    target = _create_db(server_dsn, name)
    with psycopg.connect(target, autocommit=True) as conn:
        sentinel.init_db(conn)
    yield target
    _drop_db(server_dsn, name)


@pytest.fixture
def empty_db(server_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory of empty databases (no schema), dropped after the test."""
    made: List[str] = []

    def make() -> str:
        name = f"sentinel_empty_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return _create_db(server_dsn, name)

    yield make
    for name in made:
        _drop_db(server_dsn, name)


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses: tests share one database, isolated by namespace."""
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, dsn: str, namespace: str) -> Iterator[sentinel.Sentinel]:
    """A client on the test database in this test's namespace, once per driver.

    ``sync`` is a :class:`sentinel.Sentinel`; ``async`` an
    :class:`sentinel.AsyncSentinel` behind the same API (``tests/drivers.py``),
    so every test of this fixture runs on both drivers. Fingerprints are off:
    tests replay keys with functions that must not run, which a fingerprint
    would (rightly) call a different piece of work.
    """
    from drivers import make

    s = make(request.param, conninfo=dsn, namespace=namespace, default_ttl_ms=3000, fingerprints=False)
    yield s
    s.close()


Login = Callable[..., str]


@pytest.fixture
def login(dsn: str) -> Iterator[Login]:
    """login(namespace, *rights) creates a login role granted with grant_v2 (or none) and returns its DSN."""
    made: List[str] = []

    def make(namespace: Optional[str] = None, *rights: str, legacy: bool = False) -> str:
        role = f"t_{uuid.uuid4().hex[:10]}"
        password = uuid.uuid4().hex
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"create role {role} login password '{password}'")
            if legacy:
                admin.execute("select sentinel.grant_v1(%s)", (role,))
            elif namespace is not None:
                admin.execute("select sentinel.grant_v2(%s, %s, %s)", (role, namespace, list(rights) or ["app"]))
        made.append(role)
        return psycopg.conninfo.make_conninfo(dsn, user=role, password=password)

    yield make
    with psycopg.connect(dsn, autocommit=True) as admin:
        for role in made:
            admin.execute("delete from sentinel.rights where role = to_regrole(%s)", (role,))
            admin.execute("delete from sentinel.watchers where role = to_regrole(%s)", (role,))
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")

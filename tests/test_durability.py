"""`sentinel check` on replication and commit settings, and the fence sequence after a restore.

Every case runs against a real server: the settings are the role's, the
database's or the server's own, set with ALTER ROLE / ALTER DATABASE / ALTER
SYSTEM, and read back by the `sentinel` command in a subprocess.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Iterator, List

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import sentinel
from sentinel._durability import judge
from test_cli import run


@pytest.fixture
def installed(empty_db: Callable[[], str]) -> str:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        sentinel.init_db(c)
    return dsn


@pytest.fixture
def role(installed: str) -> Iterator[str]:
    """A role of its own (granted as an application), so ALTER ROLE touches nothing else; its DSN."""
    name = f"dur_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(installed, autocommit=True) as c:
        c.execute(f"create role {name} login password 'pw'")
        c.execute("select sentinel.grant_v1(%s)", (name,))
    params = conninfo_to_dict(installed)
    params.update(user=name, password="pw")
    yield make_conninfo(**params)
    with psycopg.connect(installed, autocommit=True) as c:
        c.execute(f"drop owned by {name}")
        c.execute(f"drop role {name}")


def check(dsn: str) -> Any:
    done = run("check", "--json", "--dsn", dsn)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout), done.returncode


def test_a_primary_without_a_synchronous_standby_warns_and_names_the_setting(installed: str) -> None:
    with psycopg.connect(installed) as c:
        names = c.execute("show synchronous_standby_names").fetchone()
    assert names is not None and names[0] == "", "this test needs a server without synchronous standbys"
    data, rc = check(installed)
    assert rc == 0 and data["ok"], data  # a warning, not a failure: a development server has no standby
    assert any("synchronous_standby_names is empty" in w and "run twice" in w for w in data["warnings"]), data
    assert data["replication"]["synchronous_standby_names"] == ""
    text = run("check", "--dsn", installed)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("ok: schema version"), text.stdout
    assert "\nwarning: no synchronous standby" in text.stdout, text.stdout


def test_synchronous_commit_off_for_the_role_is_named_with_the_statement_that_resets_it(
        installed: str, role: str) -> None:
    user = conninfo_to_dict(role)["user"]
    with psycopg.connect(installed, autocommit=True) as c:
        c.execute(f"alter role {user} set synchronous_commit = off")
    data, rc = check(role)
    assert rc == 0, data
    assert data["replication"]["synchronous_commit"] == "off"
    assert data["replication"]["synchronous_commit_source"] == "user"
    off = [w for w in data["warnings"] if w.startswith("synchronous_commit is off")]
    assert off and "ALTER ROLE <role> RESET synchronous_commit" in off[0], data["warnings"]
    # the owner's session is not affected: no such warning there
    owner, _ = check(installed)
    assert not any(w.startswith("synchronous_commit is off") for w in owner["warnings"]), owner


def test_synchronous_commit_local_for_the_database_with_a_standby_configured_warns(
        installed: str, server_dsn: str) -> None:
    """With synchronous_standby_names set, `local` for the database is the hole: commits skip the standby."""
    dbname = conninfo_to_dict(installed)["dbname"]
    with psycopg.connect(installed, autocommit=True) as c:
        c.execute(f'alter database "{dbname}" set synchronous_commit = local')
    with psycopg.connect(server_dsn, autocommit=True) as c:
        # No standby is connected: commits at synchronous_commit = on would wait for it, so
        # every session of this test runs with local, and the setting is reset before anything else runs.
        c.execute("set synchronous_commit = local")
        c.execute("alter system set synchronous_standby_names = 'sentinel_test_standby'")
        c.execute("select pg_reload_conf()")
        try:
            seen = _wait_for_setting(installed, "synchronous_standby_names", "sentinel_test_standby")
            assert seen, "the server did not reload synchronous_standby_names"
            data, rc = check(installed)
        finally:
            c.execute("alter system reset synchronous_standby_names")
            c.execute("select pg_reload_conf()")
            assert _wait_for_setting(installed, "synchronous_standby_names", "")
    assert rc == 0, data
    local = [w for w in data["warnings"] if w.startswith("synchronous_commit = local")]
    assert local and "failover can lose" in local[0] and "ALTER DATABASE <db> RESET" in local[0], data["warnings"]
    assert data["replication"]["synchronous_commit_source"] == "database"
    assert not any("synchronous_standby_names is empty" in w for w in data["warnings"]), data["warnings"]
    assert any("no synchronous standby is connected" in w for w in data["warnings"]), data["warnings"]


def _wait_for_setting(dsn: str, name: str, value: str) -> bool:
    """Whether a new session sees ``name = value`` within a few seconds (a reload reaches backends at once,
    new ones at their start)."""
    import time

    end = time.monotonic() + 10
    while time.monotonic() < end:
        with psycopg.connect(dsn) as c:
            row = c.execute("select current_setting(%s)", (name,)).fetchone()
        if row is not None and row[0] == value:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("settings, expected", [
    ((True, "on", "default", "", None), ["this server is a standby"]),
    ((False, "on", "configuration file", "*", 1), []),
    ((False, "remote_apply", "configuration file", "s1", 1), []),
    ((False, "off", "client", "s1", 1), ["synchronous_commit is off", "synchronous_commit = off"]),
    ((False, "local", "database user", "s1", None), ["synchronous_commit = local"]),
])
def test_judge_covers_every_combination(settings: Any, expected: List[str]) -> None:
    """The rule itself, for the settings a single test server cannot have (a real standby connected)."""
    found = judge(*settings)
    assert [w for w in found if any(w.startswith(e) for e in expected)] == found, found
    assert len(found) == len(expected), found


def test_a_fence_sequence_behind_the_records_fails_check_and_resync_fences_moves_it_past(installed: str) -> None:
    s = sentinel.Sentinel(conninfo=installed, namespace="payments")
    try:
        for n in range(3):
            s.once(f"order-{n}", lambda: "ok", fingerprint=False)
    finally:
        s.close()
    with psycopg.connect(installed, autocommit=True) as c:
        highest = c.execute("select max(fence) from sentinel.executions").fetchone()
        assert highest is not None and highest[0] >= 3
        c.execute("select setval('sentinel.fence_seq', 1)")  # what a restore to an older point leaves
    data, rc = check(installed)
    assert rc == 1 and not data["ok"], data
    assert any("fence sequence would hand out fence 2" in p and "sentinel resync-fences" in p
               for p in data["problems"]), data["problems"]

    moved = run("resync-fences", "--margin", "1000", "--json", "--dsn", installed)
    assert moved.returncode == 0, moved.stderr
    out = json.loads(moved.stdout)
    assert out["next_fence_before"] == 2 and out["next_fence"] == highest[0] + 1 + 1000, out
    data, rc = check(installed)
    assert rc == 0 and data["ok"], data
    s = sentinel.Sentinel(conninfo=installed, namespace="payments")
    try:
        fresh = s.once("after-restore", lambda: "ok", fingerprint=False)
    finally:
        s.close()
    assert fresh.fence == highest[0] + 1 + 1000, fresh

    again = run("resync-fences", "--margin", "0", "--dsn", installed)  # already past: nothing moves, never back
    assert again.returncode == 0 and "already past" in again.stdout, (again.stdout, again.stderr)
    bad = run("resync-fences", "--margin", "-1", "--dsn", installed)
    assert bad.returncode == 1 and "--margin must be a whole number >= 0" in bad.stderr, bad.stderr


def test_an_app_role_cannot_resync_fences_and_is_told_who_can(role: str) -> None:
    done = run("resync-fences", "--dsn", role)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "permission denied" in done.stderr and "schema owner" in done.stderr, done.stderr

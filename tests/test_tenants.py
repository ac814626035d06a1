"""Tenants held by the database: rights per namespace, the proof of a claim, private notifications.

Every test logs in as real roles (their own logins and passwords, each on
its own connection) and attacks the protocol the way an application with an
ordinary grant could: reading another namespace, completing a claim whose
fence it read, listening for other tenants' keys, removing their watchers.
sqltests/17-tenants.sql holds the full rights matrix in SQL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List

import psycopg
import pytest

import sentinel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.cluster import PGBOUNCER_INSTALL, free_port, wait_connectable  # noqa: E402

#: the ``login`` fixture (conftest.py): login(namespace, *rights) -> a DSN of a new role
Login = Callable[..., str]


def _user(role_dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(role_dsn)["user"])


def test_a_role_of_one_namespace_can_neither_read_nor_claim_another(login: Login, namespace: str) -> None:
    other = namespace + "-other"
    mine, theirs = login(namespace), login(other)
    with sentinel.Sentinel(conninfo=theirs, namespace=other) as s:
        assert s.once("k", lambda: {"secret": 1}).response == {"secret": 1}
    with sentinel.Sentinel(conninfo=mine, namespace=other) as s:
        with pytest.raises(sentinel.PermissionDenied) as claim:
            s.once("k", lambda: 2)
        with pytest.raises(sentinel.PermissionDenied):
            s.inspect("k")
        with pytest.raises(sentinel.PermissionDenied):
            s.list()
    message = str(claim.value)
    assert f"role {_user(mine)} may not claim keys in namespace '{other}'" in message, message
    assert f"sentinel grant {_user(mine)} --namespace {other}" in message, message
    assert not message.startswith("sentinel: "), "the message must not repeat its prefix"
    with sentinel.Sentinel(conninfo=mine, namespace=namespace) as s:
        assert s.once("k", lambda: 3).response == 3


def _hold(s: sentinel.Sentinel, key: str, value: Any) -> tuple[threading.Thread, threading.Event, List[Any]]:
    """Run once(key) in a thread whose function waits for the returned event; the thread's outcome in the list."""
    release, out = threading.Event(), []

    def fn() -> Any:
        assert release.wait(30)
        return value

    def run() -> None:
        try:
            out.append(s.once(key, fn, ttl_ms=30_000))
        except BaseException as exc:  # the test inspects it
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, release, out


def _fence_when_executing(role_dsn: str, namespace: str, key: str) -> int:
    """Wait (on the database's state, not a clock) until the key is executing; its fence, read as ``role_dsn``."""
    with psycopg.connect(role_dsn, autocommit=True) as conn:
        for _ in range(3000):
            row = conn.execute("select state, fence from sentinel.inspect_v1(%s, %s)", (namespace, key)).fetchone()
            if row is not None and row[0] == "executing":
                return int(row[1])
            conn.execute("select pg_sleep(0.01)")
    raise AssertionError(f"{namespace}/{key} never started")


def test_the_public_fence_does_not_let_another_role_complete_a_claim(login: Login, namespace: str) -> None:
    owner_dsn, forger_dsn = login(namespace), login(namespace)
    with sentinel.Sentinel(conninfo=owner_dsn, namespace=namespace) as s:
        t, release, out = _hold(s, "pay-1", {"charged": 100})
        fence = _fence_when_executing(forger_dsn, namespace, "pay-1")
        with psycopg.connect(forger_dsn, autocommit=True) as forger:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no tokenless complete for this role
                forger.execute("select sentinel.complete_v1(%s, 'pay-1', %s, '\"forged\"')", (namespace, fence))
            row = forger.execute("select outcome from sentinel.complete_v3(%s, 'pay-1', %s, %s, '\"forged\"')",
                                 (namespace, fence, "guessed-token-0000000000")).fetchone()
            assert row == ("stale",), "the fence and a guessed token must not complete the claim"
            alive = forger.execute("select alive from sentinel.heartbeat_v2(%s, 'pay-1', %s, %s)",
                                   (namespace, fence, "guessed-token-0000000000")).fetchone()
            assert alive == (False,)
        release.set()
        t.join(30)
        assert isinstance(out[0], sentinel.Result) and out[0].response == {"charged": 100}, out
        assert s.once("pay-1", lambda: None).response == {"charged": 100}, "the replay serves the owner's response"


def test_a_completion_forged_by_a_legacy_role_is_reported_as_a_conflict(login: Login, namespace: str) -> None:
    """A role still holding complete_v1 forges the record; the owner is told instead of trusting it."""
    owner_dsn, legacy_dsn = login(namespace), login(legacy=True)
    with sentinel.Sentinel(conninfo=owner_dsn, namespace=namespace) as s:
        t, release, out = _hold(s, "pay-2", {"charged": 100})
        fence = _fence_when_executing(legacy_dsn, namespace, "pay-2")
        with psycopg.connect(legacy_dsn, autocommit=True) as legacy:
            row = legacy.execute("select outcome from sentinel.complete_v1(%s, 'pay-2', %s, '\"forged\"')",
                                 (namespace, fence)).fetchone()
            assert row == ("recorded",)
        release.set()
        t.join(30)
    assert isinstance(out[0], sentinel.RecordConflict), out
    assert out[0].response == {"charged": 100} and out[0].fence == fence
    assert "legacy complete_v1/complete_v2" in str(out[0])


def test_a_probe_resolves_uncertain_keys_of_its_namespace_only(login: Login, dsn: str, namespace: str) -> None:
    probe_dsn = login(namespace, "probe")
    with psycopg.connect(dsn, autocommit=True) as admin:
        for key in ("u", "f"):
            fence = admin.execute("select fence from sentinel.acquire_v1(%s, %s, 'w', 60000)",
                                  (namespace, key)).fetchone()
            assert fence is not None
            if key == "u":
                admin.execute("select sentinel.abandon_v1(%s, %s, %s, 'worker died')", (namespace, key, fence[0]))
            else:
                admin.execute("select sentinel.fail_v1(%s, %s, %s, '{}', true)", (namespace, key, fence[0]))
    with sentinel.Operations(conninfo=probe_dsn, namespace=namespace) as ops:
        done = ops.reconcile("u", action="completed", response={"ok": True}, actor="probe", reason="provider: paid")
        assert done["state"] == "completed"
        with pytest.raises(sentinel.PermissionDenied, match="may only resolve uncertain keys"):
            ops.reconcile("f", action="release", actor="probe", reason="retry")
        with pytest.raises(sentinel.PermissionDenied, match="permission denied for function purge_v1"):
            ops.purge(0)
    with sentinel.Operations(conninfo=probe_dsn, namespace=namespace + "-x") as ops:
        with pytest.raises(sentinel.PermissionDenied, match="may not reconcile keys"):
            ops.reconcile("u", action="release", actor="probe", reason="x")


def test_notifications_reveal_no_key_to_a_role_without_any_grant(login: Login, dsn: str, namespace: str) -> None:
    """A session of any role can LISTEN on any channel; the waiter's channel is random and carries only an id."""
    app_dsn, outsider_dsn = login(namespace), login()
    legacy_channel = "sentinel_" + __import__("hashlib").md5(namespace.encode()).hexdigest()
    with psycopg.connect(outsider_dsn, autocommit=True) as outsider, \
            sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as worker, \
            sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as waiter:
        outsider.execute(f"listen {legacy_channel}")
        t, release, out = _hold(worker, "secret-key", 1)
        _fence_when_executing(app_dsn, namespace, "secret-key")
        waited: List[Any] = []
        w = threading.Thread(target=lambda: waited.append(waiter.once("secret-key", lambda: 2, wait_ms=20_000)))
        w.start()
        with psycopg.connect(dsn, autocommit=True) as admin:
            for _ in range(3000):  # until the waiter has registered its watcher
                row = admin.execute("select channel from sentinel.watchers where namespace = %s and key = 'secret-key'",
                                    (namespace,)).fetchone()
                if row is not None:
                    break
                admin.execute("select pg_sleep(0.01)")
            assert row is not None and row[0].startswith("sentinel_w_") and len(row[0]) >= 43, row
            admin.execute(f'listen "{row[0]}"')  # what the waiter's own listener receives
            release.set()
            t.join(30)
            notes = list(admin.notifies(timeout=10, stop_after=1))
        w.join(30)
        assert waited and waited[0].response == 1
        assert notes and notes[0].payload.isdigit(), [n.payload for n in notes]
        outsider.execute("select 1")  # notifications committed before this are delivered with its reply
        leaked = list(outsider.notifies(timeout=0.2))
        assert leaked == [], f"a role without any grant received {[n.payload for n in leaked]}"


def test_a_watcher_belongs_to_its_role_and_ends_with_its_session(login: Login, dsn: str, namespace: str) -> None:
    a_dsn, b_dsn = login(namespace), login(namespace)
    channel = "sentinel_w_" + uuid.uuid4().hex
    with psycopg.connect(a_dsn, autocommit=True) as a:
        row = a.execute("select sentinel.watch_v2(%s, 'k', 600000, %s)", (namespace, channel)).fetchone()
        assert row is not None
        wid, pid = row[0], a.info.backend_pid
        with psycopg.connect(b_dsn, autocommit=True) as b:
            assert b.execute("select sentinel.unwatch_v1(%s)", (wid,)).fetchone() == (False,)
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("select count(*) from sentinel.watchers where id = %s", (wid,)).fetchone() == (1,)
        for _ in range(3000):  # until the closed session's backend is gone
            if admin.execute("select count(*) from pg_stat_activity where pid = %s", (pid,)).fetchone() == (0,):
                break
            admin.execute("select pg_sleep(0.01)")
    with psycopg.connect(a_dsn, autocommit=True) as a:
        a.execute("select sentinel.watch_v2(%s, 'other', 1000, %s)", (namespace, channel))
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("select count(*) from sentinel.watchers where id = %s", (wid,)).fetchone() == (0,), \
            "the watcher of an ended session is removed when its role watches again"


def test_each_event_records_the_login_role(login: Login, dsn: str, namespace: str) -> None:
    app_dsn = login(namespace)
    with sentinel.Sentinel(conninfo=app_dsn, namespace=namespace) as s:
        s.once("k", lambda: 1)
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute("select db_user, to_state from sentinel.events where namespace = %s order by id",
                             (namespace,)).fetchall()
    assert rows == [(_user(app_dsn), "executing"), (_user(app_dsn), "completed")], rows


def test_the_purge_setting_gives_no_role_but_the_owner_a_way_to_delete_events(login: Login, namespace: str) -> None:
    op_dsn = login(namespace, "operator", "purge")
    with psycopg.connect(op_dsn, autocommit=True) as conn:
        conn.execute("set sentinel.purging_events = on")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from sentinel.events")


# -- behind PgBouncer: one pool per tenant login ----------------------------------


@pytest.fixture
def bouncer(login: Login, namespace: str) -> Iterator[Callable[[str], str]]:
    """PgBouncer (transaction pooling) in front of the test database, with two tenant logins."""
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if exe is None:
        if os.environ.get("SENTINEL_SKIP_PGBOUNCER") == "1":
            pytest.skip("SENTINEL_SKIP_PGBOUNCER=1")
        pytest.fail(f"pgbouncer is not installed: {PGBOUNCER_INSTALL}, or set SENTINEL_SKIP_PGBOUNCER=1")
    # PgBouncer refuses to run as root: its files live where its own user can read them.
    tmp_path = Path(tempfile.mkdtemp(prefix="sentinel-bouncer-"))
    tenants = {"a": login(namespace + "-a"), "b": login(namespace + "-b")}
    params = {k: psycopg.conninfo.conninfo_to_dict(v) for k, v in tenants.items()}
    server = params["a"]
    port = free_port()
    users = "".join(f'"{p["user"]}" "{p["password"]}"\n' for p in params.values())
    (tmp_path / "users.txt").write_text(users)
    host = str(server.get("host") or "127.0.0.1")
    (tmp_path / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"tenants = host={host} port={server.get('port', 5432)} dbname={server['dbname']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = plain\nauth_file = {tmp_path / 'users.txt'}\npool_mode = transaction\n"
        f"logfile = {tmp_path / 'pgbouncer.log'}\npidfile = {tmp_path / 'pgbouncer.pid'}\n"
    )
    os.chmod(tmp_path, 0o755)
    for f in tmp_path.iterdir():
        os.chmod(f, 0o644)
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        if host.startswith("/"):  # a server on a Unix socket only: PgBouncer runs as the owner of its folder
            kwargs["user"] = pwd.getpwuid(os.stat(host).st_uid).pw_name
        else:
            kwargs["user"] = "postgres" if shutil.which("pg_ctlcluster") else "nobody"
        shutil.chown(tmp_path, kwargs["user"])  # its log and pid file
    proc = subprocess.Popen([exe, str(tmp_path / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)

    def via(tenant: str) -> str:
        p = params[tenant]
        return psycopg.conninfo.make_conninfo("", host="127.0.0.1", port=port, dbname="tenants", user=p["user"],
                                              password=p["password"])

    try:
        try:
            wait_connectable(via("a"), 30, "PgBouncer")
        except RuntimeError as exc:
            log = tmp_path / "pgbouncer.log"
            raise RuntimeError(f"{exc}\n{log.read_text() if log.exists() else '(no pgbouncer log)'}") from exc
        yield via
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_behind_pgbouncer_each_tenant_login_is_held_to_its_namespace(bouncer: Callable[[str], str],
                                                                      namespace: str) -> None:
    for me, other in (("a", "b"), ("b", "a")):
        with sentinel.Sentinel(conninfo=bouncer(me), namespace=f"{namespace}-{me}") as s:
            assert s.once("k", lambda m=me: m).response == me
        with sentinel.Sentinel(conninfo=bouncer(me), namespace=f"{namespace}-{other}") as s:
            refused = f"may not claim keys in namespace '{namespace}-{other}'"
            with pytest.raises(sentinel.PermissionDenied, match=refused):
                s.once("k", lambda: 0)

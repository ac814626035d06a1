"""Schema version 14: the functions write the event log themselves, and a decided key is read without a call.

Only the functions write ``sentinel.executions`` (a guard refuses any other
writer, even the owner, unless it marks its transaction); ``sentinel.decided_v1``
shows a role the decided keys of the namespaces it holds the app right on
itself, and once()'s acquire statement reads it before calling acquire_v2.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, List, Tuple

import psycopg
import pytest

import sentinel
from sentinel._options import _ACQUIRE_DECIDED_SQL, acquire_statement

#: the ``login`` fixture (conftest.py): login(namespace, *rights) -> a DSN of a new role
Login = Callable[..., str]
TOKEN = "t" * 24


def _decided(conn: psycopg.Connection[Any], ns: str, key: str) -> Any:
    return conn.execute("select outcome, state, response, error from sentinel.decided_v1"
                        " where namespace = %s and key = %s", (ns, key)).fetchone()


def test_a_direct_write_is_refused_even_for_the_owner(conn: psycopg.Connection[Any], namespace: str) -> None:
    fence = conn.execute("select fence from sentinel.acquire_v2(%s, 'k', 'w', 60000)", (namespace,)).fetchone()
    assert fence is not None
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("update sentinel.executions set state = 'completed', response = '1'"
                     " where namespace = %s and key = 'k'", (namespace,))
    assert refused.value.sqlstate == "SN017"
    assert "UPDATE of sentinel.executions outside the Sentinel functions refused" in str(refused.value)
    assert refused.value.diag.message_hint is not None and "sentinel.writer" in refused.value.diag.message_hint
    with pytest.raises(psycopg.Error) as inserted:
        conn.execute("insert into sentinel.executions (namespace, key, state, fence, attempt, ttl_ms, claimed_at,"
                     " lease_expires_at, hard_expires_at, updated_at) values (%s, 'forged', 'completed', 1, 1, 1,"
                     " now(), now(), now(), now())", (namespace,))
    assert inserted.value.sqlstate == "SN017"
    assert conn.execute("select state from sentinel.inspect_v1(%s, 'k')", (namespace,)).fetchone() == ("executing",)
    # A DBA who must write by hand marks the transaction, and the change goes through.
    with conn.transaction():
        conn.execute("set local sentinel.writer = 'protocol'")
        conn.execute("update sentinel.executions set ttl_ms = 60001 where namespace = %s and key = 'k'", (namespace,))
    assert conn.execute("select ttl_ms from sentinel.inspect_v1(%s, 'k')", (namespace,)).fetchone() == (60001,)


def test_a_lease_lapsed_under_heartbeat_many_logs_its_event(conn: psycopg.Connection[Any], namespace: str) -> None:
    row = conn.execute("select fence, lease_expires_at from sentinel.acquire_v2(%s, 'lapse', 'w', 50, 60000, true,"
                       " null, %s)", (namespace, TOKEN)).fetchone()
    assert row is not None
    deadline = time.monotonic() + 30
    while conn.execute("select sentinel._now() <= %s", (row[1],)).fetchone() == (True,):
        assert time.monotonic() < deadline, "the database clock did not pass the lease"
        time.sleep(0.01)
    out = conn.execute("select outcome, state from sentinel.heartbeat_many_v1(%s, array['lapse'], array[%s::bigint],"
                       " array[%s])", (namespace, row[0], TOKEN)).fetchall()
    assert out == [("lost", "uncertain")], out
    events = conn.execute("select from_state, to_state, reason, details from sentinel.events_v1(%s, 'lapse')",
                          (namespace,)).fetchall()
    assert events == [(None, "executing", None, {"attempt": 1}),
                      ("executing", "uncertain", "lease expired", {"attempt": 1})], events


def test_decided_v1_shows_a_role_only_its_namespaces_decided_keys(login: Login, dsn: str, namespace: str) -> None:
    other = namespace + "-o"
    mine, theirs = login(namespace), login(other)
    with sentinel.Sentinel(conninfo=mine, namespace=namespace, fingerprints=False) as s:
        s.once("done", lambda: {"paid": 1})
        with pytest.raises(ValueError):
            s.once("retryable", _raise)
        with pytest.raises(ValueError):
            s.once("permanent", _raise, permanent=(ValueError,))
    with sentinel.Sentinel(conninfo=theirs, namespace=other, fingerprints=False) as s:
        s.once("done", lambda: {"theirs": 1})
    with psycopg.connect(mine, autocommit=True) as c:
        c.execute("select sentinel.acquire_v2(%s, 'running', 'w', 60000)", (namespace,))
        assert _decided(c, namespace, "done") == ("completed", "completed", {"paid": 1}, None)
        permanent = _decided(c, namespace, "permanent")
        assert permanent is not None and permanent[:2] == ("failed", "failed") and permanent[3] is not None
        assert _decided(c, namespace, "retryable") is None  # acquire_v2 claims it again
        assert _decided(c, namespace, "running") is None
        assert _decided(c, other, "done") is None  # another namespace: nothing, not even an error
    # A role that holds the right only through a role it inherits sees nothing (acquire_v2 answers it).
    inherited = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {inherited} login password 'x-{inherited}'")
        user = psycopg.conninfo.conninfo_to_dict(mine)["user"]
        admin.execute(f"grant {user} to {inherited}")
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=inherited, password=f"x-{inherited}"),
                             autocommit=True) as c:
            assert _decided(c, namespace, "done") is None
            replay = c.execute("select outcome, response from sentinel.acquire_v2(%s, 'done', 'w', 1000)",
                               (namespace,)).fetchone()
            assert replay == ("completed", {"paid": 1})
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"drop role {inherited}")


def _raise() -> None:
    raise ValueError("no")


_CALLS = "select coalesce(pg_stat_get_xact_function_calls('sentinel.acquire_v2'::regproc), 0)"


def _calls_of_acquire(c: psycopg.Connection[Any], query: str, params: Any) -> Tuple[Any, int]:
    """The answer of one acquire statement and how many times it called acquire_v2 (the session's pending
    function statistics, read before and after it in one transaction)."""
    with c.transaction():
        before = c.execute(_CALLS).fetchone()
        row = c.execute(query, params).fetchone()
        after = c.execute(_CALLS).fetchone()
        assert before is not None and after is not None
        return row, int(after[0]) - int(before[0])


def test_the_acquire_statement_calls_acquire_v2_only_for_an_undecided_key(conn: psycopg.Connection[Any],
                                                                          login: Login, namespace: str) -> None:
    mine = login(namespace)
    conn.execute("select sentinel.complete_v3(%s, 'k', a.fence, %s, '{\"a\": 1}') from "
                 "sentinel.acquire_v2(%s, 'k', 'w', 60000, null, true, 'fp-1', %s) a",
                 (namespace, TOKEN, namespace, TOKEN))
    user = psycopg.conninfo.conninfo_to_dict(mine)["user"]
    with psycopg.connect(conn.info.dsn, password=conn.info.password or None, autocommit=True,
                         prepare_threshold=0) as c:
        c.execute("set track_functions = 'pl'")  # a superuser setting, kept after the role changes
        c.execute(f"set role {user}")

        def ask(key: str, fp: Any) -> Tuple[Any, int]:
            query, params = acquire_statement(c, namespace, key, "w", 1000, 1000, fp, "u" * 24)
            assert query == _ACQUIRE_DECIDED_SQL
            return _calls_of_acquire(c, query, params)

        (replay, calls) = ask("k", "fp-1")
        assert replay[:5] == ("completed", replay[1], "completed", 1, {"a": 1}) and calls == 0, (replay, calls)
        (mismatch, calls) = ask("k", "fp-2")
        assert mismatch[0] == "mismatch" and mismatch[4] is None and calls == 1, (mismatch, calls)
        (fresh, calls) = ask("new", None)
        assert fresh[0] == "acquired" and fresh[9] is not None and calls == 1, (fresh, calls)
    with psycopg.connect(mine, autocommit=True, prepare_threshold=None) as plain:
        query, _ = acquire_statement(plain, namespace, "k", "w", 1000, 1000, None, "u" * 24)
        assert "decided_v1" not in query  # a connection that does not prepare: acquire_v2 alone


@pytest.mark.parametrize("prepared", [False, True])
def test_a_replay_answers_the_same_through_either_statement(login: Login, namespace: str, prepared: bool) -> None:
    mine = login(namespace)
    with sentinel.Sentinel(conninfo=mine, namespace=namespace, prepared_statements=prepared) as s:
        first = s.once("order", lambda: {"n": 1})
        answers = [s.once("order", lambda: pytest.fail("ran twice")) for _ in range(8)]
        with pytest.raises(sentinel.KeyMismatch):
            s.once("order", lambda: pytest.fail("ran for other work"), fingerprint="other work")
    assert not first.replayed and first.response == {"n": 1}
    for r in answers:
        assert r.replayed and r.response == {"n": 1} and r.state == "completed"
        assert (r.fence, r.attempt) == (first.fence, first.attempt)


def test_short_calls_do_not_wake_the_heartbeat_thread_each(dsn: str, namespace: str) -> None:
    """A lease that ends before its first renewal is due needs no renewal: registering it wakes the heartbeat
    thread only when it is due before the thread looks again (a wake-up per call cost each call a switch of
    threads)."""
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as s:
        s.once("warm", lambda: 1)  # the heartbeat thread exists from here on
        woken: List[int] = []
        notify = s._heartbeat._cond.notify

        def counted(n: int = 1) -> None:
            woken.append(n)
            notify(n)

        s._heartbeat._cond.notify = counted  # type: ignore[method-assign]
        for i in range(200):
            assert s.once(f"k{i}", lambda n=i: n).response == i
    assert len(woken) <= 2, len(woken)

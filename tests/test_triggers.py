"""The triggers of sentinel.executions: a renewal fires none, a released claim still wakes its waiters."""

from __future__ import annotations

from typing import Any

import psycopg


def test_no_row_trigger_looks_at_a_renewal(conn: psycopg.Connection[Any]) -> None:
    """A heartbeat sets the lease alone: no row trigger may look at it (their conditions cost a renewal).

    The events are written by the functions; the one statement trigger is the
    guard that refuses writers other than the functions.
    """
    rows = conn.execute("""
        select t.tgname, t.tgtype & 16 <> 0 as on_update, t.tgtype & 1 <> 0 as per_row,
               array(select a.attname::text from unnest(t.tgattr) n join pg_attribute a
                      on a.attrelid = t.tgrelid and a.attnum = n order by 1) as columns
          from pg_trigger t
         where t.tgrelid = 'sentinel.executions'::regclass and not t.tgisinternal
         order by 1""").fetchall()
    per_row = {name: cols for name, on_update, row_level, cols in rows if on_update and row_level}
    per_statement = [name for name, _, row_level, _ in rows if not row_level]
    assert per_row == {"executions_clear_retention": ["fence"]}, rows
    assert per_statement == ["executions_writers"], rows


def test_a_heartbeat_writes_no_event_and_a_transition_one(conn: psycopg.Connection[Any], namespace: str) -> None:
    fence = conn.execute("select fence from sentinel.acquire_v2(%s, 'hb', 'w', 60000)", (namespace,)).fetchone()
    assert fence is not None
    for _ in range(3):
        alive = conn.execute("select alive from sentinel.heartbeat_v1(%s, 'hb', %s)", (namespace, fence[0])).fetchone()
        assert alive == (True,)
    conn.execute("select sentinel.complete_v2(%s, 'hb', %s, '1')", (namespace, fence[0]))
    events = conn.execute("select from_state, to_state from sentinel.events_v1(%s, 'hb')", (namespace,)).fetchall()
    assert events == [(None, "executing"), ("executing", "completed")], events


def test_a_claim_released_by_abandon_wakes_its_watcher(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    channel = conn.execute("select sentinel.channel_v1(%s)", (namespace,)).fetchone()
    assert channel is not None
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'listen "{channel[0]}"')
        row = conn.execute("select fence from sentinel.acquire_v2(%s, 'claim', 'w', 60000, null, false)",
                           (namespace,)).fetchone()
        assert row is not None
        conn.execute("select sentinel.watch_v1(%s, 'claim', 60000)", (namespace,))
        released = conn.execute("select outcome from sentinel.abandon_v1(%s, 'claim', %s, 'no longer needed')",
                                (namespace, row[0])).fetchone()
        assert released == ("released",)
        note = next(listener.notifies(timeout=10))
    assert note.payload == "claim"

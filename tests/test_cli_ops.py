"""`sentinel list / inspect / reconcile / stats / purge`, end to end through subprocesses."""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Dict

import psycopg
import pytest

import sentinel
from test_cli import run


@pytest.fixture
def db(empty_db: Callable[[], str]) -> Dict[str, Any]:
    """A database with an uncertain, a completed and a failed key in namespace 'payments'."""
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        unc = conn.execute("select fence from sentinel.acquire_v1('payments', 'order-1', 'web-7', 60000)").fetchone()
        assert unc is not None
        conn.execute("select sentinel.abandon_v1('payments', 'order-1', %s, 'worker died')", (unc[0],))
        done = conn.execute("select fence from sentinel.acquire_v1('payments', 'order-2', 'web-3', 60000)").fetchone()
        assert done is not None
        conn.execute("select sentinel.complete_v1('payments', 'order-2', %s, '{\"charge\": \"ch_2\"}')", (done[0],))
    return {"dsn": dsn, "uncertain_fence": unc[0]}


def cli(db: Dict[str, Any], *argv: str) -> Any:
    return run(*argv, "--dsn", db["dsn"], "--namespace", "payments")


def test_list_by_state_text_and_json(db: Dict[str, Any]) -> None:
    text = cli(db, "list", "--state", "uncertain")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["key", "state", "fence", "attempt", "owner", "changed", "reason"]
    assert len(lines) == 2 and lines[1].split()[:2] == ["order-1", "uncertain"] and "worker died" in lines[1]
    rows = json.loads(cli(db, "list", "--json").stdout)["records"]
    assert sorted((r["key"], r["state"]) for r in rows) == [("order-1", "uncertain"), ("order-2", "completed")]
    assert json.loads(cli(db, "list", "--json", "--older-than", "1h").stdout)["records"] == []
    assert "no records" in run("list", "--dsn", db["dsn"], "--namespace", "other").stdout


def test_inspect_shows_record_and_history(db: Dict[str, Any]) -> None:
    text = cli(db, "inspect", "order-1").stdout
    assert "uncertain_reason  worker died" in text and "executing  uncertain" in text
    data = json.loads(cli(db, "inspect", "order-1", "--json").stdout)
    assert data["record"]["state"] == "uncertain"
    assert [(e["from_state"], e["to_state"]) for e in data["events"]] == [(None, "executing"),
                                                                          ("executing", "uncertain")]


def test_reconcile_as_completed_then_replay(db: Dict[str, Any]) -> None:
    r = cli(db, "reconcile", "order-1", "--as", "completed", "--response", '{"charge": "ch_1"}',
            "--reason", "found at the provider", "--actor", "alice@ops")
    assert r.returncode == 0, r.stderr
    assert f"uncertain -> completed (fence {db['uncertain_fence']} -> " in r.stdout and "alice@ops" in r.stdout
    with sentinel.Sentinel(conninfo=db["dsn"], namespace="payments") as s:
        replay = s.once("order-1", lambda: pytest.fail("reconciled keys replay"))
        assert replay.response == {"charge": "ch_1"}
        assert s.events("order-1")[-1]["actor"] == "alice@ops"


def test_reconcile_release_allows_a_new_attempt_and_default_actor(db: Dict[str, Any]) -> None:
    r = cli(db, "reconcile", "order-1", "--release", "--reason", "no charge found", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 0 and data["state"] == "failed" and "@" in data["actor"]
    with sentinel.Sentinel(conninfo=db["dsn"], namespace="payments") as s:
        assert s.once("order-1", lambda: "ran again").response == "ran again"


@pytest.mark.parametrize(("argv", "code", "message"), [
    (("reconcile", "order-2", "--release", "--reason", "x"), 1, "pass --force to override"),
    (("reconcile", "nope", "--release", "--reason", "x"), 1, "no execution record"),
    (("reconcile", "order-1", "--as", "completed", "--response", "{bad", "--reason", "x"), 2, "not valid JSON"),
    (("reconcile", "order-1", "--as", "completed", "--reason", "x"), 2, "needs --response"),
    (("reconcile", "order-1", "--release"), 2, "--reason"),
    (("reconcile", "order-1", "--reason", "x"), 2, "--as completed, --as failed or --release"),
    (("inspect", "nope"), 1, "no execution record"),
    (("list", "--older-than", "soon"), 2, "not a duration"),
    (("reconcile", "order-1", "--release", "--reason", " "), 1, "reason must be a non-empty text"),
])
def test_bad_input_fails_clearly(db: Dict[str, Any], argv: Any, code: int, message: str) -> None:
    r = cli(db, *argv)
    assert r.returncode == code and message in r.stderr, (r.returncode, r.stderr)


def test_reconcile_force_and_stats_and_purge(db: Dict[str, Any]) -> None:
    r = cli(db, "reconcile", "order-2", "--as", "failed", "--reason", "refunded by hand", "--force")
    assert r.returncode == 0 and "completed -> failed" in r.stdout
    st = json.loads(cli(db, "stats", "--json").stdout)
    assert (st["uncertain"], st["failed"], st["completed"]) == (1, 1, 0)
    purged = cli(db, "purge", "--older-than", "0ms")
    assert purged.returncode == 0 and "deleted 1 records of payments" in purged.stdout
    events = cli(db, "purge", "--older-than", "0s", "--events", "--json")
    assert json.loads(events.stdout)["deleted"] >= 4


def test_purge_events_refuses_expired_and_honours_batch(db: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """--events with --expired (the event log has no retain_ms) is a usage error; --batch reaches the events."""
    mixed = cli(db, "purge", "--expired", "--events")
    assert mixed.returncode == 2, (mixed.returncode, mixed.stderr)
    assert "sentinel purge: --events needs --older-than AGE" in mixed.stderr and "Traceback" not in mixed.stderr
    with psycopg.connect(db["dsn"]) as conn:
        before = conn.execute("select count(*) from sentinel.events").fetchone()
    assert before is not None and before[0] >= 4  # nothing was deleted by the refused call

    from sentinel import cli as cli_module

    asked: list[int] = []
    real = sentinel.Operations.purge_events

    def spy(self: sentinel.Operations, older_than_ms: int, *, batch_size: int = 10000) -> int:
        asked.append(batch_size)
        return real(self, older_than_ms, batch_size=batch_size)

    monkeypatch.setattr(sentinel.Operations, "purge_events", spy)
    out = io.StringIO()
    rc = cli_module.main(["purge", "--events", "--older-than", "0s", "--batch", "3", "--json",
                          "--dsn", db["dsn"], "--namespace", "payments"], out=out)
    assert rc == 0 and asked == [3], (rc, asked)
    assert json.loads(out.getvalue())["deleted"] == before[0]


def test_a_refused_reconcile_names_the_flag_or_the_argument_not_sql(db: Dict[str, Any]) -> None:
    r = cli(db, "reconcile", "order-2", "--as", "failed", "--reason", "refunded by hand")
    assert r.returncode == 1, r.stderr
    assert "pass --force to override" in r.stderr and "=>" not in r.stderr, r.stderr
    with sentinel.Sentinel(conninfo=db["dsn"], namespace="payments") as s:
        with pytest.raises(sentinel.ReconcileRefused, match=r"pass force=True to override"):
            s.reconcile("order-2", action="failed", actor="ops", reason="refunded by hand")


def test_an_unserialisable_result_says_how_to_pass_a_serializer(db: Dict[str, Any]) -> None:
    import datetime

    with sentinel.Sentinel(conninfo=db["dsn"], namespace="payments") as s:
        with pytest.raises(sentinel.ResultNotSerializable, match=r"Sentinel\(dumps=\.\.\.\)") as caught:
            s.once("when", lambda: {"at": datetime.datetime(2026, 12, 1)})
    assert "default=str" in str(caught.value)

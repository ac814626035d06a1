"""The chaos suite inside ``make test``: the short pass of ``chaos/run.py``, and the checker's own teeth.

- ``chaos/run.py --short`` runs real workers against a PostgreSQL of its own
  while every fault kind is injected (kills mid-function and before the start,
  a zombie, backend terminations during a heartbeat and during a recording, a
  crash restart), then checks the SPEC invariants. The PgBouncer pass runs
  when ``pgbouncer`` is installed; otherwise its tests fail with the command to install it
  (``make test`` installs it as root on Debian; ``SENTINEL_SKIP_PGBOUNCER=1`` skips them knowingly).
- The checker is fed doctored histories, one per invariant, to show it catches
  each kind of violation (a checker that never fails proves nothing).
- PgBouncer in transaction pooling mode with the default
  ``Sentinel(conninfo=...)`` client (a library limitation this suite found).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos import checker  # noqa: E402
from chaos.checker import Call, Facts, Limits, Start, SweepItem, Version  # noqa: E402
from chaos.cluster import Cluster, PgBouncer  # noqa: E402

import sentinel  # noqa: E402

RUN = ROOT / "chaos" / "run.py"
HAVE_PGBOUNCER = shutil.which("pgbouncer") is not None or os.path.exists("/usr/sbin/pgbouncer")
PGBOUNCER_MISSING = ("pgbouncer is not installed: install it (Debian: apt-get install -y pgbouncer; `make test` does "
                     "it as root) or set SENTINEL_SKIP_PGBOUNCER=1 to skip the PgBouncer tests knowingly")


def _without_pgbouncer() -> None:
    """A missing PgBouncer fails the test, unless the user opted out (then it is a skip that says so)."""
    if os.environ.get("SENTINEL_SKIP_PGBOUNCER") == "1":
        pytest.skip("SENTINEL_SKIP_PGBOUNCER=1: the PgBouncer tests did not run")
    pytest.fail(PGBOUNCER_MISSING)


# -- the short pass ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """One ``chaos/run.py --short`` (seeded from SENTINEL_CHAOS_SEED when set), shared by the tests below."""
    out = tmp_path_factory.mktemp("chaos") / "summary.json"
    cmd = [sys.executable, str(RUN), "--short", "--json", str(out)]
    if os.environ.get("SENTINEL_CHAOS_SEED"):
        cmd += ["--seed", os.environ["SENTINEL_CHAOS_SEED"]]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=110,
                          check=False)
    summary: Dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    yield {"rc": proc.returncode, "output": proc.stdout, "summary": summary}


def test_short_chaos_pass_holds_every_invariant(short_run: Dict[str, Any]) -> None:
    out, s = short_run["output"], short_run["summary"]
    assert s, f"chaos/run.py --short wrote no summary:\n{out[-4000:]}"
    assert short_run["rc"] == 0 and s["violations"] == 0, f"seed {s.get('seed')}:\n{out[-6000:]}"
    direct = s["passes"]["direct"]
    assert direct["calls"] > 50, s
    for kind in ("kill_running", "kill_before_start", "zombie", "term_heartbeat", "term_completion", "restart"):
        assert s["injected"][kind] >= 1, f"fault {kind} was not injected: {s['injected']}"
    assert s["executions"] > 20 and s["replays"] > 0 and s["uncertain_surfaced"] > 0, s
    assert s["stale_fences_rejected"] > 0, s
    assert "Sentinel chaos summary" in out and f"seed                    {s['seed']}" in out


def test_short_chaos_pass_through_pgbouncer(short_run: Dict[str, Any]) -> None:
    s = short_run["summary"]
    if not HAVE_PGBOUNCER:
        assert any("PgBouncer pass" in note for note in s.get("skipped", [])), s
        _without_pgbouncer()
    assert short_run["rc"] == 0, short_run["output"][-4000:]
    assert "pgbouncer" in s["passes"] and s["passes"]["pgbouncer"]["calls"] > 5, s
    assert not s["skipped"], s


# -- the checker catches each kind of violation ---------------------------------------------

T = datetime(2030, 1, 1, tzinfo=timezone.utc)
LIMITS = Limits(ttl_ms=1000, hard_ttl_ms=5000, margin_s=5.0, namespaces=["ns"])


def at(ms: int) -> datetime:
    return T + timedelta(milliseconds=ms)


def version(seq: int, op: str, state: str, fence: int, **kw: Any) -> Version:
    base: Dict[str, Any] = dict(
        seq=seq, op=op, namespace="ns", key="k", state=state, fence=fence, owner="host:100:ab", attempt=1,
        claimed_at=at(0), lease_expires_at=at(1000), hard_expires_at=at(5000), updated_at=at(0), ttl_ms=1000,
    )
    base.update(kw)
    return Version(**base)


RESPONSE = {"ns": "ns", "key": "k", "fence": 10, "worker": "w1.1", "call": "c1", "token": "x"}


def good_facts() -> Facts:
    """One key: claimed and run under fence 10, completed, replayed, swept."""
    v1 = version(1, "INSERT", "executing", 10)
    v2 = version(2, "UPDATE", "completed", 10, response=RESPONSE, updated_at=at(200))
    fresh = Call("c1", "w1.1", "ns", "k", "fresh", 0.0, 0.3, fence=10, response=RESPONSE, persisted=True)
    replay = Call("c2", "w2.1", "ns", "k", "replayed", 1.0, 1.01, fence=10, response=RESPONSE)
    sweep = Call("sweep.1", "sweep", "ns", "k", "replayed", 2.0, 2.01, fence=10, response=RESPONSE)
    return Facts(history=[v1, v2], final={("ns", "k"): replace(v2, seq=0, op="ROW")},
                 starts=[Start("c1", "ns", "k", 10, "w1.1", 100)], calls=[fresh, replay, sweep],
                 sweep=[SweepItem(v2, sweep)])


def invariants(facts: Facts) -> List[str]:
    return sorted({v.invariant for v in checker.check(facts, LIMITS)})


def test_checker_accepts_a_consistent_run() -> None:
    assert checker.check(good_facts(), LIMITS) == []


def test_checker_catches_a_second_start_under_one_fence() -> None:
    f = good_facts()
    f.starts.append(Start("c9", "ns", "k", 10, "w3.1", 100))
    assert "1 at most once" in invariants(f)


def test_checker_catches_a_rerun_after_a_begun_execution() -> None:
    f = good_facts()
    # The key is claimed again under fence 11 while fence 10's execution was only uncertain.
    f.history = [
        version(1, "INSERT", "executing", 10),
        version(2, "UPDATE", "uncertain", 10, uncertain_reason="lease expired", updated_at=at(1500)),
        version(3, "UPDATE", "executing", 11, attempt=2, claimed_at=at(1600), lease_expires_at=at(2600),
                hard_expires_at=at(6600), updated_at=at(1600)),
    ]
    f.starts.append(Start("c5", "ns", "k", 11, "w3.1", 100))
    f.calls = []
    f.sweep = []
    f.final = {}
    assert invariants(f) == ["1 at most once"]


def test_checker_catches_a_replay_that_differs() -> None:
    f = good_facts()
    f.calls[1] = replace(f.calls[1], response={**RESPONSE, "token": "other"})
    assert invariants(f) == ["2 replay fidelity"]


def test_checker_catches_an_unknown_outcome_run_again() -> None:
    f = good_facts()
    before = version(1, "INSERT", "executing", 10)
    f.history = [before]
    f.final = {("ns", "k"): replace(before, state="uncertain")}
    f.calls = []
    f.sweep = [SweepItem(before, Call("sweep.1", "sweep", "ns", "k", "fresh", 2.0, 2.1, fence=12))]
    assert "3 nothing lost" in invariants(f)


def test_checker_catches_a_stale_writer_result() -> None:
    f = good_facts()
    stale = {**RESPONSE, "fence": 9}
    f.history[1] = replace(f.history[1], response=stale)
    assert "4 fencing" in invariants(f)


def test_checker_catches_a_renewed_lapsed_lease() -> None:
    f = good_facts()
    f.history.insert(1, version(9, "UPDATE", "executing", 10, lease_expires_at=at(2100), updated_at=at(1100)))
    assert "4 fencing" in invariants(f)


def test_checker_catches_a_live_execution_called_uncertain() -> None:
    f = good_facts()
    f.history = [version(1, "INSERT", "executing", 10),
                 version(2, "UPDATE", "uncertain", 10, uncertain_reason="lease expired", updated_at=at(500))]
    f.final = {("ns", "k"): replace(f.history[1], seq=0, op="ROW")}
    f.calls = []
    f.sweep = []
    assert invariants(f) == ["5 liveness"]


def _late_failure_facts(to: str) -> Facts:
    """Fence 10 lapsed at 1000 and was marked uncertain; then its owner reported a failure."""
    f = good_facts()
    marked = version(2, "UPDATE", "uncertain", 10, uncertain_reason="lease expired", updated_at=at(1500))
    error = {"type": "FnError", "message": "planned failure: fence=10 worker=w1.1 call=c1"}
    late = version(3, "UPDATE", to, 10, error=error, updated_at=at(1600),
                   uncertain_reason="lease expired" if to == "uncertain" else None)
    f.history = [version(1, "INSERT", "executing", 10), marked, late]
    f.final = {("ns", "k"): replace(late, seq=0, op="ROW")}
    f.calls = []
    f.sweep = []
    return f


def test_checker_accepts_a_late_failure_kept_as_evidence() -> None:
    assert invariants(_late_failure_facts("uncertain")) == []


def test_checker_catches_a_late_failure_that_reopened_the_key() -> None:
    assert "4 fencing" in invariants(_late_failure_facts("failed"))


def test_checker_catches_a_failure_recorded_after_the_lease_lapsed() -> None:
    f = good_facts()
    error = {"type": "FnError", "message": "planned failure: fence=10 worker=w1.1 call=c1"}
    failed = version(2, "UPDATE", "failed", 10, error=error, updated_at=at(1500))
    f.history = [version(1, "INSERT", "executing", 10), failed]
    f.final = {("ns", "k"): replace(failed, seq=0, op="ROW")}
    f.calls = []
    f.sweep = []
    assert "1 at most once" in invariants(f)


def test_checker_catches_a_call_that_hung() -> None:
    f = good_facts()
    f.calls[1] = replace(f.calls[1], t1=1.0 + LIMITS.hard_ttl_ms / 1000 + LIMITS.margin_s + 1)
    assert invariants(f) == ["5 liveness"]
    f.stopped = {"w2.1": [(1.5, 4.0)]}  # ... unless its worker was SIGSTOPped meanwhile
    assert invariants(f) == []


def test_checker_catches_a_lease_past_the_hard_deadline() -> None:
    f = good_facts()
    f.history[0] = replace(f.history[0], lease_expires_at=at(5001))
    assert "6 hard deadline" in invariants(f)


def test_checker_catches_another_namespaces_response() -> None:
    f = good_facts()
    other = {**RESPONSE, "ns": "elsewhere"}
    f.history[1] = replace(f.history[1], response=other)
    f.final = {("ns", "k"): replace(f.history[1], seq=0, op="ROW")}
    for i, c in enumerate(f.calls):
        f.calls[i] = replace(c, response=other)
    f.sweep = [SweepItem(f.history[1], f.calls[2])]
    assert "8 isolation" in invariants(f)


# -- PgBouncer, transaction pooling, the default client ---------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Tuple[Cluster, str]]:
    """A restartable PostgreSQL of our own (the chaos harness's), with the schema in database ``chaos``."""
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="sentinel-own-pg-"))
    cluster = Cluster(work)
    try:
        cluster.init()
        cluster.start()
        direct = cluster.create_database("chaos")
        with psycopg.connect(direct, autocommit=True) as conn:
            sentinel.init_db(conn)
        yield cluster, direct
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer(own_cluster: Tuple[Cluster, str]) -> Iterator[str]:
    """PgBouncer in front of ``own_cluster`` (transaction pooling, ONE server connection); its DSN."""
    if not HAVE_PGBOUNCER:
        _without_pgbouncer()
    pgb = PgBouncer(own_cluster[0], "chaos", pool_size=1)
    try:
        pgb.start()
        yield pgb.dsn()
    finally:
        pgb.stop()


def test_client_recovers_after_a_database_restart(own_cluster: Tuple[Cluster, str]) -> None:
    """After PostgreSQL restarts (a crash, a failover), the next once() works once the database is back.

    ``Sentinel(conninfo=...)`` keeps a private pool; its idle connections die with
    the server. The docs say DatabaseUnavailable means "the database is down
    when once() starts"; here it is up again, so a call must not fail on a
    connection the pool could have checked (psycopg_pool's ``check=``) or
    replaced before sending the claim.
    """
    cluster, direct = own_cluster
    with sentinel.Sentinel(conninfo=direct, namespace="restart", pool_size=2) as client:
        assert client.once("before", lambda: "ok").completed  # the pool holds a live connection now
        cluster.restart_immediate()  # returns once the server accepts connections again
        failures = []
        for n in range(3):
            try:
                assert client.once(f"after-{n}", lambda: "ok").completed
            except sentinel.DatabaseUnavailable as exc:
                failures.append(f"call {n}: {exc}")
        assert not failures, "once() failed although the database was back:\n" + "\n".join(failures)


def test_default_client_works_through_pgbouncer_transaction_pooling(bouncer: str) -> None:
    """Two processes' worth of ``Sentinel(conninfo=...)`` clients share PgBouncer's server connection.

    Every protocol call is one autocommit statement, so transaction pooling
    should be transparent. But psycopg prepares a statement after 5 executions
    (``prepare_threshold``), and ``Sentinel(conninfo=...)`` offers no way to turn
    that off: the second client's 5th call prepares ``_pg3_0`` again on the
    shared server connection (DuplicatePreparedStatement), or a call uses a
    statement prepared on another server connection (InvalidSqlStatementName).
    Workaround today: ``Sentinel(pool=ConnectionPool(dsn, kwargs={"prepare_threshold": None}))``.
    """
    via_bouncer = bouncer
    errors: List[str] = []
    clients = [sentinel.Sentinel(conninfo=via_bouncer, namespace=f"bouncer-{i}", pool_size=1) for i in range(2)]
    lock = threading.Lock()
    try:
        for n in range(8):
            for i, c in enumerate(clients):
                try:
                    r = c.once(f"key-{n}", lambda i=i, n=n: {"client": i, "n": n})
                    assert r.completed
                    assert c.once(f"key-{n}", lambda: pytest.fail("ran twice")).replayed
                except Exception as exc:  # collected, to report every failure at once
                    with lock:
                        errors.append(f"client {i} call {n}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    finally:
        for c in clients:
            c.close()
    assert not errors, "once() through PgBouncer (transaction pooling) failed:\n" + "\n".join(errors)

"""A Hypothesis state machine drives the SQL protocol against a reference model of the SPEC's state table.

The protocol runs on a **controllable clock**: inside one transaction on one
connection, ``sentinel._now()`` is replaced by a function reading a temp
table, and the machine moves time explicitly (to lease and hard-deadline
boundaries too). Everything happens in a database of its own and is rolled
back at the end, so no other session ever sees the replaced clock. Each
Hypothesis example runs inside a savepoint that is rolled back afterwards;
each call inside a savepoint of its own, so an expected error does not abort
the example.

After every step the machine compares, for every key: the call's outcome, the
stored state, fence (a new claim or reconcile takes a fence larger than any
the key ever had, even after a purge, and never one used before), attempt,
owner, lease and hard deadline (exact timestamps), response, error, the
permanent flag, the uncertain reason, and the effective state that
``inspect_v1`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from psycopg.types.json import Jsonb

import sentinel

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
#: the same key text in two namespaces (invariant 8: neither sees nor changes the other)
KEYS: List[Tuple[str, str]] = [("model-a", "k1"), ("model-b", "k1")]
TTLS = [100, 1000, 5000]

CLOCK_SQL = """
set local timezone = 'UTC';
create temp table test_clock (t timestamptz not null) on commit drop;
insert into pg_temp.test_clock values (timestamptz '2030-01-01 00:00:00+00');
create or replace function sentinel._now() returns timestamptz
    language sql volatile
    as $$ select t from pg_temp.test_clock $$;
"""


#: which transitions the machine reached (checked after the run: the model test must not pass vacuously)
REACHED: Dict[str, int] = {}


def reached(what: str) -> None:
    REACHED[what] = REACHED.get(what, 0) + 1


def ms(t: Optional[datetime]) -> Optional[int]:
    """A database timestamp as milliseconds after T0."""
    if t is None:
        return None
    return round((t - T0) / timedelta(milliseconds=1))


@dataclass
class Row:
    """The model of one execution record."""

    state: str
    fence: int
    owner: Optional[str]
    attempt: int
    fingerprint: Optional[str]
    ttl: int
    claimed_at: int
    started_at: Optional[int]
    lease: int
    hard: int
    finished_at: Optional[int] = None
    response: Any = None
    error: Any = None
    permanent: bool = False
    reason: Optional[str] = None
    reconciled_by: Optional[str] = None


class SqlError(Exception):
    def __init__(self, sqlstate: Optional[str]) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@dataclass
class Model:
    now: int = 0
    rows: Dict[Tuple[str, str], Row] = field(default_factory=dict)
    #: the largest fence each key ever had (kept after a purge)
    max_fence: Dict[Tuple[str, str], int] = field(default_factory=dict)
    #: every fence handed out in this example, for any key
    fences: Set[int] = field(default_factory=set)
    #: every fence each key had, for stale calls
    history: Dict[Tuple[str, str], List[int]] = field(default_factory=dict)


def lapse_reason(r: Row) -> str:
    """The reason acquire and inspect give a lapsed execution (sentinel._lapse_reason)."""
    if r.lease >= r.hard and r.hard > r.claimed_at + r.ttl:
        return "hard deadline passed"
    return "lease expired"


class ProtocolMachine(RuleBasedStateMachine):
    conn: psycopg.Connection[Any]

    def __init__(self) -> None:
        super().__init__()
        self.m = Model()
        self.tx = self.conn.transaction(force_rollback=True)
        self.tx.__enter__()
        self.conn.execute("update pg_temp.test_clock set t = %s", (T0,))
        self.last: Dict[str, Any] = {}

    def teardown(self) -> None:
        self.tx.__exit__(None, None, None)

    # -- calling the database ----------------------------------------------------------

    def call(self, sql: str, params: Tuple[Any, ...]) -> Tuple[Any, ...]:
        try:
            with self.conn.transaction():
                row = self.conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            assert exc.sqlstate is not None and exc.sqlstate.startswith("SN"), f"{sql} {params}: {exc}"
            raise SqlError(exc.sqlstate) from exc
        assert row is not None
        return tuple(row)

    def new_fence(self, k: Tuple[str, str], fence: int) -> None:
        """A new claim or reconcile took ``fence``: larger than any the key had, never used before."""
        assert fence > self.m.max_fence.get(k, 0), f"{k}: fence {fence} not above {self.m.max_fence.get(k)}"
        assert fence not in self.m.fences, f"fence {fence} reused"
        self.m.max_fence[k] = fence
        self.m.fences.add(fence)
        self.m.history.setdefault(k, []).append(fence)

    def fence_for(self, k: Tuple[str, str], choice: str) -> int:
        r = self.m.rows.get(k)
        current = r.fence if r else self.m.max_fence.get(k, 1)
        if choice == "current":
            return current
        if choice == "stale":
            older = [f for f in self.m.history.get(k, []) if f != current]
            return older[-1] if older else current + 1000
        if choice == "other":
            others = [f for f in self.m.fences if f != current]
            return max(others) if others else current + 1
        return 2**63 - 1

    # -- time --------------------------------------------------------------------------

    @rule(delta=st.sampled_from([0, 1, 50, 99, 100, 333, 999, 1000, 2500, 5000, 20000]))
    def advance(self, delta: int) -> None:
        self.set_clock(self.m.now + delta)

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["lease", "hard"]), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_boundary(self, k: Tuple[str, str], which: str, offset: int) -> None:
        r = self.m.rows.get(k)
        if r is None:
            return
        target = (r.lease if which == "lease" else r.hard) + offset
        if target > self.m.now:
            self.set_clock(target)

    def set_clock(self, t: int) -> None:
        self.m.now = t
        self.conn.execute("update pg_temp.test_clock set t = %s", (T0 + timedelta(milliseconds=t),))

    # -- the protocol ------------------------------------------------------------------------

    @rule(k=st.sampled_from(KEYS), ttl=st.sampled_from(TTLS), hard_factor=st.sampled_from([None, 1, 3, 10, -1]),
          start=st.booleans(), fp=st.sampled_from([None, None, "fp-a", "fp-b"]), owner=st.sampled_from(["w1", "w2"]))
    def acquire(self, k: Tuple[str, str], ttl: int, hard_factor: Optional[int], start: bool, fp: Optional[str],
                owner: str) -> None:
        hard_ttl = None if hard_factor is None else (ttl - 1 if hard_factor == -1 else ttl * hard_factor)
        sql = ("select outcome, fence, state, attempt, response, error, claimed_at, lease_expires_at,"
               " hard_expires_at, owner, now from sentinel.acquire_v1(%s, %s, %s, %s, %s, %s, %s)")
        expected = self.expect_acquire(k, owner, ttl, hard_ttl, start, fp)
        try:
            got = self.call(sql, (k[0], k[1], owner, ttl, hard_ttl, start, fp))
        except SqlError as exc:
            assert expected == ("error", "SN003"), f"acquire raised {exc.sqlstate}, expected {expected}"
            reached("acquire:SN003")
            return
        before = self.m.rows.get(k)
        reached(f"acquire:{expected[0]}" + (f":from-{before.state}" if before and expected[0] in (
            "acquired", "uncertain") else ""))
        outcome, fence, state, attempt, response, error, claimed_at, lease, hard, row_owner, now = got
        assert ms(now) == self.m.now, "the replaced clock is not in effect"
        assert outcome == expected[0], f"acquire {k}: got {outcome}, model says {expected}"
        if outcome == "acquired":
            self.new_fence(k, fence)
            self.m.rows[k] = Row(state="executing" if start else "claimed", fence=fence, owner=owner,
                                 attempt=expected[1], fingerprint=expected[2], ttl=ttl, claimed_at=self.m.now,
                                 started_at=self.m.now if start else None, lease=self.m.now + ttl,
                                 hard=self.m.now + (hard_ttl if hard_ttl is not None else ttl))
        elif outcome == "uncertain" and expected[1:] == ("mark",):
            r = self.m.rows[k]
            self.m.rows[k] = replace(r, state="uncertain", reason=lapse_reason(r))
        r = self.m.rows[k]
        assert (fence, state, attempt) == (r.fence, r.state, r.attempt), f"acquire {k} reported {got}"
        assert (ms(claimed_at), ms(lease), ms(hard), row_owner) == (r.claimed_at, r.lease, r.hard, r.owner)
        if outcome == "mismatch":
            assert response is None and error is None, "a mismatch revealed the response"
        else:
            assert response == r.response and error == r.error

    def expect_acquire(self, k: Tuple[str, str], owner: str, ttl: int, hard_ttl: Optional[int], start: bool,
                       fp: Optional[str]) -> Tuple[Any, ...]:
        if hard_ttl is not None and hard_ttl < ttl:
            return ("error", "SN003")
        r = self.m.rows.get(k)
        if r is None:
            return ("acquired", 1, fp)
        if fp is not None and r.fingerprint is not None and fp != r.fingerprint:
            return ("mismatch",)
        if r.state == "completed":
            return ("completed",)
        if r.state == "failed" and r.permanent:
            return ("failed",)
        if r.state == "uncertain":
            return ("uncertain",)
        if r.state in ("claimed", "executing") and r.lease > self.m.now:
            return ("alive",)
        if r.state == "executing":
            return ("uncertain", "mark")
        # a retryable failure, or a lapsed claim that never began: a new claim
        return ("acquired", r.attempt + 1, fp if fp is not None else r.fingerprint)

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["current", "current", "stale", "other", "huge"]))
    def begin(self, k: Tuple[str, str], which: str) -> None:
        fence = self.fence_for(k, which)
        (began,) = self.call("select sentinel.begin_v1(%s, %s, %s)", (k[0], k[1], fence))
        r = self.m.rows.get(k)
        ok = r is not None and r.fence == fence and r.state == "claimed" and r.lease > self.m.now
        assert began == ok, f"begin {k} fence {fence}: got {began}, model {ok} ({r})"
        reached(f"begin:{began}")
        if ok and r is not None:
            self.m.rows[k] = replace(r, state="executing", started_at=self.m.now,
                                     lease=min(self.m.now + r.ttl, r.hard))

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["current", "current", "stale", "other"]))
    def heartbeat(self, k: Tuple[str, str], which: str) -> None:
        fence = self.fence_for(k, which)
        alive, state, lease, hard = self.call(
            "select alive, state, lease_expires_at, hard_expires_at from sentinel.heartbeat_v1(%s, %s, %s)",
            (k[0], k[1], fence))
        r = self.m.rows.get(k)
        ok = r is not None and r.fence == fence and r.state in ("claimed", "executing") and r.lease > self.m.now
        assert alive == ok, f"heartbeat {k} fence {fence}: got {alive}, model {ok} ({r})"
        if r is None:
            assert state is None
            return
        if ok:
            r = self.m.rows[k] = replace(r, lease=min(self.m.now + r.ttl, r.hard))
            # Invariant 6: never past the hard deadline.
            assert ms(lease) == r.lease <= r.hard == ms(hard)
        elif r.fence == fence and r.state == "executing":
            reason = "hard deadline passed" if self.m.now >= r.hard else "lease expired"
            r = self.m.rows[k] = replace(r, state="uncertain", reason=reason)
            reached(f"heartbeat:marked:{reason}")
        reached(f"heartbeat:{alive}")
        assert state == r.state

    @rule(k=st.sampled_from(KEYS), to=st.sampled_from(["lease", "hard"]))
    def heartbeat_after_lapse(self, k: Tuple[str, str], to: str) -> None:
        """A worker that paused past its lease (or the hard deadline) sends its next heartbeat."""
        r = self.m.rows.get(k)
        if r is None or r.state != "executing":
            return
        target = r.lease if to == "lease" else r.hard
        if target > self.m.now:
            self.set_clock(target)
        self.heartbeat(k, "current")

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["current", "current", "current", "stale", "other"]),
          value=st.integers(min_value=0, max_value=9))
    def complete(self, k: Tuple[str, str], which: str, value: int) -> None:
        self.finish(k, self.fence_for(k, which), "completed", {"v": value}, None)

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["current", "current", "stale", "other"]),
          permanent=st.booleans())
    def fail(self, k: Tuple[str, str], which: str, permanent: bool) -> None:
        self.finish(k, self.fence_for(k, which), "failed", {"err": "boom"}, permanent)

    def finish(self, k: Tuple[str, str], fence: int, to: str, doc: Dict[str, Any], permanent: Optional[bool]) -> None:
        r = self.m.rows.get(k)
        params: Tuple[Any, ...]
        if to == "completed":
            sql, params = ("select outcome, state, fence from sentinel.complete_v1(%s, %s, %s, %s)",
                           (k[0], k[1], fence, Jsonb(doc)))
        else:
            sql, params = ("select outcome, state, fence from sentinel.fail_v1(%s, %s, %s, %s, %s)",
                           (k[0], k[1], fence, Jsonb(doc), permanent))
        mine = r is not None and r.fence == fence
        if mine and r is not None and to == "completed" and r.state in ("executing", "uncertain"):
            expected = "recorded"
        elif mine and r is not None and to == "failed" and (
                r.state == "claimed" or (r.state == "executing" and r.lease > self.m.now)):
            expected = "recorded"  # a failure is the truth only while the lease holds, or when nothing ran
        elif mine and r is not None and r.state == to:
            expected = "already_recorded"
        elif mine and r is not None and r.state == "claimed":
            expected = "SN011"
        elif mine and r is not None and to == "failed" and r.state in ("executing", "uncertain"):
            expected = "uncertain"  # a late failure: the key stays uncertain, the error is evidence
        else:
            expected = "stale"
        try:
            outcome, state, _ = self.call(sql, params)
        except SqlError as exc:
            assert exc.sqlstate == expected, f"{to} {k} fence {fence}: raised {exc.sqlstate}, model {expected}"
            reached(f"{to}:{expected}")
            return
        assert outcome == expected, f"{to} {k} fence {fence}: got {outcome}, model {expected} ({r})"
        reached(f"{to}:{expected}" + (f":from-{r.state}" if r is not None and expected == "recorded" else ""))
        if expected == "uncertain" and r is not None:
            reached(f"failed:uncertain:from-{r.state}")
            self.m.rows[k] = replace(r, state="uncertain", error=doc, permanent=False,
                                     reason=r.reason if r.state == "uncertain" else lapse_reason(r))
        if expected == "recorded" and r is not None:
            self.m.rows[k] = replace(r, state=to, response=doc if to == "completed" else None,
                                     error=doc if to == "failed" else None, permanent=bool(permanent),
                                     finished_at=self.m.now)
        if r is not None:
            assert state == self.m.rows[k].state

    @rule(k=st.sampled_from(KEYS), which=st.sampled_from(["current", "current", "stale"]))
    def abandon(self, k: Tuple[str, str], which: str) -> None:
        fence = self.fence_for(k, which)
        outcome, state, _ = self.call("select outcome, state, fence from sentinel.abandon_v1(%s, %s, %s, 'gave up')",
                                      (k[0], k[1], fence))
        r = self.m.rows.get(k)
        reached(f"abandon:{outcome}")
        if r is not None and r.fence == fence and r.state == "uncertain":
            assert outcome == "uncertain", f"abandon {k}: a retry got {outcome} ({r})"  # idempotent, no change
            reached("abandon:retry")
        elif r is None or r.fence != fence or r.state not in ("claimed", "executing"):
            assert outcome == "stale", f"abandon {k}: got {outcome} ({r})"
        elif r.state == "claimed":
            assert outcome == "released"
            self.m.rows[k] = replace(r, lease=min(self.m.now, r.lease))
        else:
            assert outcome == "uncertain"
            self.m.rows[k] = replace(r, state="uncertain", reason="gave up")

    @rule(k=st.sampled_from(KEYS), action=st.sampled_from(["completed", "failed", "release"]), force=st.booleans())
    def reconcile(self, k: Tuple[str, str], action: str, force: bool) -> None:
        r = self.m.rows.get(k)
        response = Jsonb({"by": "operator"}) if action == "completed" else None
        sql = ("select previous_state, state, previous_fence, fence from sentinel.reconcile_v1("
               "%s, %s, %s, 'alice', 'checked', %s, null, %s)")
        if r is None:
            expected: Optional[str] = "SN007"
        else:
            effective = "uncertain" if r.state == "executing" and r.lease <= self.m.now else r.state
            stuck = effective in ("uncertain", "failed") or (effective == "claimed" and r.lease <= self.m.now)
            expected = None if stuck or force else "SN008"
        try:
            prev_state, state, prev_fence, fence = self.call(sql, (k[0], k[1], action, response, force))
        except SqlError as exc:
            assert exc.sqlstate == expected, f"reconcile {k}: raised {exc.sqlstate}, model {expected} ({r})"
            reached(f"reconcile:{expected}")
            return
        assert expected is None and r is not None, f"reconcile {k}: succeeded, model {expected}"
        reached(f"reconcile:{action}:from-{effective}")
        assert prev_fence == r.fence and prev_state == effective
        self.new_fence(k, fence)
        error = None
        if action == "release":
            error = {"released": True, "reason": "checked"}
        elif action == "failed":
            error = {"reconciled": True, "reason": "checked"}
        self.m.rows[k] = replace(r, state="completed" if action == "completed" else "failed", fence=fence,
                                 owner=None, response={"by": "operator"} if action == "completed" else None,
                                 error=error, permanent=action == "failed", lease=min(r.lease, self.m.now),
                                 finished_at=self.m.now, reconciled_by="alice")
        assert state == self.m.rows[k].state

    @rule(ns=st.sampled_from(["model-a", "model-b"]), older=st.sampled_from([0, 100, 1000, 10**9]))
    def purge(self, ns: str, older: int) -> None:
        (n,) = self.call("select sentinel.purge_v1(%s, %s)", (ns, older))
        doomed = [k for k, r in self.m.rows.items() if k[0] == ns and r.state in ("completed", "failed")
                  and r.finished_at is not None and r.finished_at <= self.m.now - older]
        assert n == len(doomed), f"purge {ns} {older}: {n} deleted, model {doomed}"
        for k in doomed:
            del self.m.rows[k]
        reached("purge:deleted" if doomed else "purge:none")

    # -- the comparison after every step -------------------------------------------------------

    @invariant()
    def rows_match_the_model(self) -> None:
        cur = self.conn.execute(
            "select namespace, key, state, fence, owner, attempt, fingerprint, ttl_ms, claimed_at, started_at,"
            " lease_expires_at, hard_expires_at, finished_at, response, error, error_permanent, uncertain_reason,"
            " reconciled_by from sentinel.executions where namespace like 'model-%%'")
        db = {(r[0], r[1]): r[2:] for r in cur.fetchall()}
        assert set(db) == set(self.m.rows), f"rows {sorted(db)} vs model {sorted(self.m.rows)}"
        for k, r in self.m.rows.items():
            got = db[k]
            want = (r.state, r.fence, r.owner, r.attempt, r.fingerprint, r.ttl, r.claimed_at, r.started_at, r.lease,
                    r.hard, r.finished_at, r.response, r.error, r.permanent, r.reason, r.reconciled_by)
            have = (got[0], got[1], got[2], got[3], got[4], got[5], ms(got[6]), ms(got[7]), ms(got[8]), ms(got[9]),
                    ms(got[10]), got[11], got[12], got[13], got[14], got[15])
            assert have == want, f"{k}:\n  db    {have}\n  model {want}"
            assert r.lease <= r.hard, "invariant 6: the lease passed the hard deadline"

    @invariant()
    def inspect_reports_the_effective_state(self) -> None:
        for k in KEYS:
            row = self.conn.execute("select state, stored_state from sentinel.inspect_v1(%s, %s)", k).fetchone()
            r = self.m.rows.get(k)
            if r is None:
                assert row is None
                continue
            lapsed = r.state == "executing" and r.lease <= self.m.now
            assert row == ("uncertain" if lapsed else r.state, r.state), f"inspect {k}: {row} ({r})"


@pytest.fixture
def clock_conn(empty_db: Callable[[], str]) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a database of its own, inside a transaction whose clock the test controls."""
    target = empty_db()
    with psycopg.connect(target, autocommit=True) as setup:
        sentinel.init_db(setup)
    conn = psycopg.connect(target)
    try:
        conn.execute(CLOCK_SQL)
        yield conn
    finally:
        conn.rollback()  # the replaced clock was never committed
        conn.close()


def tour(m: ProtocolMachine) -> None:
    """A directed walk through every transition of the state table, each step checked against the model."""
    a, b = KEYS
    steps: List[Callable[[], None]] = [
        lambda: m.acquire(a, ttl=1000, hard_factor=10, start=False, fp="fp-a", owner="w1"),
        lambda: m.begin(a, "stale"),
        lambda: m.begin(a, "current"),
        lambda: m.heartbeat(a, "current"),
        lambda: m.acquire(a, ttl=1000, hard_factor=None, start=True, fp="fp-b", owner="w2"),
        lambda: m.acquire(a, ttl=1000, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.acquire(a, ttl=1000, hard_factor=-1, start=True, fp=None, owner="w2"),
        lambda: m.heartbeat_after_lapse(a, "lease"),
        lambda: m.acquire(a, ttl=1000, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.complete(a, "current", 1),
        lambda: m.complete(a, "current", 2),
        lambda: m.complete(a, "other", 3),
        lambda: m.acquire(a, ttl=1000, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.purge("model-a", 0),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w1"),
        lambda: m.heartbeat_after_lapse(a, "hard"),
        lambda: m.reconcile(a, "completed", False),
        lambda: m.reconcile(a, "release", False),
        lambda: m.reconcile(a, "release", True),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=False, fp=None, owner="w1"),
        lambda: m.advance(200),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=False, fp=None, owner="w2"),
        lambda: m.complete(a, "current", 4),
        lambda: m.fail(a, "current", True),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w1"),
        lambda: m.reconcile(a, "release", False),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w1"),
        lambda: m.fail(a, "current", False),
        lambda: m.acquire(a, ttl=100, hard_factor=3, start=True, fp=None, owner="w1"),
        lambda: m.advance(200),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.reconcile(a, "release", False),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.abandon(a, "current"),
        lambda: m.abandon(a, "current"),
        lambda: m.abandon(a, "stale"),
        lambda: m.fail(a, "current", False),  # a late failure of an uncertain execution
        lambda: m.reconcile(a, "release", False),
        lambda: m.acquire(a, ttl=100, hard_factor=None, start=True, fp=None, owner="w1"),
        lambda: m.advance(200),
        lambda: m.fail(a, "current", True),  # a failure after the lease lapsed, row still executing
        lambda: m.reconcile(a, "completed", False),
        lambda: m.reconcile(b, "completed", False),
        lambda: m.acquire(b, ttl=1000, hard_factor=None, start=False, fp=None, owner="w1"),
        lambda: m.abandon(b, "current"),
        lambda: m.acquire(b, ttl=1000, hard_factor=None, start=True, fp=None, owner="w2"),
        lambda: m.complete(b, "current", 5),
        lambda: m.purge("model-b", 10**9),
    ]
    for step in steps:
        step()
        m.rows_match_the_model()
        m.inspect_reports_the_effective_state()


def test_protocol_follows_the_state_table(clock_conn: psycopg.Connection[Any]) -> None:
    ProtocolMachine.conn = clock_conn
    REACHED.clear()
    run_state_machine_as_test(
        ProtocolMachine,
        settings=settings(max_examples=200, stateful_step_count=40, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
    machine = ProtocolMachine()
    try:
        tour(machine)
    finally:
        machine.teardown()
    must = [
        "acquire:acquired", "acquire:acquired:from-claimed", "acquire:acquired:from-failed", "acquire:alive",
        "acquire:completed", "acquire:failed", "acquire:mismatch", "acquire:uncertain:from-executing",
        "acquire:uncertain:from-uncertain", "acquire:SN003", "begin:True", "begin:False", "heartbeat:True",
        "heartbeat:False", "heartbeat:marked:lease expired", "heartbeat:marked:hard deadline passed",
        "completed:recorded:from-executing", "completed:recorded:from-uncertain", "completed:already_recorded",
        "completed:stale", "completed:SN011", "failed:recorded:from-executing", "failed:recorded:from-claimed",
        "failed:uncertain:from-uncertain", "failed:uncertain:from-executing",
        "abandon:released", "abandon:uncertain", "abandon:retry", "abandon:stale", "reconcile:SN007",
        "reconcile:SN008",
        "reconcile:release:from-uncertain", "reconcile:completed:from-uncertain", "purge:deleted",
    ]
    missing = [m for m in must if not REACHED.get(m)]
    assert not missing, f"the machine never reached {missing}; reached {sorted(REACHED)}"
    # The clock replacement never left the transaction.
    other = psycopg.connect(clock_conn.info.dsn, password=clock_conn.info.password or None, autocommit=True)
    try:
        (body,) = other.execute("select prosrc from pg_proc where oid = 'sentinel._now()'::regprocedure").fetchone() \
            or ("",)
        assert "clock_timestamp" in body, "the fake clock leaked out of the test transaction"
    finally:
        other.close()


"""The chaos checker: reads what happened and checks the SPEC invariants.

Inputs, all independent of the library's own view:

- the **history**: every version of every ``sentinel.executions`` row, written
  by a trigger the harness installs (``chaos_audit.history``), in the same
  transaction as the change, so it holds exactly the committed transitions
  in row-lock order;
- the **ledger** (a separate database): one row per function start, committed
  before the function's body ran, and one per finish;
- the **calls**: every ``once()`` (or raw protocol) call a worker, the injector
  or the final sweep made, with what it got back and when;
- the **sweep**: after the load stops and every lease has lapsed, one
  ``once()`` per key, with the row as it stood just before.

:func:`check` returns the violations, each tagged with the invariant it breaks;
an empty list means every invariant held. The functions are pure, so the
tests can feed them doctored data and see each violation caught.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import psycopg

Key = Tuple[str, str]

LAPSE_REASONS = ("lease expired", "hard deadline passed")
FENCE_IN_ERROR = re.compile(r"\bfence[= ](\d+)\b")  # "fence=N" (chaos functions), "under fence N" (LeaseLost)

# The history table and its trigger (installed by the harness as the schema owner).
AUDIT_SQL = """
create schema chaos_audit;
create table chaos_audit.history (
    seq bigserial primary key,
    op text not null,
    at timestamptz not null default clock_timestamp(),
    namespace text not null, key text not null, state text, fence bigint, owner text, attempt integer,
    ttl_ms bigint, claimed_at timestamptz, started_at timestamptz, lease_expires_at timestamptz,
    hard_expires_at timestamptz, finished_at timestamptz, response jsonb, error jsonb, error_permanent boolean,
    uncertain_reason text, reconciled_by text, reconciled_at timestamptz, updated_at timestamptz
);
create function chaos_audit.record() returns trigger language plpgsql as $$
declare r sentinel.executions;
begin
    if tg_op = 'DELETE' then r := old; else r := new; end if;
    insert into chaos_audit.history (op, namespace, key, state, fence, owner, attempt, ttl_ms, claimed_at,
        started_at, lease_expires_at, hard_expires_at, finished_at, response, error, error_permanent,
        uncertain_reason, reconciled_by, reconciled_at, updated_at)
    values (tg_op, r.namespace, r.key, r.state, r.fence, r.owner, r.attempt, r.ttl_ms, r.claimed_at,
        r.started_at, r.lease_expires_at, r.hard_expires_at, r.finished_at, r.response, r.error,
        r.error_permanent, r.uncertain_reason, r.reconciled_by, r.reconciled_at, r.updated_at);
    return null;
end $$;
create trigger chaos_audit after insert or update or delete on sentinel.executions
    for each row execute function chaos_audit.record();
"""

LEDGER_SQL = """
create table starts (
    id bigserial primary key, call text not null unique, ns text not null, key text not null,
    fence bigint not null, attempt integer, worker text not null, pid integer not null,
    t timestamptz not null default clock_timestamp()
);
create table finishes (
    id bigserial primary key, call text not null unique, ns text not null, key text not null,
    fence bigint not null, worker text not null, outcome text not null,
    t timestamptz not null default clock_timestamp()
);
"""


@dataclass
class Version:
    """One committed version of an execution row (or its deletion)."""

    seq: int
    op: str
    namespace: str
    key: str
    state: str
    fence: int
    owner: Optional[str]
    attempt: int
    claimed_at: datetime
    lease_expires_at: datetime
    hard_expires_at: datetime
    updated_at: datetime
    response: Any = None
    error: Any = None
    error_permanent: bool = False
    uncertain_reason: Optional[str] = None
    reconciled_by: Optional[str] = None
    reconciled_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    ttl_ms: int = 0

    @property
    def k(self) -> Key:
        return (self.namespace, self.key)


@dataclass
class Start:
    """A function start committed to the ledger before the function's body ran."""

    call: str
    ns: str
    key: str
    fence: int
    worker: str
    pid: int
    t: Optional[datetime] = None


@dataclass
class Call:
    """One call to ``once()`` (or the raw protocol) and what it returned."""

    call: str
    worker: str
    ns: str
    key: str
    outcome: str
    t0: float
    t1: float
    path: str = "once"
    fence: Optional[int] = None
    response: Any = None
    error: Any = None
    error_type: Optional[str] = None
    persisted: Optional[bool] = None

    @staticmethod
    def from_doc(doc: Dict[str, Any]) -> Call:
        return Call(call=str(doc["call"]), worker=str(doc["worker"]), ns=str(doc["ns"]), key=str(doc["key"]),
                    outcome=str(doc["outcome"]), t0=float(doc["t0"]), t1=float(doc["t1"]),
                    path=str(doc.get("path", "once")), fence=doc.get("fence"), response=doc.get("response"),
                    error=doc.get("error"), error_type=doc.get("error_type"), persisted=doc.get("persisted"))


@dataclass
class SweepItem:
    """The final sweep's call for one key, with the row (or None) just before it."""

    before: Optional[Version]
    call: Call


@dataclass
class Limits:
    ttl_ms: int
    hard_ttl_ms: int
    #: a call must end within hard_ttl_ms + margin_s seconds (minus the time its worker was stopped)
    margin_s: float
    namespaces: Sequence[str]


@dataclass
class Violation:
    invariant: str
    what: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.what}"


@dataclass
class Facts:
    """Everything the checker reads."""

    history: List[Version]
    final: Dict[Key, Version]
    starts: List[Start]
    calls: List[Call]
    sweep: List[SweepItem]
    #: worker name -> [(t_stop, t_cont)] wall-clock intervals it spent SIGSTOPped
    stopped: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    #: the lease-within-hard-deadline CHECK constraint exists and is validated
    hard_check_constraint: bool = True


# -- loading -----------------------------------------------------------------------

_VERSION_COLS = ("seq, op, namespace, key, state, fence, owner, attempt, claimed_at, lease_expires_at, "
                 "hard_expires_at, updated_at, response, error, error_permanent, uncertain_reason, reconciled_by, "
                 "reconciled_at, started_at, ttl_ms")


def _version(row: Sequence[Any]) -> Version:
    return Version(*row)


def load_history(conn: psycopg.Connection[Any]) -> List[Version]:
    rows = conn.execute(f"select {_VERSION_COLS} from chaos_audit.history order by seq").fetchall()
    return [_version(r) for r in rows]


def load_rows(conn: psycopg.Connection[Any]) -> Dict[Key, Version]:
    """The current rows, as versions (seq 0, op 'ROW')."""
    cols = _VERSION_COLS.replace("seq, op, ", "")
    rows = conn.execute(f"select 0, 'ROW', {cols} from sentinel.executions").fetchall()
    out: Dict[Key, Version] = {}
    for r in rows:
        v = _version(r)
        out[v.k] = v
    return out


def load_starts(conn: psycopg.Connection[Any]) -> List[Start]:
    rows = conn.execute("select call, ns, key, fence, worker, pid, t from starts order by id").fetchall()
    return [Start(*r) for r in rows]


def hard_check_constraint(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "select bool_and(convalidated) from pg_constraint"
        " where conrelid = 'sentinel.executions'::regclass and conname = 'executions_lease_within_hard_check'"
    ).fetchone()
    return bool(row and row[0])


# -- checks ----------------------------------------------------------------------------


def _ms(ms: int) -> timedelta:
    return timedelta(milliseconds=ms)


def _pid_of(owner: Optional[str]) -> Optional[int]:
    parts = (owner or "").split(":")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def check_history(facts: Facts, limits: Limits) -> List[Violation]:
    """Transitions, fences, leases and hard deadlines, version by version (invariants 1, 4, 5, 6, 8)."""
    out: List[Violation] = []
    by_key: Dict[Key, List[Version]] = defaultdict(list)
    for v in facts.history:
        by_key[v.k].append(v)
    fence_owner: Dict[int, Key] = {}
    starts_by_fence: Dict[Tuple[str, str, int], List[Start]] = defaultdict(list)
    for s in facts.starts:
        starts_by_fence[(s.ns, s.key, s.fence)].append(s)
    allowed_ns = set(limits.namespaces)

    if not facts.hard_check_constraint:
        out.append(Violation("6 hard deadline", "the CHECK constraint lease_expires_at <= hard_expires_at is missing"))

    for k, versions in by_key.items():
        if k[0] not in allowed_ns:
            out.append(Violation("8 isolation", f"a row in an unknown namespace {k}"))
        prev: Optional[Version] = None
        max_fence = 0
        for v in versions:
            where = f"{k[0]}/{k[1]} seq {v.seq} (fence {v.fence}, {prev.state if prev else 'no row'} -> {v.state})"
            if v.op == "DELETE":
                prev = None
                continue
            other = fence_owner.setdefault(v.fence, k)
            if other != k:
                out.append(Violation("4 fencing", f"{where}: fence {v.fence} also used by {other[0]}/{other[1]}"))
            # 6: the lease never reaches past the hard deadline, which never exceeds the claim's hard TTL.
            if v.lease_expires_at > v.hard_expires_at:
                out.append(Violation("6 hard deadline", f"{where}: lease {v.lease_expires_at} > hard "
                                                         f"{v.hard_expires_at}"))
            if v.hard_expires_at > v.claimed_at + _ms(limits.hard_ttl_ms):
                out.append(Violation("6 hard deadline", f"{where}: hard deadline {v.hard_expires_at} more than "
                                                         f"{limits.hard_ttl_ms} ms after the claim {v.claimed_at}"))
            if prev is None:
                if v.op != "INSERT":
                    out.append(Violation("4 fencing", f"{where}: an update of a row never inserted"))
                if v.fence <= max_fence:
                    out.append(Violation("4 fencing", f"{where}: a new row reuses fence {v.fence} <= {max_fence}"))
                if v.state not in ("claimed", "executing") or v.attempt != 1:
                    out.append(Violation("1 at most once", f"{where}: a new row must be a first claim"))
            elif v.fence < prev.fence:
                out.append(Violation("4 fencing", f"{where}: fence went back from {prev.fence}"))
            elif v.fence > prev.fence:
                out.extend(_new_fence(where, prev, v, starts_by_fence))
            else:
                out.extend(_same_fence(where, prev, v))
            max_fence = max(max_fence, v.fence)
            prev = v
    return out


def _new_fence(where: str, prev: Version, v: Version,
               starts_by_fence: Dict[Tuple[str, str, int], List[Start]]) -> List[Violation]:
    out: List[Violation] = []
    if v.reconciled_by is not None:
        # An operator's reconcile (never forced in the chaos run).
        lapsed = prev.lease_expires_at <= (v.reconciled_at or v.updated_at)
        ok = prev.state in ("uncertain", "failed") or (prev.state in ("claimed", "executing") and lapsed)
        if not ok:
            out.append(Violation("4 fencing", f"{where}: reconciled a {prev.state} key that was still live"))
        if v.state not in ("completed", "failed"):
            out.append(Violation("4 fencing", f"{where}: a reconcile left state {v.state}"))
        return out
    # A new claim by acquire: allowed only after a retryable failure (or release), or over a lapsed claim
    # that never began (invariants 1 and 5).
    if v.state not in ("claimed", "executing"):
        out.append(Violation("4 fencing", f"{where}: a new fence must start as a claim"))
    if v.attempt != prev.attempt + 1:
        out.append(Violation("1 at most once", f"{where}: attempt {prev.attempt} -> {v.attempt}"))
    if prev.state == "failed":
        if prev.error_permanent:
            out.append(Violation("1 at most once", f"{where}: a permanent failure was claimed again"))
    elif prev.state == "claimed":
        if prev.lease_expires_at > v.claimed_at:
            out.append(Violation("5 liveness", f"{where}: a live claim (lease {prev.lease_expires_at}) was taken "
                                               f"over at {v.claimed_at}"))
        if starts_by_fence.get((prev.namespace, prev.key, prev.fence)):
            out.append(Violation("1 at most once", f"{where}: the function had started under fence {prev.fence}, "
                                                   "which was then taken over as if it never began"))
    else:
        out.append(Violation("1 at most once", f"{where}: the key was claimed again after a begun execution "
                                               f"({prev.state}) that neither failed nor was released"))
    return out


def _same_fence(where: str, prev: Version, v: Version) -> List[Violation]:
    out: List[Violation] = []
    allowed = {
        ("claimed", "claimed"), ("claimed", "executing"), ("claimed", "failed"),
        ("executing", "executing"), ("executing", "uncertain"), ("executing", "completed"), ("executing", "failed"),
        # A fence holder may still complete an uncertain execution, never fail it (a late failure
        # would re-open the key): its failure only adds evidence, the key staying uncertain.
        ("uncertain", "completed"), ("uncertain", "uncertain"),
    }
    if (prev.state == v.state and v.state in ("completed", "failed") and v.response == prev.response
            and v.error == prev.error and v.lease_expires_at == prev.lease_expires_at
            and v.hard_expires_at == prev.hard_expires_at):
        return out  # bookkeeping of a finished record (e.g. its retention), not a new outcome
    if (prev.state, v.state) not in allowed:
        out.append(Violation("4 fencing", f"{where}: not a transition a fence holder can make"))
        return out
    if prev.state == "uncertain" and v.state == "uncertain":
        # A late failure: the owner's error is kept as evidence; nothing else may change.
        if (v.response is not None or v.error_permanent or v.lease_expires_at != prev.lease_expires_at
                or v.hard_expires_at != prev.hard_expires_at or v.uncertain_reason != prev.uncertain_reason):
            out.append(Violation("4 fencing", f"{where}: an uncertain key changed under its fence beyond the "
                                              "evidence of a late failure"))
        elif v.error is not None and v.error != prev.error:
            out.extend(_owner_wrote(where, v))
        return out
    if (prev.state == "executing" and v.state == "failed" and v.reconciled_by is None
            and prev.lease_expires_at <= v.updated_at):
        out.append(Violation("1 at most once", f"{where}: a failure reported after the lease lapsed "
                                               f"({prev.lease_expires_at}) was recorded as failed at {v.updated_at}"))
    if v.hard_expires_at != prev.hard_expires_at or v.claimed_at != prev.claimed_at:
        out.append(Violation("6 hard deadline", f"{where}: the claim time or hard deadline moved under one fence"))
    if v.lease_expires_at > prev.lease_expires_at:
        # A renewal (heartbeat or begin): only of a live lease, to min(now + ttl, hard).
        if v.updated_at >= prev.lease_expires_at:
            out.append(Violation("4 fencing", f"{where}: a lapsed lease ({prev.lease_expires_at}) was renewed "
                                              f"at {v.updated_at}"))
        expected = min(v.updated_at + _ms(v.ttl_ms), v.hard_expires_at)
        if v.lease_expires_at != expected:
            out.append(Violation("6 hard deadline", f"{where}: renewed to {v.lease_expires_at}, expected "
                                                    f"{expected}"))
    if (prev.state == "executing" and v.state == "uncertain" and v.uncertain_reason in LAPSE_REASONS
            and prev.lease_expires_at > v.updated_at):
            out.append(Violation("5 liveness", f"{where}: a live execution (lease {prev.lease_expires_at}) was "
                                               f"marked uncertain ({v.uncertain_reason}) at {v.updated_at}"))
    if v.state in ("completed", "failed") and v.reconciled_by is None:
        out.extend(_owner_wrote(where, v))
    return out


def _owner_wrote(where: str, v: Version) -> List[Violation]:
    """A recorded outcome names the run that produced it (invariant 4: no stale writer's result)."""
    out: List[Violation] = []
    if v.state == "completed":
        r = v.response
        if not isinstance(r, dict) or r.get("fence") != v.fence:
            out.append(Violation("4 fencing", f"{where}: stored response {r!r} was not produced under fence "
                                              f"{v.fence}"))
        elif r.get("ns") != v.namespace or r.get("key") != v.key:
            out.append(Violation("8 isolation", f"{where}: stored response {r!r} belongs to another key"))
    else:
        msg = v.error.get("message", "") if isinstance(v.error, dict) else ""
        m = FENCE_IN_ERROR.search(msg)
        if m is None or int(m.group(1)) != v.fence:
            out.append(Violation("4 fencing", f"{where}: stored error {v.error!r} was not raised under fence "
                                              f"{v.fence}"))
    return out


def check_starts(facts: Facts) -> List[Violation]:
    """At most one start per fence, only under a begun execution, by the fence's holder (invariant 1)."""
    out: List[Violation] = []
    begun: Dict[Tuple[str, str, int], Version] = {}
    for v in facts.history:
        if v.state == "executing" and (v.namespace, v.key, v.fence) not in begun:
            begun[(v.namespace, v.key, v.fence)] = v
    seen: Dict[Tuple[str, str, int], Start] = {}
    for s in facts.starts:
        fk = (s.ns, s.key, s.fence)
        if fk in seen:
            out.append(Violation("1 at most once", f"{s.ns}/{s.key}: the function started twice under fence "
                                                   f"{s.fence} (calls {seen[fk].call} and {s.call})"))
            continue
        seen[fk] = s
        b = begun.get(fk)
        if b is None:
            out.append(Violation("1 at most once", f"{s.ns}/{s.key}: call {s.call} started the function under "
                                                   f"fence {s.fence}, which was never begun"))
        elif _pid_of(b.owner) != s.pid:
            out.append(Violation("1 at most once", f"{s.ns}/{s.key}: call {s.call} (pid {s.pid}) started under "
                                                   f"fence {s.fence} held by {b.owner}"))
    return out


def _completed(history: Iterable[Version]) -> Dict[Key, List[Version]]:
    out: Dict[Key, List[Version]] = defaultdict(list)
    for v in history:
        if v.state == "completed" and v.op != "DELETE":
            out[v.k].append(v)
    return out


def check_calls(facts: Facts, limits: Limits) -> List[Violation]:
    """Replays, fresh results, fenced-out results, and every call's end (invariants 2, 3, 4, 5)."""
    out: List[Violation] = []
    completed = _completed(facts.history)
    for k, vs in completed.items():
        fences = {v.fence for v in vs}
        if len(fences) > 1:
            out.append(Violation("2 replay fidelity", f"{k[0]}/{k[1]} completed under several fences "
                                                      f"{sorted(fences)}"))
    permanent: Dict[Tuple[str, str, int], Any] = {}
    for v in facts.history:
        if v.state == "failed" and v.error_permanent:
            permanent[(v.namespace, v.key, v.fence)] = v.error
    bound = limits.hard_ttl_ms / 1000.0 + limits.margin_s
    clear = {"fresh", "replayed", "alive", "uncertain", "failed_replay", "raised", "late_raise", "fenced_out",
             "unpersisted", "error", "ledger_down", "begin_refused", "cancelled"}
    for c in facts.calls:
        where = f"call {c.call} ({c.ns}/{c.key}, {c.outcome}, fence {c.fence})"
        recorded = [v for v in completed.get((c.ns, c.key), []) if v.fence == c.fence]
        if c.outcome == "replayed":
            if not recorded:
                out.append(Violation("2 replay fidelity", f"{where}: replayed a response never recorded under "
                                                          "that fence"))
            elif recorded[0].response != c.response:
                out.append(Violation("2 replay fidelity", f"{where}: replayed {c.response!r}, recorded "
                                                          f"{recorded[0].response!r}"))
        elif c.outcome == "fresh":
            if not any(v.response == c.response for v in recorded):
                out.append(Violation("3 nothing lost", f"{where}: reported recorded, but no completed version "
                                                       f"holds {c.response!r}"))
        elif c.outcome in ("fenced_out", "raised", "late_raise", "ledger_down"):
            if recorded and c.outcome == "fenced_out" and any(v.response == c.response for v in recorded):
                out.append(Violation("4 fencing", f"{where}: reported fenced out, but its response was stored"))
            elif recorded and c.outcome != "fenced_out":
                out.append(Violation("4 fencing", f"{where}: the function raised, yet fence {c.fence} completed"))
        elif c.outcome == "failed_replay":
            err = permanent.get((c.ns, c.key, c.fence or 0))
            if err is None or err != c.error:
                out.append(Violation("2 replay fidelity", f"{where}: replayed error {c.error!r}, recorded {err!r}"))
        elif c.outcome not in clear:
            out.append(Violation("5 liveness", f"{where}: ended in an unclear error {c.error_type}: {c.error}"))
        if (isinstance(c.response, dict) and c.outcome in ("fresh", "replayed")
                and (c.response.get("ns") != c.ns or c.response.get("key") != c.key)):
                out.append(Violation("8 isolation", f"{where}: got the response of another key {c.response!r}"))
        paused = sum(max(0.0, min(b, c.t1) - max(a, c.t0)) for a, b in facts.stopped.get(c.worker, []))
        took = c.t1 - c.t0 - paused
        if took > bound:
            out.append(Violation("5 liveness", f"{where}: took {took:.1f}s (not counting {paused:.1f}s stopped), "
                                               f"more than the hard TTL + margin ({bound:.1f}s)"))
    return out


def check_final(facts: Facts) -> List[Violation]:
    """After the sweep: nothing is left in flight, begun executions are uncertain or resolved (invariants 3, 5)."""
    out: List[Violation] = []
    for k, row in facts.final.items():
        if row.state in ("claimed", "executing"):
            out.append(Violation("3 nothing lost", f"{k[0]}/{k[1]}: still {row.state} under fence {row.fence} "
                                                   "after the sweep"))
    for c in facts.calls:
        if c.outcome == "fresh":
            now = facts.final.get((c.ns, c.key))
            if now is None or now.state != "completed" or now.fence != c.fence or now.response != c.response:
                got = None if now is None else (now.state, now.fence)
                out.append(Violation("3 nothing lost", f"call {c.call} ({c.ns}/{c.key}): its recorded response "
                                                       f"under fence {c.fence} is gone (row now {got})"))
    sweep_started = {(s.ns, s.key, s.fence) for s in facts.starts if s.worker == "sweep"}
    for item in facts.sweep:
        b, c = item.before, item.call
        where = f"sweep {c.ns}/{c.key} (before: {b.state if b else 'no row'}, got {c.outcome})"
        if b is None or (b.state == "failed" and not b.error_permanent) or b.state == "claimed":
            expected = {"fresh"}  # a new claim; over a lapsed claim, a takeover (5 liveness)
            inv = "5 liveness"
        elif b.state == "completed":
            expected = {"replayed"}
            inv = "2 replay fidelity"
        elif b.state == "failed":
            expected = {"failed_replay"}
            inv = "2 replay fidelity"
        else:  # executing (lapsed) or uncertain: the function may have run
            expected = {"uncertain"}
            inv = "3 nothing lost"
        if c.outcome not in expected:
            detail = f" ({c.error_type}: {c.error})" if c.error_type else ""
            out.append(Violation(inv, f"{where}: expected {sorted(expected)}{detail}"))
        if c.outcome == "replayed" and b is not None and c.response != b.response:
            out.append(Violation("2 replay fidelity", f"{where}: replayed {c.response!r}, stored {b.response!r}"))
        if b is not None and b.state in ("executing", "uncertain") and any(
                (c.ns, c.key, f) in sweep_started for f in (c.fence or 0, b.fence)):
            out.append(Violation("3 nothing lost", f"{where}: the function ran again over an execution of "
                                                   "unknown outcome"))
    return out


def check(facts: Facts, limits: Limits) -> List[Violation]:
    """Every invariant; an empty list means they all held."""
    return [
        *check_history(facts, limits),
        *check_starts(facts),
        *check_calls(facts, limits),
        *check_final(facts),
    ]


def takeovers(history: Sequence[Version]) -> int:
    """How many lapsed claims (never begun) were taken over under a new fence."""
    n = 0
    last: Dict[Key, Version] = {}
    for v in history:
        p = last.get(v.k)
        if p is not None and v.op == "UPDATE" and v.fence > p.fence and v.reconciled_by is None \
                and p.state == "claimed":
            n += 1
        last[v.k] = v
    return n


def fences_seen(history: Sequence[Version]) -> Set[int]:
    return {v.fence for v in history}

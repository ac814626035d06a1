"""Hypothesis fuzzing of the SQL protocol's arguments, called directly through psycopg.

Every example runs a short sequence of calls in a namespace of its own. Most
arguments are valid, so keys really move through their states; the rest are
random texts (NUL-free unicode, empty, blank, oversized), negative, zero,
huge and beyond-bigint TTLs and ages, wrong, stale, huge and NULL fences, and
random jsonb. Every call must either

- succeed with a result the contract allows (and a stale fence or a refused
  claim must change nothing), or
- raise a documented SQLSTATE of class ``SN`` (SN001..SN012), or one of the
  input-related standard SQLSTATEs below,

and never ``XX000`` or any other internal error; a call that raises must leave
every row of the namespaces it named exactly as it was (content and ctid).

Allowed standard SQLSTATEs (input that cannot even reach Sentinel's checks):

- ``22003`` numeric_value_out_of_range: an integer beyond bigint (or, for
  ``max_rows``/``batch_size``, beyond integer) in the argument's cast;
- ``22P05`` untranslatable_character: a ``\\u0000`` escape inside a jsonb
  response or error (jsonb cannot store NUL).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

import sentinel

SN_CODES = {f"SN{n:03d}" for n in range(1, 13)}
VALID_NS = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
STANDARD_CODES = {"22003", "22P05"}
BIGINT_MAX = 2**63 - 1

# -- strategies ---------------------------------------------------------------------

_chars = st.characters(codec="utf-8", exclude_characters="\x00")  # NUL-free, no lone surrogates
unicode_text = st.text(alphabet=_chars, max_size=40)
sized_text = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "é", "€", "😀", " ", "\t"]),
    st.sampled_from([0, 1, 199, 200, 201, 341, 342, 999, 1000, 1001, 1024, 1025, 5000, 100_000]),
)
any_text = st.one_of(unicode_text, sized_text, st.none())
big_ints = st.one_of(
    st.sampled_from([0, -1, 1, 2, 2592000000, 2592000001, 3153600000000, 3153600000001, BIGINT_MAX,
                     -(2**63), 2**63, 2**70, -(2**70), 2**31 - 1, 2**31, 10000, 10001, 100000, 100001]),
    st.integers(min_value=-(2**64), max_value=2**64),
)
ttls = st.one_of(st.integers(min_value=1, max_value=600_000), big_ints, st.none())
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(alphabet=st.characters(codec="utf-8"),
                                                                max_size=30),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(alphabet=_chars, max_size=8), children, max_size=4)),
    max_leaves=12,
)
#: a jsonb argument: a JSON document, or SQL NULL
jsonb_arg = st.one_of(json_values.map(lambda v: ("json", v)), st.just(("null", None)))
#: a fence, symbolically: the key's current fence and its neighbours, or a literal
fence_arg = st.one_of(
    st.sampled_from(["current", "current", "current", "previous", "next"]),
    big_ints.map(lambda n: ("literal", n)),
    st.just(("literal", None)),
)
bools = st.one_of(st.booleans(), st.none())
STATES = ["claimed", "executing", "completed", "failed", "uncertain"]


@dataclass
class Op:
    fn: str
    args: Dict[str, Any]


def _mostly(valid: st.SearchStrategy[Any], fuzz: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """An argument: valid four times out of five, so keys really move through their states.

    (``st.one_of(valid, valid, valid, valid, fuzz)`` would not do: Hypothesis merges equal branches.)
    """
    return st.integers(min_value=0, max_value=9).flatmap(lambda n: valid if n < 8 else fuzz)


ns_arg = _mostly(st.just("own"), st.one_of(st.just("sibling"), any_text.map(lambda t: ("text", t))))
key_arg = _mostly(st.sampled_from(["k1", "k2", "k3", "k4", "k5", "ключ-ü😀"]), any_text.map(lambda t: ("text", t)))
text_arg = _mostly(st.sampled_from(["worker-1", "alice@ops", "why"]), any_text)
ttl_arg = _mostly(st.sampled_from([60_000, 60_000, 60_000, 1]), ttls)
hard_arg = _mostly(st.sampled_from([None, 60_000, 120_000]), ttls)
fence_choice = _mostly(st.just("current"), fence_arg)
json_arg = _mostly(json_values.map(lambda v: ("json", v)), jsonb_arg)
bool_arg = _mostly(st.booleans(), st.none())

ops = st.one_of(
    st.builds(lambda ns, key, owner, ttl, hard, start, fp: Op("acquire", dict(
        ns=ns, key=key, owner=owner, ttl=ttl, hard=hard, start=start, fp=fp)),
        ns_arg, key_arg, text_arg, ttl_arg, hard_arg, bool_arg,
        _mostly(st.sampled_from([None, None, "fp-1", "fp-2"]), any_text)),
    st.builds(lambda ns, key, fence: Op("begin", dict(ns=ns, key=key, fence=fence)), ns_arg, key_arg, fence_choice),
    st.builds(lambda ns, key, fence: Op("heartbeat", dict(ns=ns, key=key, fence=fence)),
              ns_arg, key_arg, fence_choice),
    st.builds(lambda ns, key, fence, resp: Op("complete", dict(ns=ns, key=key, fence=fence, response=resp)),
              ns_arg, key_arg, fence_choice, json_arg),
    st.builds(lambda ns, key, fence, err, perm: Op("fail", dict(ns=ns, key=key, fence=fence, error=err,
                                                                 permanent=perm)),
              ns_arg, key_arg, fence_choice, json_arg, bool_arg),
    st.builds(lambda ns, key, fence, reason: Op("abandon", dict(ns=ns, key=key, fence=fence, reason=reason)),
              ns_arg, key_arg, fence_choice, text_arg),
    st.builds(lambda ns, key: Op("inspect", dict(ns=ns, key=key)), ns_arg, key_arg),
    st.builds(lambda ns, state, age, rows: Op("list", dict(ns=ns, state=state, age=age, rows=rows)),
              ns_arg, _mostly(st.sampled_from([*STATES, None]), any_text),
              _mostly(st.sampled_from([None, 0]), big_ints),
              _mostly(st.just(100), st.one_of(big_ints, st.none()))),
    st.builds(lambda ns, key, action, actor, reason, resp, err, force: Op("reconcile", dict(
        ns=ns, key=key, action=action, actor=actor, reason=reason, response=resp, error=err, force=force)),
        ns_arg, key_arg, _mostly(st.sampled_from(["completed", "failed", "release"]), any_text),
        text_arg, text_arg, json_arg, _mostly(st.just(("null", None)), jsonb_arg), bool_arg),
    st.builds(lambda ns, age, batch: Op("purge", dict(ns=ns, age=age, batch=batch)),
              ns_arg, _mostly(st.just(0), st.one_of(big_ints, st.none())),
              _mostly(st.just(1000), st.one_of(big_ints, st.none()))),
)

# -- running one call ------------------------------------------------------------------

SQL = {
    "acquire": "select outcome, fence, state, attempt, lease_expires_at, hard_expires_at, now"
               " from sentinel.acquire_v1(%s::text, %s::text, %s::text, %s::bigint, %s::bigint, %s::boolean, %s::text)",
    "begin": "select sentinel.begin_v1(%s::text, %s::text, %s::bigint)",
    "heartbeat": "select alive, state, lease_expires_at, hard_expires_at from sentinel.heartbeat_v1(%s::text,"
                 " %s::text, %s::bigint)",
    "complete": "select outcome, state, fence from sentinel.complete_v1(%s::text, %s::text, %s::bigint, %s::jsonb)",
    "fail": "select outcome, state, fence from sentinel.fail_v1(%s::text, %s::text, %s::bigint, %s::jsonb,"
            " %s::boolean)",
    "abandon": "select outcome, state, fence from sentinel.abandon_v1(%s::text, %s::text, %s::bigint, %s::text)",
    "inspect": "select namespace, key, state, fence from sentinel.inspect_v1(%s::text, %s::text)",
    "list": "select namespace, key, state from sentinel.list_v1(%s::text, %s::text, %s::bigint, %s::integer)",
    "reconcile": "select previous_state, state, previous_fence, fence from sentinel.reconcile_v1(%s::text, %s::text,"
                 " %s::text, %s::text, %s::text, %s::jsonb, %s::jsonb, %s::boolean)",
    "purge": "select sentinel.purge_v1(%s::text, %s::bigint, %s::integer)",
}

Snapshot = Dict[Tuple[str, str], Tuple[Any, str]]


def _snapshot(conn: psycopg.Connection[Any], namespaces: Sequence[str]) -> Snapshot:
    rows = conn.execute(
        "select namespace, key, to_jsonb(x), ctid::text from sentinel.executions x where namespace = any(%s)",
        (list(namespaces),),
    ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


class Runner:
    def __init__(self, conn: psycopg.Connection[Any], own: str) -> None:
        self.conn = conn
        self.own = own
        self.sibling = own + "-sib"
        self.max_fence: Dict[Tuple[str, str], int] = {}
        self.calls = 0
        self.errors: Dict[str, int] = {}

    def resolve_ns(self, choice: Any) -> Optional[str]:
        if choice == "own":
            return self.own
        if choice == "sibling":
            return self.sibling
        value: Optional[str] = choice[1]
        if value is not None and VALID_NS.match(value):
            # A random text that is a valid namespace could be another test's: use one of ours instead.
            return f"{self.own}-r{len(value) % 7}"
        return value

    @staticmethod
    def resolve_key(choice: Any) -> Optional[str]:
        if isinstance(choice, tuple):
            value: Optional[str] = choice[1]
            return value
        return str(choice)

    def current_fence(self, ns: Optional[str], key: Optional[str]) -> Optional[int]:
        row = self.conn.execute("select fence from sentinel.executions where namespace = %s and key = %s",
                                (ns, key)).fetchone()
        return None if row is None else int(row[0])

    def resolve_fence(self, choice: Any, ns: Optional[str], key: Optional[str]) -> Optional[int]:
        if isinstance(choice, tuple):
            value: Optional[int] = choice[1]
            return value
        cur = self.current_fence(ns, key) or 1
        return {"current": cur, "previous": cur - 1, "next": cur + 1}[choice]

    @staticmethod
    def jsonb(choice: Tuple[str, Any]) -> Optional[Jsonb]:
        return None if choice[0] == "null" else Jsonb(choice[1])

    def params(self, op: Op, ns: Optional[str], key: Optional[str]) -> Tuple[Any, ...]:
        a = op.args
        if op.fn == "acquire":
            return (ns, key, a["owner"], a["ttl"], a["hard"], a["start"], a["fp"])
        if op.fn in ("begin", "heartbeat"):
            return (ns, key, self.resolve_fence(a["fence"], ns, key))
        if op.fn == "complete":
            return (ns, key, self.resolve_fence(a["fence"], ns, key), self.jsonb(a["response"]))
        if op.fn == "fail":
            return (ns, key, self.resolve_fence(a["fence"], ns, key), self.jsonb(a["error"]), a["permanent"])
        if op.fn == "abandon":
            return (ns, key, self.resolve_fence(a["fence"], ns, key), a["reason"])
        if op.fn == "inspect":
            return (ns, key)
        if op.fn == "list":
            return (ns, a["state"], a["age"], a["rows"])
        if op.fn == "reconcile":
            return (ns, key, a["action"], a["actor"], a["reason"], self.jsonb(a["response"]), self.jsonb(a["error"]),
                    a["force"])
        assert op.fn == "purge"
        return (ns, a["age"], a["batch"])

    def run(self, op: Op) -> None:
        ns = self.resolve_ns(op.args["ns"])
        key = self.resolve_key(op.args.get("key", "k1"))
        params = self.params(op, ns, key)
        watched = [n for n in {self.own, self.sibling, ns} if isinstance(n, str)]
        watched += [f"{self.own}-r{i}" for i in range(7)]
        before = _snapshot(self.conn, watched)
        fence_before = self.current_fence(ns, key)
        self.calls += 1
        try:
            rows = self.conn.execute(SQL[op.fn], params).fetchall()
        except psycopg.Error as exc:
            code = exc.sqlstate or "(none)"
            self.errors[code] = self.errors.get(code, 0) + 1
            assert code in SN_CODES or code in STANDARD_CODES, (
                f"{op.fn}{_show(params)} raised SQLSTATE {code}: {exc}")
            after = _snapshot(self.conn, watched)
            assert after == before, f"{op.fn}{_show(params)} raised {code} but changed rows"
            return
        after = _snapshot(self.conn, watched)
        CHECKS[op.fn](self, ns, key, params, rows, before, after, fence_before)
        first = rows[0][0] if rows and op.fn not in ("inspect", "list", "purge") else "ok"
        _outcomes[f"{op.fn}:{first}"] = _outcomes.get(f"{op.fn}:{first}", 0) + 1


def _show(params: Sequence[Any]) -> str:
    shown = []
    for p in params:
        text = repr(p.obj if isinstance(p, Jsonb) else p)
        shown.append(text if len(text) <= 60 else text[:57] + "...")
    return "(" + ", ".join(shown) + ")"


# -- per-function contracts of a successful call ---------------------------------------

Check = Callable[[Runner, Optional[str], Optional[str], Tuple[Any, ...], List[Tuple[Any, ...]], Snapshot, Snapshot,
                  Optional[int]], None]


def _unchanged_except(before: Snapshot, after: Snapshot, key: Tuple[Optional[str], Optional[str]], what: str) -> None:
    """Isolation: a call on one key changes no other row."""
    for k in set(before) | set(after):
        if k != key:
            assert before.get(k) == after.get(k), f"{what} changed another key {k}"


def check_acquire(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                  rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    assert len(rows) == 1
    outcome, fence, state, attempt, lease, hard, now = rows[0]
    assert outcome in ("acquired", "completed", "alive", "uncertain", "failed", "mismatch"), outcome
    assert isinstance(ns, str) and isinstance(key, str)
    _unchanged_except(before, after, (ns, key), "acquire")
    assert lease <= hard, "lease past the hard deadline"
    start = params[5] is not False
    if outcome == "acquired":
        assert state == ("executing" if start else "claimed")
        assert fence_before is None or fence > fence_before, "a new claim did not take a larger fence"
        assert fence > r.max_fence.get((ns, key), 0), "a fence was reused"
        ttl, hard_ttl = params[3], params[4] if params[4] is not None else params[3]
        assert (hard - now).total_seconds() * 1000 == pytest.approx(hard_ttl, abs=1)
        assert (lease - now).total_seconds() * 1000 == pytest.approx(ttl, abs=1)
    else:
        assert fence == fence_before, "a non-claiming outcome reported another fence"
        if outcome in ("completed", "alive", "failed", "mismatch"):
            assert before == after, f"acquire answered {outcome} but wrote"
    r.max_fence[(ns, key)] = max(r.max_fence.get((ns, key), 0), fence)


def check_begin(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    (began,) = rows[0]
    assert began in (True, False)
    if not began:
        assert before == after, "begin refused but wrote"
    else:
        assert params[2] == fence_before and after[(ns, key)][0]["state"] == "executing"  # type: ignore[index]


def check_heartbeat(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                    rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot,
                    fence_before: Optional[int]) -> None:
    alive, state, lease, hard = rows[0]
    assert alive in (True, False)
    if alive:
        assert params[2] == fence_before and lease <= hard
    elif params[2] != fence_before:
        assert before == after, "a heartbeat with a stale fence changed the row"


def check_finish(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                 rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    outcome, state, fence = rows[0]
    is_fail = len(params) == 5  # fail_v1(ns, key, fence, error, permanent); complete_v1 takes 4
    assert outcome in ("recorded", "already_recorded", "stale") + (("uncertain",) if is_fail else ()), outcome
    if outcome == "uncertain":
        # A late failure: the key stays uncertain under the same fence; only the evidence may change.
        row_after = after.get((str(ns), str(key)))
        assert row_after is not None and row_after[0]["state"] == "uncertain" and state == "uncertain"
        assert params[2] == fence_before == fence
        _unchanged_except(before, after, (ns, key), "late fail")
        return
    if outcome != "recorded":
        assert before == after, f"{outcome} but the row changed"
    if outcome == "stale":
        row = before.get((str(ns), str(key)))
        assert params[2] != fence_before or row is None or row[0]["state"] not in ("executing", "uncertain"), \
            "the current fence was called stale"
    else:
        assert params[2] == fence_before
    _unchanged_except(before, after, (ns, key), "complete/fail")


def check_abandon(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                  rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    outcome, state, fence = rows[0]
    assert outcome in ("uncertain", "released", "stale"), outcome
    if outcome == "stale":
        assert before == after, "a stale abandon changed the row"
    else:
        assert params[2] == fence_before


def check_read(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
               rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    assert before == after, "a read changed rows"
    for row in rows:
        assert row[0] == ns, f"read a row of namespace {row[0]!r} asking for {ns!r}"
        if len(row) == 3 and params[1] is not None:
            assert row[2] == params[1]


def check_reconcile(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                    rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot,
                    fence_before: Optional[int]) -> None:
    prev_state, state, prev_fence, fence = rows[0]
    assert fence > prev_fence == fence_before, "reconcile did not take a new fence"
    assert state in ("completed", "failed")
    assert isinstance(ns, str) and isinstance(key, str)
    r.max_fence[(ns, key)] = max(r.max_fence.get((ns, key), 0), fence)
    _unchanged_except(before, after, (ns, key), "reconcile")


def check_purge(r: Runner, ns: Optional[str], key: Optional[str], params: Tuple[Any, ...],
                rows: List[Tuple[Any, ...]], before: Snapshot, after: Snapshot, fence_before: Optional[int]) -> None:
    (n,) = rows[0]
    gone = set(before) - set(after)
    assert n == len(gone) and set(after) <= set(before)
    for k in gone:
        assert k[0] == ns, "purge deleted another namespace's row"
        assert before[k][0]["state"] in ("completed", "failed"), f"purge deleted a {before[k][0]['state']} row"
    for k in after:
        assert after[k] == before[k]


CHECKS: Dict[str, Check] = {
    "acquire": check_acquire, "begin": check_begin, "heartbeat": check_heartbeat, "complete": check_finish,
    "fail": check_finish, "abandon": check_abandon, "inspect": check_read, "list": check_read,
    "reconcile": check_reconcile, "purge": check_purge,
}

# -- the tests -----------------------------------------------------------------------------

_counter = itertools.count(1)
_totals: Dict[str, int] = {}
_outcomes: Dict[str, int] = {}


@settings(max_examples=600, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=st.lists(ops, min_size=1, max_size=12))
# A replay of the seeded completed key, whatever the generated sequences happen to meet.
@example(sequence=[Op("acquire", dict(ns="own", key="k3", owner="worker-1", ttl=60_000, hard=None, start=True,
                                      fp="fp-1"))])
def _fuzz_protocol_calls(conn: psycopg.Connection[Any], namespace: str, sequence: List[Op]) -> None:
    runner = Runner(conn, f"{namespace}-{next(_counter)}")
    # Most sequences start from a real claim, so later calls meet live rows.
    # Every example starts with one key in each state, so any call meets live rows:
    # k1 executing, k2 claimed, k3 completed, k4 failed (permanent), k5 uncertain.
    for key, start in (("k1", True), ("k2", False), ("k3", True), ("k4", True), ("k5", True)):
        runner.run(Op("acquire", dict(ns="own", key=key, owner="seed", ttl=60_000, hard=None, start=start,
                                      fp=None if key == "k4" else "fp-1")))
    runner.run(Op("complete", dict(ns="own", key="k3", fence="current", response=("json", {"seed": 3}))))
    runner.run(Op("fail", dict(ns="own", key="k4", fence="current", error=("json", {"seed": 4}), permanent=True)))
    runner.run(Op("abandon", dict(ns="own", key="k5", fence="current", reason="seeded")))
    for op in sequence:
        runner.run(op)
    for code, n in runner.errors.items():
        _totals[code] = _totals.get(code, 0) + n


def test_fuzz_protocol_calls(conn: psycopg.Connection[Any], namespace: str) -> None:
    """Random call sequences keep the contract, and really exercise every error path and outcome."""
    _totals.clear()
    _outcomes.clear()
    _fuzz_protocol_calls(conn, namespace)
    assert _totals, "the fuzzing raised no error at all"
    reached = {c for c in _totals if c.startswith("SN")}
    for code in ("SN001", "SN002", "SN003", "SN004", "SN005", "SN006", "SN007", "SN008", "SN009", "22003"):
        assert code in _totals, f"no fuzzed call raised {code}; reached {sorted(_totals)}"
    assert reached <= SN_CODES
    # ... and the success paths, through real state changes.
    for outcome in ("acquire:acquired", "acquire:alive", "acquire:completed", "begin:True", "begin:False",
                    "heartbeat:True", "heartbeat:False", "complete:recorded", "complete:stale", "fail:recorded",
                    "abandon:uncertain", "abandon:released", "abandon:stale", "acquire:mismatch", "purge:ok",
                    "list:ok"):
        assert _outcomes.get(outcome), f"no fuzzed call ended in {outcome}; reached {_outcomes}, errors {_totals}"
    assert any(k.startswith("reconcile:") for k in _outcomes), f"no reconcile succeeded: {_outcomes}"


def _exact(text: str) -> Any:
    """A JSON text with every number as an exact Decimal (what jsonb's numeric stores)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(response=json_values)
def test_fuzz_jsonb_round_trip(conn: psycopg.Connection[Any], namespace: str, response: Any) -> None:
    """Whatever JSON is recorded is replayed with the same value (or refused as 22P05 when it holds NUL)."""
    ns = f"{namespace}-j{next(_counter)}"
    row = conn.execute("select fence from sentinel.acquire_v1(%s, 'k', 'w', 60000)", (ns,)).fetchone()
    assert row is not None
    try:
        rec = conn.execute("select outcome from sentinel.complete_v1(%s, 'k', %s, %s)",
                           (ns, row[0], Jsonb(response))).fetchone()
    except psycopg.Error as exc:
        assert exc.sqlstate == "22P05" and "\\u0000" in json.dumps(response), exc
        return
    assert rec == ("recorded",)
    got = conn.execute("select outcome, response::text from sentinel.acquire_v1(%s, 'k', 'w2', 60000)",
                       (ns,)).fetchone()
    assert got is not None and got[0] == "completed"
    assert _exact(got[1]) == _exact(json.dumps(response)), "the replay differs from what was recorded"


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON types all the way down (1e16 the float is not 10000000000000000 the int)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values.filter(lambda v: "\\u0000" not in json.dumps(v)))
@example(value=1.2345678901234566e25)
@example(value={"amount": 1e16})
def test_replay_equals_the_fresh_response(client: sentinel.Sentinel, value: Any) -> None:
    """Invariant 2 through the driver: the fresh caller and every later caller get the same response.

    The user guide promises "the fresh caller receives the same decoded JSON that
    later callers get replayed ... so the two never differ".
    """
    key = f"replay-{next(_counter)}"
    fresh = client.once(key, lambda: value, fingerprint="fuzz")
    replay = client.once(key, lambda: pytest.fail("ran twice"), fingerprint="fuzz")
    assert fresh.completed and replay.replayed
    assert _same(fresh.response, replay.response), (
        f"fresh caller got {fresh.response!r}, replay {replay.response!r}")

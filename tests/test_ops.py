"""Operations: the event log, probes, observers and their OpenTelemetry/Prometheus exports."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psycopg
import pytest

import sentinel
from sentinel import DidNotHappen, Event, Happened, UncertainKey, Unknown


def _race_worker(dsn: str, namespace: str, keys: List[str], seed: int, barrier: Any, out: Any) -> None:
    rng = random.Random(seed)
    order = list(keys)
    rng.shuffle(order)
    ran = 0
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, pool_size=2) as s:
        barrier.wait(timeout=60)
        for key in order:
            def fn(key: str = key) -> str:
                if key.endswith("-flaky") and rng.random() < 0.5:
                    raise RuntimeError("flaky")
                return key

            while True:
                try:
                    r = s.once(key, fn, ttl_ms=5000)
                except RuntimeError:
                    ran += 1
                    continue
                if r.execution_alive:
                    continue
                if not r.replayed:
                    ran += 1
                break
    out.put(ran)


def _chain_ok(events: List[Dict[str, Any]], record: Dict[str, Any]) -> Tuple[bool, str]:
    """The events of a key form one unbroken chain of transitions ending in the record."""
    if not events or events[0]["from_state"] is not None:
        return False, "the first event must come from no record"
    for before, after in zip(events, events[1:]):
        if after["from_state"] != before["to_state"]:
            return False, f"broken chain: {before['to_state']} then from {after['from_state']}"
        if after["fence"] < before["fence"]:
            return False, "fences went backwards"
    last = events[-1]
    if (last["to_state"], last["fence"]) != (record["stored_state"], record["fence"]):
        return False, f"last event {last['to_state']}/{last['fence']} is not the record"
    return True, ""


def test_every_transition_is_logged_exactly_once_under_contention(dsn: str, namespace: str) -> None:
    keys = [f"k{i}" for i in range(12)] + [f"k{i}-flaky" for i in range(8)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(dsn, namespace, keys, i, barrier, out)) for i in range(8)]
    for p in procs:
        p.start()
    try:
        starts = sum(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        executing = 0
        for key in keys:
            record = s.inspect(key)
            events = s.events(key)
            assert record is not None and record["state"] == "completed"
            ok, why = _chain_ok(events, record)
            assert ok, f"{key}: {why}: {events}"
            executing += sum(1 for e in events if e["to_state"] == "executing")
            assert sum(1 for e in events if e["to_state"] == "completed") == 1
            assert len(events) == 2 * record["attempt"], "a start and an end per attempt, nothing else"
    assert executing == starts, "one 'executing' event per function start"


def test_heartbeats_and_replays_write_no_events(client: sentinel.Sentinel) -> None:
    def slow(ctx: sentinel.ExecutionContext) -> int:
        # Renewed every 400 ms (ttl 1200 ms): at least three renewals in 1.5 s, with a generous margin for
        # a late one; a lost lease fails the test at once instead of waiting here.
        assert not ctx.wait_lost(1.5), "the lease was lost"
        assert ctx.lease_expires_at is not None, "no renewal in 1.5 s"
        return 1

    client.once("quiet", slow, ttl_ms=1200, hard_ttl_ms=10000, pass_context=True)
    for _ in range(5):
        assert client.once("quiet", slow).replayed
    assert [(e["from_state"], e["to_state"]) for e in client.events("quiet")] == [
        (None, "executing"), ("executing", "completed")]


def test_event_log_is_append_only(dsn: str, client: sentinel.Sentinel) -> None:
    client.once("log", lambda: 1)
    with psycopg.connect(dsn, autocommit=True) as owner:
        for statement in ("update sentinel.events set reason = 'edited'", "delete from sentinel.events",
                          "truncate sentinel.events"):
            with pytest.raises(psycopg.Error, match="append-only") as info:
                owner.execute(statement)
            assert info.value.sqlstate == "SN013"
    assert len(client.events("log")) == 2


@pytest.fixture
def app_role(dsn: str) -> Iterator[str]:
    name, password = f"sentinel_ops_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {name} login password '{password}'")
        admin.execute("select sentinel.grant_v1(%s, operator => true)", (name,))
    yield psycopg.conninfo.make_conninfo(dsn, user=name, password=password)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"drop owned by {name}")
        admin.execute(f"drop role {name}")


@pytest.mark.parametrize("statement", [
    "update sentinel.events set reason = 'x'", "delete from sentinel.events", "truncate sentinel.events",
    "insert into sentinel.events (namespace, key, fence, to_state, at) values ('x', 'k', 1, 'completed', now())",
])
def test_application_role_cannot_write_the_log(app_role: str, statement: str) -> None:
    with psycopg.connect(app_role, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_purge_events_is_the_only_way_out(client: sentinel.Sentinel) -> None:
    client.once("old", lambda: 1)
    assert client.purge_events(10 * 60_000) == 0, "nothing is ten minutes old yet"
    assert len(client.events("old")) == 2
    assert client.purge_events(0) >= 2
    assert client.events("old") == []


def _make_uncertain(client: sentinel.Sentinel, conn: psycopg.Connection[Any], key: str) -> int:
    row = conn.execute("select fence from sentinel.acquire_v1(%s, %s, 'dead-worker', 1000)",
                       (client.namespace, key)).fetchone()
    assert row is not None
    conn.execute("select sentinel.abandon_v1(%s, %s, %s, 'worker died')", (client.namespace, key, row[0]))
    return int(row[0])


def test_probe_happened_records_the_response(client: sentinel.Sentinel, conn: psycopg.Connection[Any]) -> None:
    fence = _make_uncertain(client, conn, "p1")
    seen: List[UncertainKey] = []

    def probe(info: UncertainKey) -> Happened:
        seen.append(info)
        return Happened({"charge_id": "ch_found"})

    result = client.once("p1", lambda: pytest.fail("the probe said it happened"), on_uncertain=probe)
    assert result.replayed and result.response == {"charge_id": "ch_found"} and result.fence > fence  # type: ignore[operator]
    assert seen[0].fence == fence and seen[0].record["state"] == "uncertain"
    record = client.inspect("p1")
    assert record is not None and record["reconciled_by"].startswith("probe:") and "probe_happened" in record[
        "reconciled_by"]
    assert client.events("p1")[-1]["actor"] == record["reconciled_by"]


def test_probe_did_not_happen_runs_the_function(client: sentinel.Sentinel, conn: psycopg.Connection[Any]) -> None:
    _make_uncertain(client, conn, "p2")
    calls: List[int] = []
    with sentinel.Sentinel(conninfo=client_dsn(conn), namespace=client.namespace,
                           on_uncertain=lambda info: DidNotHappen("no charge found")) as s:
        result = s.once("p2", lambda: calls.append(1) or "charged now")
    assert result.response == "charged now" and not result.replayed and result.attempt == 2 and calls == [1]


@pytest.mark.parametrize("answer", ["unknown", "raises"])
def test_probe_unknown_keeps_it_uncertain(client: sentinel.Sentinel, conn: psycopg.Connection[Any],
                                          answer: str) -> None:
    _make_uncertain(client, conn, "p3")

    def probe(info: UncertainKey) -> Unknown:
        if answer == "raises":
            raise TimeoutError("provider did not answer")
        return Unknown("provider says: no idea")

    result = client.once("p3", lambda: pytest.fail("must not run"), on_uncertain=probe)
    assert result.uncertain
    record = client.inspect("p3")
    assert record is not None and record["state"] == "uncertain" and record["reconciled_by"] is None


def client_dsn(conn: psycopg.Connection[Any]) -> str:
    return conn.info.dsn + (f" password={conn.info.password}" if conn.info.password else "")


def test_observers_see_every_kind(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    seen: List[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("observers must never break once()")

    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, observers=[seen.append, broken],
                           fingerprints=False) as s:
        s.once("a", lambda: 1)                                   # acquired, completed
        s.once("a", lambda: 1)                                   # replayed
        with pytest.raises(RuntimeError):
            s.once("b", lambda: (_ for _ in ()).throw(RuntimeError("x")))  # acquired, failed

        def inner() -> int:
            assert s.once("c", lambda: 0).execution_alive      # alive
            s.reconcile("c", action="completed", response=2, actor="op", reason="test", force=True)  # reconciled
            return 1

        with pytest.raises(sentinel.FencedOut):
            s.once("c", inner)                                   # acquired, fenced
        _make_uncertain(s, conn, "d")
        assert s.once("d", lambda: 1).uncertain                  # uncertain

        def until_lost(ctx: sentinel.ExecutionContext) -> int:
            assert ctx.wait_lost(10)
            return 1

        s.once("e", until_lost, ttl_ms=200, hard_ttl_ms=400, pass_context=True)  # lease_lost, then completed late
    kinds = {e.kind for e in seen}
    assert kinds == set(sentinel.EVENT_KINDS), set(sentinel.EVENT_KINDS) - kinds
    completed = [e for e in seen if e.kind == "completed" and e.key == "a"]
    assert completed[0].duration_s is not None and completed[0].fence is not None


def test_opentelemetry_spans_and_metrics(dsn: str, namespace: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sentinel.contrib.otel import OpenTelemetryObserver

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    observer = OpenTelemetryObserver(tracer_provider, MeterProvider(metric_readers=[reader]))
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, observers=[observer]) as s:
        s.once("k", lambda: 1)
        s.once("k", lambda: 1)
        with pytest.raises(RuntimeError):
            s.once("f", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    finished = {(sp.name, sp.attributes.get("sentinel.key")): sp for sp in spans.get_finished_spans()}  # type: ignore[union-attr]
    assert ("sentinel.execute", "k") in finished and ("sentinel.replayed", "k") in finished
    failed = finished[("sentinel.execute", "f")]
    assert failed.status.status_code.name == "ERROR" and failed.events[0].name == "exception"
    data = reader.get_metrics_data()
    points = {
        (m.name, tuple(sorted(p.attributes.items()))): p
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics for p in m.data.data_points
    }
    assert points[("sentinel.events", (("sentinel.event", "replayed"), ("sentinel.namespace", namespace)))].value == 1
    hist = points[("sentinel.execution.duration", (("sentinel.namespace", namespace),
                                                   ("sentinel.outcome", "completed")))]
    assert hist.count == 1


def test_prometheus_counters(dsn: str, namespace: str) -> None:
    from prometheus_client import CollectorRegistry

    from sentinel.contrib.prometheus import PrometheusObserver

    registry = CollectorRegistry()
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, observers=[PrometheusObserver(registry)]) as s:
        s.once("k", lambda: 1)
        s.once("k", lambda: 1)
        s.once("k", lambda: 1)
    value = registry.get_sample_value
    assert value("sentinel_events_total", {"namespace": namespace, "event": "replayed"}) == 2
    assert value("sentinel_events_total", {"namespace": namespace, "event": "completed"}) == 1
    assert value("sentinel_execution_seconds_count", {"namespace": namespace, "outcome": "completed"}) == 1


def test_stats(client: sentinel.Sentinel, conn: psycopg.Connection[Any]) -> None:
    client.once("s1", lambda: 1)
    client.once("s2", lambda: 1)
    _make_uncertain(client, conn, "s3")
    st = client.stats()
    assert (st["completed"], st["uncertain"], st["claimed"], st["failed"]) == (2, 1, 0, 0)
    assert st["oldest_uncertain_at"] is not None and st["started_last_minute"] == 3
    assert st["finished_last_minute"] == 2


def _open_spans() -> Any:
    """A span processor that knows which spans were started and never ended."""
    from opentelemetry.sdk.trace import SpanProcessor

    class OpenSpans(SpanProcessor):
        def __init__(self) -> None:
            self.open: Dict[int, str] = {}

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.open[span.context.span_id] = f"{span.name} {dict(span.attributes or {}).get('sentinel.key')}"

        def on_end(self, span: Any) -> None:
            self.open.pop(span.context.span_id, None)

    return OpenSpans()


def test_opentelemetry_ends_the_span_of_an_uncertain_or_rolled_back_execution(
        dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sentinel.contrib.otel import OpenTelemetryObserver

    spans, tracking = InMemorySpanExporter(), _open_spans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    provider.add_span_processor(tracking)
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, observers=[OpenTelemetryObserver(provider)]) as s:
        with pytest.raises(sentinel.ResultNotSerializable):
            s.once("unserialisable", lambda: object())
        assert s.inspect("unserialisable")["state"] == "uncertain"  # type: ignore[index]
        with psycopg.connect(dsn, autocommit=True) as own:
            with pytest.raises(RuntimeError), s.transaction("rolled-back", own) as tx:
                tx.complete({"order": 1})
                raise RuntimeError("the caller's own failure: everything rolls back")
    assert tracking.open == {}, f"spans never ended: {tracking.open}"
    ended = {(sp.name, sp.attributes.get("sentinel.key")): sp for sp in spans.get_finished_spans()}  # type: ignore[union-attr]
    unc = ended[("sentinel.execute", "unserialisable")]
    assert unc.attributes["sentinel.outcome"] == "uncertain" and unc.status.status_code.name == "ERROR"  # type: ignore[index]
    assert ("sentinel.execute", "rolled-back") not in ended  # nothing happened: nothing to trace


def test_transaction_reports_work_only_once_it_committed(dsn: str, namespace: str) -> None:
    """acquired and completed come after the commit (metrics must not count work that rolled back)."""
    seen: List[Tuple[str, str, Optional[str]]] = []

    with psycopg.connect(dsn, autocommit=True) as other:
        def observer(event: sentinel.Event) -> None:
            row = other.execute("select state from sentinel.executions where namespace = %s and key = %s",
                                (namespace, event.key)).fetchone()
            seen.append((event.kind, event.key, row[0] if row else None))

        with sentinel.Sentinel(conninfo=dsn, namespace=namespace, observers=[observer]) as s, \
                psycopg.connect(dsn, autocommit=True) as own:
            with pytest.raises(RuntimeError), s.transaction("undone", own) as tx:
                tx.complete(1)
                raise RuntimeError("rolled back")
            with s.transaction("done", own) as tx:
                tx.complete(2)
            with s.transaction("done", own) as tx:
                assert tx.replayed
    # Each event saw the committed row (what another session sees), never the uncommitted claim.
    assert seen == [("acquired", "done", "completed"), ("completed", "done", "completed"),
                    ("replayed", "done", "completed")], seen

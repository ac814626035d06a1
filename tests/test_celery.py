"""Celery tasks at most once per key: a real worker, a real broker, a real PostgreSQL.

The broker is kombu's SQLAlchemy transport and the result backend Celery's
database backend, both on a database of the test server made for this module
(with the Sentinel schema). The worker is this file run as a script
(``python tests/test_celery.py worker``): it builds the app of the first
example of docs/celery.md, adds the tasks of :func:`_define_test_tasks`, and
runs ``celery worker`` with two prefork pool processes. Task bodies count
their runs in the table ``celery_runs`` on their own connections, so the tests
wait on database state, never on sleeps.

The tests that need no worker call tasks with ``apply()`` (in this process,
still against the real database).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psycopg
import pytest

try:
    import celery
    import sqlalchemy
except ImportError as exc:  # never skipped: a missing framework fails the run, naming the install command
    raise ImportError(
        f"{exc}. The Celery tests need Celery and SQLAlchemy (kombu's SQLAlchemy transport): "
        ".venv/bin/pip install 'celery>=5.3' 'sqlalchemy>=2'"
    ) from exc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

import sentinel  # noqa: E402
from sentinel.contrib.celery import (  # noqa: E402
    NotConfigured,
    SentinelTask,
    TaskInProgress,
    TaskKeyMismatch,
    TaskOutcomeUncertain,
    TaskPermanentFailure,
    configure,
    get_sentinel,
)

DOCS = ROOT / "docs" / "celery.md"
#: The addresses docs/celery.md names; the tests put the test database's in their place.
DOC_BROKER = '"sqla+postgresql+psycopg://app:secret@db/shop"'
DOC_BACKEND = '"db+postgresql+psycopg://app:secret@db/shop"'
DOC_CONNINFO = '"postgresql://app:secret@db/shop"'
NAMESPACE = "shop"  # the namespace the page's configure() call names
TASK_MODULE = "shop_tasks"  # the module name the page's code runs as, on both sides: tasks are shop_tasks.charge
TABLES = """
create table celery_runs (id bigserial primary key, tag text not null, pid int not null);
create table celery_release (tag text primary key);
create table celery_charges (id bigserial primary key, idempotency_key text not null, amount int not null);
"""


# -- the page ------------------------------------------------------------------------------------------


def _blocks(lang: str) -> List[str]:
    """The page's fenced blocks of one language ("" for blocks without one), in order."""
    found: List[str] = []
    current: Optional[List[str]] = None
    info = ""
    for line in DOCS.read_text(encoding="utf-8").splitlines(keepends=True):
        if current is None and line.startswith("```"):
            current, info = [], line[3:].strip()
        elif current is not None and line.rstrip("\n") == "```":
            if info == lang:
                found.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return found


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) of a libpq DSN, a URL or key=value."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(parts.get("host") or "") or None
    query: Dict[str, str] = {}
    if host is not None and host.startswith("/"):  # a socket directory
        query["host"], host = host, None
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg", username=str(parts["user"]) if parts.get("user") else None,
        password=str(parts["password"]) if parts.get("password") else None, host=host,
        port=int(str(parts["port"])) if parts.get("port") else None, database=str(parts.get("dbname") or ""),
        query=query,
    )
    return url.render_as_string(hide_password=False)


def app_source(dsn: str) -> str:
    """The page's first example (the app and its task), pointed at the test database."""
    source = _blocks("python")[0]
    url = sqlalchemy_url(dsn)
    for doc, real in ((DOC_BROKER, repr("sqla+" + url)), (DOC_BACKEND, repr("db+" + url)),
                      (DOC_CONNINFO, repr(dsn))):
        assert doc in source, f"docs/celery.md's first example no longer names {doc}"
        source = source.replace(doc, real)
    assert f'namespace="{NAMESPACE}"' in source, "docs/celery.md's configure() no longer names the namespace shop"
    return source


class _Provider:
    """The payment provider of the page's example: each charge is a row of ``celery_charges``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def charge(self, amount: int, *, idempotency_key: str) -> str:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("insert into celery_charges (idempotency_key, amount) values (%s, %s) returning id",
                               (idempotency_key, amount)).fetchone()
        assert row is not None
        return f"ch_{row[0]}"


class _NoProvider:
    """In the test process: task bodies run in the worker, never here."""

    def charge(self, amount: int, *, idempotency_key: str) -> str:
        raise AssertionError("a task body ran in the test process")


# -- the worker (this file run as a script) ----------------------------------------------------------


def _run_body(dsn: str, tag: str, hold: bool) -> Dict[str, Any]:
    """One run of a test task's body: a row of ``celery_runs``; with ``hold``, wait for ``celery_release``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("insert into celery_runs (tag, pid) values (%s, %s) returning id",
                           (tag, os.getpid())).fetchone()
        assert row is not None
        deadline = time.monotonic() + 60
        while hold and conn.execute("select 1 from celery_release where tag = %s", (tag,)).fetchone() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tag}: never released")
            time.sleep(0.02)
        (runs,) = conn.execute("select count(*) from celery_runs where tag = %s", (tag,)).fetchone() or (0,)
    return {"tag": tag, "run": row[0], "runs": runs}


def _define_test_tasks(app: Any, dsn: str) -> None:
    @app.task(base=SentinelTask, name="sentinel_test.by_id", acks_late=True)
    def by_id(tag: str) -> Dict[str, Any]:
        return _run_body(dsn, tag, False)

    @app.task(base=SentinelTask, name="sentinel_test.by_key", acks_late=True, max_retries=300,
              sentinel_key=lambda tag, hold: f"by-key-{tag}", sentinel_hard_ttl_ms=60_000,
              sentinel_retry_countdown=0.2)
    def by_key(tag: str, hold: bool) -> Dict[str, Any]:
        return _run_body(dsn, tag, hold)

    @app.task(base=SentinelTask, name="sentinel_test.hang", acks_late=True, reject_on_worker_lost=True,
              max_retries=300, sentinel_ttl_ms=1000, sentinel_hard_ttl_ms=60_000, sentinel_retry_countdown=0.2)
    def hang(tag: str) -> Dict[str, Any]:
        return _run_body(dsn, tag, True)  # the test kills the process while it waits

    @app.task(base=SentinelTask, bind=True, name="sentinel_test.flaky", acks_late=True,
              autoretry_for=(RuntimeError,), max_retries=3, default_retry_delay=0)
    def flaky(self: Any, tag: str) -> Dict[str, Any]:
        done = _run_body(dsn, tag, False)
        if done["runs"] < 2:
            raise RuntimeError(f"{tag}: transient failure in run {done['runs']}")
        return {"tag": tag, "runs": done["runs"]}


def _worker_main() -> None:
    dsn = os.environ["SENTINEL_CELERY_DSN"]
    scope: Dict[str, Any] = {"__name__": TASK_MODULE, "provider": _Provider(dsn)}
    exec(compile(app_source(dsn), "docs/celery.md", "exec"), scope)
    app = scope["app"]
    _define_test_tasks(app, dsn)
    app.conf.worker_prefetch_multiplier = 1
    app.conf.worker_lost_wait = 1.0  # how long the worker waits for a lost pool process's result (default 10 s)
    app.worker_main(["worker", "--pool=prefork", "--concurrency=2", "--loglevel=INFO", "--without-mingle",
                     "--without-gossip", "--without-heartbeat", f"--hostname=sentinel-test-{os.getpid()}@%h"])


# -- the harness -----------------------------------------------------------------------------------------


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class CeleryWorker:
    """A ``celery worker`` process (and its pool) on the module's database, and the app that sends to it."""

    def __init__(self, dsn: str, log: Path) -> None:
        self.dsn = dsn
        self.log = log
        # The page's app in this process: it sends the page's task and the test tasks (by name).
        self.scope: Dict[str, Any] = {"__name__": TASK_MODULE, "provider": _NoProvider()}
        exec(compile(app_source(dsn), "docs/celery.md", "exec"), self.scope)
        self.app = self.scope["app"]
        assert self.app.AsyncResult("warm-up").state == "PENDING"  # makes the result table before the worker may
        env = {**os.environ, "SENTINEL_CELERY_DSN": dsn, "PYTHONPATH": str(ROOT / "python")}
        with open(log, "wb") as out:  # the worker writes its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, __file__, "worker"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, 60, "the celery worker to start")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the celery worker exited with {self.proc.returncode}:\n{self.text()}")
        return " ready." in self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def send(self, name: str, *args: Any, task_id: Optional[str] = None, **kwargs: Any) -> Any:
        return self.app.send_task(name, args=args, kwargs=kwargs, task_id=task_id)

    def runs(self, tag: str) -> List[Tuple[int, int]]:
        """``(run id, pid)`` of each run of the body for ``tag``."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return [(r[0], r[1]) for r in conn.execute("select id, pid from celery_runs where tag = %s order by id",
                                                        (tag,))]

    def release(self, tag: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("insert into celery_release (tag) values (%s)", (tag,))

    def stop(self) -> None:
        """Warm shutdown of the worker (SIGTERM); SIGKILL to its process group if it is still there after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


@pytest.fixture(scope="module")
def celery_db(server_dsn: str) -> Iterator[str]:
    """A database of its own: the Sentinel schema, the broker's and the results' tables, the tasks' tables."""
    import pgserver

    name = f"sentinel_celery_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    dsn = pgserver.with_dbname(server_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute(TABLES)
    yield dsn
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def worker(celery_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    w = CeleryWorker(celery_db, tmp_path_factory.mktemp("celery") / "worker.log")
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def ops(celery_db: str) -> Iterator[sentinel.Operations]:
    with sentinel.Operations(conninfo=celery_db, namespace=NAMESPACE) as o:
        yield o


def _tag() -> str:
    return uuid.uuid4().hex[:12]


# -- with the worker --------------------------------------------------------------------------------------


def test_a_message_delivered_twice_runs_the_body_once_and_replays(worker: CeleryWorker,
                                                                    ops: sentinel.Operations) -> None:
    tag, task_id = _tag(), str(uuid.uuid4())
    first = worker.send("sentinel_test.by_id", tag, task_id=task_id)
    value = first.get(timeout=30)
    assert value == {"tag": tag, "run": worker.runs(tag)[0][0], "runs": 1}
    first.forget()  # the same message again: the next result stored under this id is the second delivery's
    second = worker.send("sentinel_test.by_id", tag, task_id=task_id)
    assert second.get(timeout=30) == value
    assert len(worker.runs(tag)) == 1, "the body ran again for a redelivered message"
    key = f"celery:sentinel_test.by_id:{task_id}"
    record = ops.inspect(key)
    assert record is not None and record["state"] == "completed" and record["attempt"] == 1
    assert f"sentinel_test.by_id[{task_id}]: {NAMESPACE}/{key} already completed" in worker.text()


def test_a_duplicate_delivered_while_the_first_runs_retries_then_replays(worker: CeleryWorker) -> None:
    tag = _tag()
    first = worker.send("sentinel_test.by_key", tag, hold=True)
    wait_until(lambda: worker.runs(tag), 30, "the first delivery's body to start")
    duplicate = worker.send("sentinel_test.by_key", tag, hold=True)  # another task id, the same key
    wait_until(lambda: duplicate.state == "RETRY", 30, "the duplicate to find the key running and retry")
    assert len(worker.runs(tag)) == 1
    worker.release(tag)
    value = first.get(timeout=30)
    assert duplicate.get(timeout=30) == value == {"tag": tag, "run": worker.runs(tag)[0][0], "runs": 1}
    assert len(worker.runs(tag)) == 1, "the duplicate ran the body"
    assert f"{NAMESPACE}/by-key-{tag} is running in another worker; retrying later" in worker.text()


def test_a_worker_killed_mid_task_is_not_run_again_and_reports_uncertain(worker: CeleryWorker,
                                                                          ops: sentinel.Operations) -> None:
    tag, task_id = _tag(), str(uuid.uuid4())
    key = f"celery:sentinel_test.hang:{task_id}"
    sent = worker.send("sentinel_test.hang", tag, task_id=task_id)
    ((_, pid),) = wait_until(lambda: worker.runs(tag), 30, "the body to start in a pool process")
    os.kill(pid, signal.SIGKILL)  # mid-task: acks_late + reject_on_worker_lost put the message back

    with pytest.raises(TaskOutcomeUncertain) as raised:
        sent.get(timeout=40)
    assert (raised.value.namespace, raised.value.key) == (NAMESPACE, key)
    assert len(worker.runs(tag)) == 1, "the redelivered message ran the body again"
    log = worker.text()
    assert log.count(f"Task sentinel_test.hang[{task_id}] received") >= 2, "the message was not redelivered"
    assert (f"record it with `sentinel reconcile {key} --namespace {NAMESPACE} --as completed --response JSON "
            f"--reason TEXT` or, if it did not, `sentinel reconcile {key} --namespace {NAMESPACE} --release "
            "--reason TEXT`") in log
    record = ops.inspect(key)
    assert record is not None and record["state"] == "uncertain"

    # The operator finds that it happened and records it; the next delivery returns that, still not running.
    ops.reconcile(key, action="completed", response={"tag": tag, "reconciled": True}, actor="ops@test",
                  reason="the effect was found")
    sent.forget()
    again = worker.send("sentinel_test.hang", tag, task_id=task_id)
    assert again.get(timeout=30) == {"tag": tag, "reconciled": True}
    assert len(worker.runs(tag)) == 1


def test_a_body_that_raised_is_recorded_failed_and_runs_again_on_retry(worker: CeleryWorker,
                                                                       ops: sentinel.Operations) -> None:
    tag, task_id = _tag(), str(uuid.uuid4())
    key = f"celery:sentinel_test.flaky:{task_id}"
    assert worker.send("sentinel_test.flaky", tag, task_id=task_id).get(timeout=30) == {"tag": tag, "runs": 2}
    assert len(worker.runs(tag)) == 2
    record = ops.inspect(key)
    assert record is not None and record["state"] == "completed" and record["attempt"] == 2
    transitions = [e["to_state"] for e in ops.events(key)]
    assert transitions.count("failed") == 1 and transitions[-1] == "completed", transitions
    assert transitions.index("failed") < len(transitions) - 1


def test_the_pages_examples_run_as_written(worker: CeleryWorker, celery_db: str) -> None:
    python = _blocks("python")
    scope = worker.scope
    exec(compile(python[1], "docs/celery.md (calling)", "exec"), scope)
    with psycopg.connect(celery_db, autocommit=True) as conn:
        charges = conn.execute("select idempotency_key from celery_charges").fetchall()
    assert charges == [("order-17",)], "order 17 was charged more or less than once"

    # Order 18's charge started and its worker died: an execution under a fence whose outcome is unknown.
    with psycopg.connect(celery_db, autocommit=True) as conn:
        row = conn.execute("select fence from sentinel.acquire_v2(%s, 'charge-order-18', 'worker-1', 60000)",
                           (NAMESPACE,)).fetchone()
        assert row is not None
        conn.execute("select sentinel.abandon_v1(%s, 'charge-order-18', %s, 'worker killed')", (NAMESPACE, row[0]))
    delivery = scope["charge"].delay(18, 4500)
    with pytest.raises(TaskOutcomeUncertain):
        delivery.get(timeout=30)
    shown = next(b for b in _blocks("") if " is uncertain: " in b).strip()
    shown = re.sub(r"^\[[^\]]*\] ", "", shown)  # Celery's prefix: the time and the process
    shown = re.sub(r"\[[0-9a-f-]{36}\]", f"[{delivery.id}]", shown)
    shown = re.sub(r"fence \d+", f"fence {row[0]}", shown)
    assert shown in worker.text(), "the log line docs/celery.md shows is not what the worker logs"

    out = io.StringIO()
    source = python[2].replace(DOC_CONNINFO, repr(celery_db))
    with contextlib.redirect_stdout(out):
        exec(compile(source, "docs/celery.md (reconcile)", "exec"), scope)
    printed = next(b for b in _blocks("") if b.startswith("{'order_id': 18"))
    assert out.getvalue() == printed
    with psycopg.connect(celery_db, autocommit=True) as conn:
        assert conn.execute("select count(*) from celery_charges where idempotency_key = 'order-18'"
                            ).fetchone() == (0,)


# -- in this process (apply()) ----------------------------------------------------------------------------


@pytest.fixture
def eager_app(celery_db: str, namespace: str) -> Iterator[Any]:
    """An app whose tasks run here with ``apply()``, on the module's database in a namespace of its own."""
    app = celery.Celery(f"eager-{uuid.uuid4().hex[:8]}", set_as_current=False)
    configure(app, conninfo=celery_db, namespace=namespace)
    yield app
    get_sentinel(app).close()


def _noop() -> None:
    """A task body."""


def _echo(x: int) -> Dict[str, int]:
    """A task body."""
    return {"x": x}


def test_options_are_checked_when_the_task_is_made(eager_app: Any) -> None:
    eager_app.finalize()  # a finalized app makes each task at once
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sentinel_ttl'\]; SentinelTask reads"):
        eager_app.task(base=SentinelTask, sentinel_ttl=5)(_noop)
    with pytest.raises(TypeError, match="sentinel_key must be a callable"):
        eager_app.task(base=SentinelTask, sentinel_key="order-17")(_noop)
    with pytest.raises(TypeError, match="sentinel_ttl_ms must be an int of milliseconds >= 1"):
        eager_app.task(base=SentinelTask, sentinel_ttl_ms=0)(_noop)
    with pytest.raises(TypeError, match="sentinel_permanent must be a tuple of exception classes"):
        eager_app.task(base=SentinelTask, sentinel_permanent=ValueError)(_noop)
    with pytest.raises(TypeError, match="sentinel_retry_countdown must be seconds"):
        class Subclass(SentinelTask):  # type: ignore[misc]
            sentinel_retry_countdown = -1


def test_configure_with_a_factory_and_its_errors(eager_app: Any, celery_db: str, namespace: str) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'conninf'.*keyword arguments of sentinel"):
        configure(eager_app, conninf="postgresql://")
    with pytest.raises(TypeError, match="either factory= or the Sentinel options"):
        configure(eager_app, factory=lambda: None, namespace="x")  # type: ignore[arg-type, return-value]
    built: List[sentinel.Sentinel] = []

    def factory() -> sentinel.Sentinel:
        built.append(sentinel.Sentinel(conninfo=celery_db, namespace=namespace))
        return built[-1]

    configure(eager_app, factory=factory)
    echo = eager_app.task(base=SentinelTask, name="factory.echo")(_echo)
    assert echo.apply((5,)).get() == {"x": 5} and echo.apply((6,)).get() == {"x": 6}
    assert built == [get_sentinel(eager_app)], "one client per process, built by the factory"
    configure(eager_app, factory=lambda: "not a client")  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="returned str, not a sentinel.Sentinel"):
        echo.apply((7,), throw=True)
    configure(eager_app, conninfo=celery_db, namespace=namespace)  # what the fixture closes
    bare = celery.Celery("bare", set_as_current=False)
    task = bare.task(base=SentinelTask, name="bare.noop")(_noop)
    with pytest.raises(NotConfigured, match=r"configure\(app, conninfo=\.\.\., namespace=\.\.\.\)"):
        task.apply(throw=True)


def test_a_direct_call_needs_a_key(eager_app: Any, namespace: str) -> None:
    unkeyed = eager_app.task(base=SentinelTask, name="direct.unkeyed")(_echo)
    with pytest.raises(sentinel.InvalidKey, match="called directly, without a task id"):
        unkeyed(1)
    keyed = eager_app.task(base=SentinelTask, name="direct.keyed", sentinel_key=lambda x: f"direct-{x}")(_echo)
    assert keyed(1) == {"x": 1} and keyed(1) == {"x": 1}
    record = get_sentinel(eager_app).inspect("direct-1")
    assert record is not None and record["state"] == "completed" and record["attempt"] == 1


def test_a_permanent_failure_is_replayed_not_run_again(eager_app: Any) -> None:
    calls: List[int] = []

    @eager_app.task(base=SentinelTask, name="eager.declined", sentinel_permanent=(LookupError,))
    def declined(order_id: int) -> None:
        calls.append(order_id)
        raise LookupError("card declined")

    first = declined.apply((17,))
    assert isinstance(first.result, LookupError)
    second = declined.apply((17,), task_id=first.id)
    assert isinstance(second.result, TaskPermanentFailure) and "card declined" in str(second.result)
    assert calls == [17]


def test_a_key_reused_with_other_arguments_is_refused(eager_app: Any, namespace: str) -> None:
    calls: List[int] = []

    @eager_app.task(base=SentinelTask, name="eager.mismatch", sentinel_key=lambda order_id: "order")
    def pay(order_id: int) -> int:
        calls.append(order_id)
        return order_id

    assert pay.apply((1,)).get() == 1
    refused = pay.apply((2,)).result
    assert isinstance(refused, TaskKeyMismatch) and (refused.namespace, refused.key) == (namespace, "order")
    assert "first used with other arguments" in str(refused) and calls == [1]

    @eager_app.task(base=SentinelTask, name="eager.unchecked", sentinel_key=lambda order_id: "unchecked",
                    sentinel_fingerprint=False)
    def unchecked(order_id: int) -> int:
        calls.append(order_id)
        return order_id

    assert unchecked.apply((3,)).get() == 3 and unchecked.apply((4,)).get() == 3 and calls == [1, 3]


def test_a_key_running_elsewhere_retries_until_max_retries_then_fails(eager_app: Any, celery_db: str,
                                                                      namespace: str) -> None:
    started, release = threading.Event(), threading.Event()
    holder = sentinel.Sentinel(conninfo=celery_db, namespace=namespace, fingerprints=False)

    def hold() -> str:
        started.set()
        assert release.wait(30)
        return "held"

    thread = threading.Thread(target=lambda: holder.once("busy", hold, ttl_ms=3000, hard_ttl_ms=60_000))
    thread.start()
    calls: List[int] = []

    @eager_app.task(base=SentinelTask, name="eager.busy", max_retries=2, sentinel_retry_countdown=0,
                    sentinel_key=lambda: "busy", sentinel_fingerprint=False)
    def busy() -> int:
        calls.append(1)
        return 1

    try:
        assert started.wait(30), "the other worker never started"
        refused = busy.apply().result
        assert isinstance(refused, TaskInProgress) and refused.key == "busy", refused
        assert calls == []
    finally:
        release.set()
        thread.join(30)
        holder.close()
    assert busy.apply().get() == "held" and calls == []


def test_a_probe_resolves_an_uncertain_key(eager_app: Any, celery_db: str, namespace: str) -> None:
    with psycopg.connect(celery_db, autocommit=True) as conn:
        row = conn.execute("select fence from sentinel.acquire_v2(%s, 'probed', 'worker-1', 60000)",
                           (namespace,)).fetchone()
        assert row is not None
        conn.execute("select sentinel.abandon_v1(%s, 'probed', %s, 'worker killed')", (namespace, row[0]))
    asked: List[str] = []

    def probe(info: sentinel.UncertainKey) -> sentinel.ProbeAnswer:
        asked.append(info.key)
        return sentinel.Happened({"found": info.key})

    @eager_app.task(base=SentinelTask, name="eager.probed", sentinel_key=lambda: "probed", sentinel_on_uncertain=probe)
    def probed() -> None:
        raise AssertionError("the body ran for a key the probe found done")

    assert probed.apply().get() == {"found": "probed"} and asked == ["probed"]


def test_a_database_out_of_reach_retries_and_never_runs_the_body(namespace: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = celery.Celery("unreachable", set_as_current=False)
    configure(app, conninfo=f"host=127.0.0.1 port={port} user=nobody dbname=nothing connect_timeout=2",
              namespace=namespace)
    calls: List[int] = []

    @app.task(base=SentinelTask, name="eager.unreachable", max_retries=2, sentinel_retry_countdown=0)
    def work(x: int) -> int:
        calls.append(x)
        return x

    with caplog.at_level("WARNING", logger="sentinel.contrib.celery"):
        result = work.apply((1,))
    get_sentinel(app).close()
    assert isinstance(result.result, sentinel.DatabaseUnavailable)
    assert calls == []
    assert sum("nothing ran, retrying" in r.getMessage() for r in caplog.records) == 3  # the call and 2 retries


def test_the_exceptions_are_rebuilt_from_their_args() -> None:
    """What a result backend does: JSON keeps ``args`` and calls ``cls(*args)``; pickle does the same."""
    for cls in (TaskOutcomeUncertain, TaskInProgress, TaskPermanentFailure):
        exc = cls("shop/k: message", "shop", "k", result=None)
        for rebuilt in (cls(*exc.args), pickle.loads(pickle.dumps(exc))):
            assert (str(rebuilt), rebuilt.namespace, rebuilt.key) == ("shop/k: message", "shop", "k")
    mismatch = TaskKeyMismatch("shop/k: reused", "shop", "k")
    rebuilt_mismatch = TaskKeyMismatch(*mismatch.args)
    assert (str(rebuilt_mismatch), rebuilt_mismatch.namespace, rebuilt_mismatch.key) == ("shop/k: reused", "shop", "k")
    assert issubclass(TaskOutcomeUncertain, sentinel.OutcomeUncertain)


def _child_uses_the_app(app: Any, parent_client_id: int, key: str, out: Any) -> None:
    client = get_sentinel(app)
    result = client.once(key, lambda: {"pid": os.getpid()})
    out.put((id(client) != parent_client_id, client is get_sentinel(app), result.response))


def test_each_process_builds_its_own_client(eager_app: Any) -> None:
    parent = get_sentinel(eager_app)
    assert get_sentinel(eager_app) is parent
    parent.once("parent-key", lambda: 1)  # the parent used its client (a connection, a heartbeat) before forking
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_uses_the_app, args=(eager_app, id(parent), "child-key", out))
    child.start()
    fresh, stable, response = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert fresh and stable and response["pid"] == child.pid
    assert parent.once("parent-key", lambda: 2).response == 1  # the parent's client still works


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python tests/test_celery.py worker  (run by the tests, with SENTINEL_CELERY_DSN set)")
    _worker_main()

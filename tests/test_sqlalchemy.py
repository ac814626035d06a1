"""``sentinel.contrib.sqlalchemy``: the claim, the ORM writes and the response in one SQLAlchemy transaction.

Against a real PostgreSQL through SQLAlchemy's ``postgresql+psycopg`` driver,
sync (``Session``, ``Connection``) and async (``AsyncSession``): the commit
path, a block rolled back after the claim (nothing recorded, the key runs
again), a rollback of the caller's own transaction, replays, and a concurrent
second caller that waits on the first transaction's row lock (seen in
``pg_locks``) and then replays it, or claims the key after a rollback. The
docs page's examples run as written.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import types
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, String, create_engine, func, insert, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sentinel import AsyncSentinel, Sentinel, SentinelError
from sentinel.contrib.sqlalchemy import async_transaction, transaction
from workers import wait_until

ROOT = Path(__file__).resolve().parent.parent
TABLE = f"sa_payments_{uuid.uuid4().hex[:8]}"


class Base(DeclarativeBase):
    pass


class Payment(Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    order_key: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int]


def sqlalchemy_url(dsn: str, driver: str = "postgresql+psycopg") -> URL:
    """The SQLAlchemy URL of a libpq DSN (key=value or URI)."""
    p = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    host, port = p.get("host"), p.get("port")
    if host is not None and host.startswith("/"):  # a socket directory: libpq reads it from the query
        query = {"host": host, **({"port": port} if port else {})}
        return URL.create(driver, username=p.get("user"), password=p.get("password") or None,
                          database=p.get("dbname"), query=query)
    return URL.create(driver, username=p.get("user"), password=p.get("password") or None, host=host,
                      port=int(port) if port else None, database=p.get("dbname"))


@pytest.fixture(scope="module")
def engine(dsn: str) -> Iterator[Engine]:
    eng = create_engine(sqlalchemy_url(dsn))
    Base.metadata.create_all(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


@pytest.fixture
def s(dsn: str, namespace: str) -> Iterator[Sentinel]:
    client = Sentinel(conninfo=dsn, namespace=namespace)
    yield client
    client.close()


def payments(dsn: str, namespace: str, key: Optional[str] = None) -> List[Any]:
    """The committed payment rows of a namespace (and key), read on a connection of their own."""
    with psycopg.connect(dsn, autocommit=True) as c:
        q = f"select order_key, amount from {TABLE} where namespace = %s"
        params: List[Any] = [namespace]
        if key is not None:
            q += " and order_key = %s"
            params.append(key)
        return [tuple(r) for r in c.execute(q + " order by id", params).fetchall()]


def record(dsn: str, namespace: str, key: str) -> Optional[Dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
        row = cur.fetchone()
        return None if row is None else dict(zip([d.name for d in cur.description or []], row))


def pay(s: Sentinel, session: Session, namespace: str, key: str, amount: int) -> Any:
    """One payment through transaction(): the ORM write, then the response."""
    with transaction(s, key, session) as tx:
        if tx.acquired:
            p = Payment(namespace=namespace, order_key=key, amount=amount)
            session.add(p)
            session.flush()
            tx.complete({"payment_id": p.id, "amount": amount})
    return tx


def lock_waiters(dsn: str) -> int:
    """Sessions of the test database waiting for a lock on a Sentinel record (a claimed, uncommitted key)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
            " and query ilike '%sentinel.acquire%'"
        ).fetchone()
        return int(row[0]) if row else 0


# -- sync ------------------------------------------------------------------------------------------


def test_commit_path_records_the_claim_the_writes_and_the_response_together(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    with Session(engine) as session:
        with transaction(s, "order-1", session) as tx:
            assert tx.acquired and not tx.replayed
            # not flushed by the caller: the block flushes the session before its savepoint is released
            session.add(Payment(namespace=namespace, order_key="order-1", amount=9900))
            tx.complete({"amount": 9900})
        assert not session.in_transaction(), "the block began the session's transaction, so it committed it"
    assert payments(dsn, namespace) == [("order-1", 9900)]
    rec = record(dsn, namespace, "order-1")
    assert rec is not None and rec["state"] == "completed" and rec["response"] == {"amount": 9900}


def test_replay_runs_nothing_and_returns_the_recorded_response(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    with Session(engine) as session:
        first = pay(s, session, namespace, "order-2", 500)
    with Session(engine) as session:
        again = pay(s, session, namespace, "order-2", 500)
    assert first.acquired and not first.replayed
    assert again.replayed and not again.acquired and again.response == first.response
    assert payments(dsn, namespace) == [("order-2", 500)]


def test_writes_rolled_back_after_the_claim_leave_nothing_and_the_key_runs_again(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    with Session(engine) as session:
        with pytest.raises(RuntimeError, match="card declined"):
            with transaction(s, "order-3", session) as tx:
                assert tx.acquired
                session.add(Payment(namespace=namespace, order_key="order-3", amount=1))
                session.flush()
                # the claim and the flushed row exist in this transaction now
                raise RuntimeError("card declined")
        assert not session.new, "the objects added in the block were expunged with its savepoint"
    assert payments(dsn, namespace) == []
    assert record(dsn, namespace, "order-3") is None, "the claim rolled back with the writes"
    with Session(engine) as session:
        retried = pay(s, session, namespace, "order-3", 2)
    assert retried.acquired and retried.response["amount"] == 2
    assert payments(dsn, namespace) == [("order-3", 2)]
    assert record(dsn, namespace, "order-3")["state"] == "completed"  # type: ignore[index]


def test_inside_the_callers_transaction_it_commits_or_rolls_back_with_it(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    with Session(engine) as session:
        session.begin()
        tx = pay(s, session, namespace, "order-4", 10)
        assert tx.acquired and session.in_transaction(), "a savepoint of the caller's transaction"
        assert record(dsn, namespace, "order-4") is None, "not visible before the caller commits"
        session.rollback()  # the caller's own transaction fails after the block
    assert payments(dsn, namespace) == [] and record(dsn, namespace, "order-4") is None
    with Session(engine) as session, session.begin():
        tx = pay(s, session, namespace, "order-4", 11)
        assert tx.acquired
    assert payments(dsn, namespace) == [("order-4", 11)]
    assert record(dsn, namespace, "order-4")["response"]["amount"] == 11  # type: ignore[index]


def test_a_write_failing_at_the_blocks_flush_fails_the_block_not_the_callers_transaction(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    from sqlalchemy.exc import IntegrityError

    with Session(engine) as session, session.begin():
        with pytest.raises(IntegrityError):
            with transaction(s, "order-9", session) as tx:
                assert tx.acquired
                session.add(Payment(namespace=namespace, order_key="order-9", amount=None))  # NOT NULL, unflushed
                tx.complete({"ok": True})
        # the block's savepoint rolled back; the caller's transaction goes on and commits its own work
        session.add(Payment(namespace=namespace, order_key="after", amount=1))
    assert payments(dsn, namespace) == [("after", 1)]
    assert record(dsn, namespace, "order-9") is None, "the claim and the completion rolled back with the write"


def test_a_flush_failing_inside_the_block_rolls_back_the_claim_and_the_callers_transaction_goes_on(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    from sqlalchemy.exc import IntegrityError

    with Session(engine) as session, session.begin():
        with pytest.raises(IntegrityError):
            with transaction(s, "order-10", session) as tx:
                assert tx.acquired
                session.add(Payment(namespace=namespace, order_key="order-10", amount=None))
                session.flush()  # fails here, inside Sentinel's block
        session.add(Payment(namespace=namespace, order_key="after", amount=1))
    assert payments(dsn, namespace) == [("after", 1)]
    assert record(dsn, namespace, "order-10") is None
    with Session(engine) as session:
        assert pay(s, session, namespace, "order-10", 2).acquired


def test_a_block_that_acquired_and_did_not_complete_is_rolled_back(
        engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    with Session(engine) as session:
        with pytest.raises(SentinelError, match="did not call"):
            with transaction(s, "order-5", session) as tx:
                assert tx.acquired
                session.add(Payment(namespace=namespace, order_key="order-5", amount=1))
    assert payments(dsn, namespace) == [] and record(dsn, namespace, "order-5") is None


def test_a_core_connection_works_too(engine: Engine, s: Sentinel, dsn: str, namespace: str) -> None:
    table = Payment.__table__
    for _ in range(2):
        with engine.connect() as conn:
            with transaction(s, "order-6", conn) as tx:
                if tx.acquired:
                    conn.execute(insert(table).values(namespace=namespace, order_key="order-6", amount=6))
                    n = conn.execute(select(func.count()).select_from(table)
                                     .where(table.c.namespace == namespace)).scalar_one()
                    tx.complete({"rows": n})
            assert not conn.in_transaction()
    assert tx.replayed and tx.response == {"rows": 1}
    assert payments(dsn, namespace) == [("order-6", 6)]


def test_the_engines_json_deserializer_does_not_change_the_replay(
        dsn: str, s: Sentinel, namespace: str) -> None:
    odd = create_engine(sqlalchemy_url(dsn), json_deserializer=lambda text: "not the recorded value")
    try:
        for _ in range(2):
            with Session(odd) as session:
                tx = pay(s, session, namespace, "order-7", 7)
        assert tx.replayed and tx.response["amount"] == 7
    finally:
        odd.dispose()


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-rolls-back"])
def test_a_concurrent_second_caller_waits_for_the_first_transaction(
        engine: Engine, s: Sentinel, dsn: str, namespace: str, first_commits: bool) -> None:
    claimed, release = threading.Event(), threading.Event()
    outcome: Dict[str, Any] = {}

    def first() -> None:
        try:
            with Session(engine) as session:
                with transaction(s, "order-8", session) as tx:
                    assert tx.acquired
                    session.add(Payment(namespace=namespace, order_key="order-8", amount=1))
                    session.flush()
                    tx.complete({"by": "first"})
                    claimed.set()
                    assert release.wait(30)
                    if not first_commits:
                        raise RuntimeError("rolled back")
            outcome["first"] = "committed"
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["first"] = exc

    def second() -> None:
        try:
            with Session(engine) as session:
                outcome["second"] = pay(s, session, namespace, "order-8", 2)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["second"] = exc

    t1 = threading.Thread(target=first)
    t1.start()
    assert claimed.wait(30)
    t2 = threading.Thread(target=second)
    t2.start()
    wait_until(lambda: lock_waiters(dsn) >= 1, 10, "the second caller to wait on the claim's row lock")
    assert "second" not in outcome, "the second caller must wait while the first transaction is open"
    release.set()
    t1.join(30)
    t2.join(30)
    second_tx = outcome["second"]
    assert not isinstance(second_tx, BaseException), second_tx
    if first_commits:
        assert outcome["first"] == "committed"
        assert second_tx.replayed and second_tx.response == {"by": "first"}
        assert payments(dsn, namespace) == [("order-8", 1)]
    else:
        assert isinstance(outcome["first"], RuntimeError)
        assert second_tx.acquired and second_tx.response["amount"] == 2
        assert payments(dsn, namespace) == [("order-8", 2)]


def test_bad_arguments_are_refused_with_the_fix(dsn: str, namespace: str, s: Sentinel, tmp_path: Path) -> None:
    lite = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with Session(lite) as session, pytest.raises(TypeError, match="postgresql\\+psycopg"):
            with transaction(s, "k", session):
                pass
    finally:
        lite.dispose()
    with pytest.raises(TypeError, match="Session or Connection"):
        with transaction(s, "k", object()):  # type: ignore[arg-type]
            pass

    async def wrong_client() -> None:
        a = AsyncSentinel(conninfo=dsn, namespace=namespace)
        try:
            with pytest.raises(TypeError, match="async_transaction"):
                with transaction(a, "k", Session()):  # type: ignore[arg-type]
                    pass
            with pytest.raises(TypeError, match="AsyncSentinel"):
                async with async_transaction(s, "k", AsyncSession()):  # type: ignore[arg-type]
                    pass
        finally:
            await a.close()

    asyncio.run(wrong_client())


# -- async -----------------------------------------------------------------------------------------


def async_engine(dsn: str) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(dsn))


async def apay(s: AsyncSentinel, session: AsyncSession, namespace: str, key: str, amount: int) -> Any:
    async with async_transaction(s, key, session) as tx:
        if tx.acquired:
            p = Payment(namespace=namespace, order_key=key, amount=amount)
            session.add(p)
            await session.flush()
            await tx.complete({"payment_id": p.id, "amount": amount})
    return tx


def arun(make: Callable[[], Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(make(), 60)

    return asyncio.run(bounded())


def test_async_commit_replay_rollback_and_retry(engine: Engine, dsn: str, namespace: str) -> None:
    async def main() -> None:
        eng = async_engine(dsn)
        s = AsyncSentinel(conninfo=dsn, namespace=namespace)
        try:
            async with AsyncSession(eng) as session:
                async with async_transaction(s, "a-1", session) as tx:
                    assert tx.acquired
                    session.add(Payment(namespace=namespace, order_key="a-1", amount=100))  # flushed by the block
                    await tx.complete({"amount": 100})
                assert not session.in_transaction()
            assert payments(dsn, namespace) == [("a-1", 100)]
            async with AsyncSession(eng) as session:
                again = await apay(s, session, namespace, "a-1", 100)
            assert again.replayed and again.response == {"amount": 100}
            assert payments(dsn, namespace) == [("a-1", 100)]

            async with AsyncSession(eng) as session:
                with pytest.raises(RuntimeError, match="declined"):
                    async with async_transaction(s, "a-2", session) as tx:
                        assert tx.acquired
                        session.add(Payment(namespace=namespace, order_key="a-2", amount=1))
                        await session.flush()
                        raise RuntimeError("declined")
            assert payments(dsn, namespace, "a-2") == [] and record(dsn, namespace, "a-2") is None
            async with AsyncSession(eng) as session:
                retried = await apay(s, session, namespace, "a-2", 3)
            assert retried.acquired and payments(dsn, namespace, "a-2") == [("a-2", 3)]

            from sqlalchemy.exc import IntegrityError

            async with AsyncSession(eng) as session, session.begin():
                with pytest.raises(IntegrityError):
                    async with async_transaction(s, "a-5", session) as tx:
                        assert tx.acquired
                        session.add(Payment(namespace=namespace, order_key="a-5", amount=None))
                        await session.flush()  # fails inside the block
                session.add(Payment(namespace=namespace, order_key="a-after", amount=5))
            assert payments(dsn, namespace, "a-5") == [] and record(dsn, namespace, "a-5") is None
            assert payments(dsn, namespace, "a-after") == [("a-after", 5)]

            async with eng.connect() as conn:  # an AsyncConnection
                async with async_transaction(s, "a-3", conn) as tx:
                    assert tx.acquired
                    await conn.execute(insert(Payment.__table__).values(namespace=namespace, order_key="a-3",
                                                                         amount=4))
                    await tx.complete({"ok": True})
            assert payments(dsn, namespace, "a-3") == [("a-3", 4)]
        finally:
            await s.close()
            await eng.dispose()

    arun(main)


def test_async_concurrent_second_caller_waits_then_replays(engine: Engine, dsn: str, namespace: str) -> None:
    async def main() -> None:
        eng = async_engine(dsn)
        s = AsyncSentinel(conninfo=dsn, namespace=namespace)
        claimed, release = asyncio.Event(), asyncio.Event()

        async def first() -> Any:
            async with AsyncSession(eng) as session:
                async with async_transaction(s, "a-4", session) as tx:
                    assert tx.acquired
                    session.add(Payment(namespace=namespace, order_key="a-4", amount=1))
                    await tx.complete({"by": "first"})
                    claimed.set()
                    await release.wait()
            return tx

        async def second() -> Any:
            async with AsyncSession(eng) as session:
                return await apay(s, session, namespace, "a-4", 2)

        try:
            t1 = asyncio.ensure_future(first())
            await claimed.wait()
            t2 = asyncio.ensure_future(second())
            while lock_waiters(dsn) < 1:  # the second session's acquire waits on the claim's row lock
                assert not t2.done(), t2
                await asyncio.sleep(0.02)
            assert not t2.done()
            release.set()
            one, two = await asyncio.gather(t1, t2)
            assert one.acquired and two.replayed and two.response == {"by": "first"}
            assert payments(dsn, namespace) == [("a-4", 1)]
        finally:
            await s.close()
            await eng.dispose()

    arun(main)


# -- the docs page ---------------------------------------------------------------------------------


def _python_blocks(path: Path) -> List[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def test_the_docs_examples_run_as_written(dsn: str, namespace: str) -> None:
    """Each block of docs/sqlalchemy.md runs as printed; only the addresses and the table name change."""
    blocks = _python_blocks(ROOT / "docs" / "sqlalchemy.md")
    assert len(blocks) >= 2, "docs/sqlalchemy.md lost its examples"
    table = f"payments_{uuid.uuid4().hex[:8]}"
    url = sqlalchemy_url(dsn).render_as_string(hide_password=False)
    module = types.ModuleType(f"docs_sqlalchemy_{uuid.uuid4().hex[:8]}")  # the ORM resolves annotations there
    sys.modules[module.__name__] = module
    scope: Dict[str, Any] = module.__dict__
    try:
        for n, block in enumerate(blocks):
            code = (block.replace('"postgresql+psycopg://app@db/shop"', repr(url))
                    .replace('"postgresql://app@db/shop"', repr(dsn))
                    .replace('namespace="shop"', f'namespace="{namespace}"')
                    .replace('"payments"', repr(table)))
            assert code != block, f"block {n + 1} of docs/sqlalchemy.md names no address to replace"
            exec(compile(code, f"docs/sqlalchemy.md (python block {n + 1})", "exec"), scope)
        with psycopg.connect(dsn, autocommit=True) as c:
            rows = c.execute(f"select order_id, amount from {table} order by id").fetchall()
        assert [tuple(r) for r in rows] == [(789, 9900), (790, 4500)], "each order paid once"
        assert record(dsn, namespace, "payment-order-789")["state"] == "completed"  # type: ignore[index]
    finally:
        if isinstance(scope.get("s"), Sentinel):
            scope["s"].close()
        for name in ("engine",):
            if scope.get(name) is not None:
                scope[name].dispose()
        sys.modules.pop(module.__name__, None)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"drop table if exists {table}")


"""Bad input gets a clear error before anything runs, and nothing is half-written."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, List

import psycopg
import pytest

import sentinel
from sentinel import (
    DatabaseUnavailable,
    ExecutionNotFound,
    InvalidKey,
    InvalidNamespace,
    InvalidOption,
    InvalidText,
    InvalidTTL,
    ReconcileRefused,
    ResultNotSerializable,
    TransactionInProgress,
)


def _never(*_: Any, **__: Any) -> None:
    raise AssertionError("the function must not run")


def _no_record(client: sentinel.Sentinel, key: Any = None) -> None:
    """Nothing at all was written in the client's namespace."""
    assert client.list() == [], "a record was written"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty"),
        ("a\x00b", "NUL"),
        ("x" * 1025, "1025 bytes"),
        ("€" * 342, "1026 bytes"),  # 342 characters, 1026 bytes in UTF-8
        (42, "must be a str"),
        (None, "must be a str"),
    ],
)
def test_bad_keys(client: sentinel.Sentinel, key: Any, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        client.once(key, _never)
    _no_record(client)


def test_longest_key_is_accepted(client: sentinel.Sentinel) -> None:
    key = "€" * 341 + "k"  # 1024 bytes
    assert client.once(key, lambda: "ok").response == "ok"
    assert client.once(key, _never).replayed


@pytest.mark.parametrize("ns", ["", "Payments", "-x", "a" * 64, "a b", "ä", 7])
def test_bad_namespaces(dsn: str, ns: Any) -> None:
    with pytest.raises(InvalidNamespace, match="namespace"):
        sentinel.Sentinel(conninfo=dsn, namespace=ns)


@pytest.mark.parametrize(
    ("ttl", "hard", "message"),
    [
        (0, None, "ttl_ms must be between"),
        (-5, None, "ttl_ms must be between"),
        (2_592_000_001, None, "ttl_ms must be between"),
        (1000, 999, "hard_ttl_ms"),
        (1000, 0, "hard_ttl_ms"),
        (1.5, None, "int number of milliseconds"),
        (True, None, "int number of milliseconds"),
        ("1000", None, "int number of milliseconds"),
    ],
)
def test_bad_ttls(client: sentinel.Sentinel, ttl: Any, hard: Any, message: str) -> None:
    with pytest.raises(InvalidTTL, match=message):
        client.once("ttl-key", _never, ttl_ms=ttl, hard_ttl_ms=hard)
    _no_record(client, "ttl-key")


def test_bad_default_ttl(dsn: str) -> None:
    with pytest.raises(InvalidTTL):
        sentinel.Sentinel(conninfo=dsn, default_ttl_ms=0)


def test_hard_ttl_defaults_to_ttl(client: sentinel.Sentinel) -> None:
    seen: List[Any] = []
    client.once("hard-default", lambda ctx: seen.append(ctx.hard_expires_at - ctx.claimed_at), ttl_ms=1234,
                pass_context=True)
    assert [d.total_seconds() for d in seen] == [1.234]


def test_non_callable_fn(client: sentinel.Sentinel) -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        client.once("k", "not a function")  # type: ignore[arg-type]
    _no_record(client, "k")


def test_bad_fingerprint(client: sentinel.Sentinel) -> None:
    with pytest.raises(InvalidText, match="fingerprint"):
        client.once("k", _never, fingerprint="")
    _no_record(client, "k")


def test_constructor_needs_exactly_one_source(dsn: str) -> None:
    with pytest.raises(TypeError, match="needs one of"):
        sentinel.Sentinel()
    with pytest.raises(TypeError, match="exactly one"):
        sentinel.Sentinel(lambda: psycopg.connect(dsn), conninfo=dsn)


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), b"bytes"])
def test_unserialisable_result_marks_uncertain_and_never_reruns(client: sentinel.Sentinel, value: Any) -> None:
    calls: List[int] = []

    def fn() -> Any:
        calls.append(1)
        return value

    with pytest.raises(ResultNotSerializable, match="could not be serialised") as info:
        client.once("charge", fn)
    assert info.value.value is value and info.value.recorded is True
    record = client.inspect("charge")
    assert record is not None and record["state"] == "uncertain"
    assert "not serialisable" in record["uncertain_reason"]
    again = client.once("charge", fn)
    assert again.uncertain and calls == [1]


def test_result_refused_by_jsonb_marks_uncertain(client: sentinel.Sentinel) -> None:
    calls: List[int] = []

    def fn() -> str:
        calls.append(1)
        return "nul \x00 inside"  # valid JSON text, but jsonb cannot store \u0000

    with pytest.raises(ResultNotSerializable, match="jsonb"):
        client.once("nul-result", fn)
    assert client.once("nul-result", fn).uncertain and calls == [1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_down_at_start_runs_nothing_get_conn() -> None:
    port = _closed_port()
    s = sentinel.Sentinel(lambda: psycopg.connect(f"host=127.0.0.1 port={port} connect_timeout=2"))
    with pytest.raises(DatabaseUnavailable, match="database unavailable"):
        s.once("k", _never)
    s.close()


def test_database_down_at_start_runs_nothing_conninfo() -> None:
    port = _closed_port()
    with sentinel.Sentinel(conninfo=f"host=127.0.0.1 port={port} connect_timeout=1", connect_timeout=1.0) as s:
        with pytest.raises(DatabaseUnavailable):
            s.once("k", _never)


def test_connection_inside_a_transaction_is_refused(dsn: str, namespace: str) -> None:
    def in_transaction() -> psycopg.Connection[Any]:
        c = psycopg.connect(dsn)
        c.execute("select 1")  # opens a transaction the caller still holds
        return c

    with sentinel.Sentinel(in_transaction, namespace=namespace) as s:
        with pytest.raises(TransactionInProgress, match="committed before the function runs"):
            s.once("k", _never)
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        assert s.inspect("k") is None


def test_sql_errors_map_to_classes(client: sentinel.Sentinel) -> None:
    with pytest.raises(ExecutionNotFound, match="no execution record"):
        client.reconcile("missing", action="release", actor="op", reason="test")
    client.once("done", lambda: 1)
    with pytest.raises(ReconcileRefused, match="force"):
        client.reconcile("done", action="release", actor="op", reason="test")
    with pytest.raises(InvalidOption, match="unknown reconcile action"):
        client.reconcile("done", action="explode", actor="op", reason="test")
    with pytest.raises(InvalidText, match="reason"):
        client.reconcile("done", action="release", actor="op", reason=" ")
    with pytest.raises(InvalidOption, match="unknown state"):
        client.list("running")
    assert client.inspect("done") is not None and client.inspect("done")["state"] == "completed"  # type: ignore[index]


def test_every_sqlstate_maps_to_one_class() -> None:
    from sentinel.errors import from_sqlstate

    codes = ["SN001", "SN002", "SN003", "SN004", "SN005", "SN006", "SN007", "SN008", "SN009", "SN011", "SN012", "SN013"]
    classes: List[Callable[..., Any]] = [from_sqlstate(c) for c in codes]  # type: ignore[misc]
    assert None not in classes and len(set(classes)) == len(codes)
    assert all(issubclass(c, sentinel.SentinelError) for c in classes)  # type: ignore[arg-type]


# -- an error in the caller's own SQL is the caller's error ---------------------


def test_transaction_typo_in_user_sql_is_not_a_schema_error(dsn: str, namespace: str) -> None:
    with psycopg.connect(dsn) as conn, sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        with pytest.raises(psycopg.errors.UndefinedTable) as caught:
            with s.transaction("typo", conn) as tx:
                conn.execute("insert into no_such_table_orders values (1)")
                tx.complete({"never": True})
        assert not isinstance(caught.value, sentinel.SchemaError)
        assert "no_such_table_orders" in str(caught.value)
        conn.rollback()
        assert s.inspect("typo") is None, "the claim was rolled back with the block"


def test_async_transaction_typo_in_user_sql_is_not_a_schema_error(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, \
                sentinel.AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            with pytest.raises(psycopg.errors.UndefinedTable) as caught:
                async with s.transaction("typo", conn) as tx:
                    await conn.execute("insert into no_such_table_orders values (1)")
                    await tx.complete({"never": True})
            assert not isinstance(caught.value, sentinel.SchemaError)
            await conn.rollback()
            assert await s.inspect("typo") is None

    asyncio.run(main())

"""The README's Python examples run as written: the schema install, then the quick start, as an app role."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(path: Path) -> List[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def test_the_readme_quick_start_runs_as_written(empty_db: Callable[[], str]) -> None:
    owner_dsn = empty_db()
    role, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    app_dsn = psycopg.conninfo.make_conninfo(owner_dsn, user=role, password=password)
    blocks = _python_blocks(ROOT / "README.md")
    quick_start = next(b for b in blocks if ".once(" in b)
    install = next(b for b in blocks if "init_db" in b)
    # The examples name a server of their own; only the addresses change.
    install = install.replace('"postgresql://owner@db/shop"', repr(owner_dsn))
    quick_start = quick_start.replace('"postgresql://app@db/shop"', repr(app_dsn))
    assert repr(owner_dsn) in install and repr(app_dsn) in quick_start, "the README's DSNs changed"

    exec(compile(install, "README.md (install)", "exec"), {})
    with psycopg.connect(owner_dsn, autocommit=True) as admin:  # what `sentinel grant app` does
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v1(%s)", (role,))
    try:
        runs: List[Dict[str, Any]] = []
        for _ in range(2):  # fresh, then replayed
            scope: Dict[str, Any] = {}
            exec(compile(quick_start, "README.md (quick start)", "exec"), scope)
            runs.append(scope)
            scope["s"].close()
        first, second = (r["result"] for r in runs)
        assert first.completed and not first.replayed and "receipt" in runs[0]
        assert second.completed and second.replayed and second.fence == first.fence
    finally:
        with psycopg.connect(owner_dsn, autocommit=True) as admin:
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")


class _Storage:
    """The downstream system of the guide's export example: it rejects a stale writer's fence."""

    def __init__(self) -> None:
        self.fences: List[int] = []

    def write(self, chunk: Any, *, fence: int) -> None:
        assert not self.fences or fence >= self.fences[-1], "a stale writer got through"
        self.fences.append(fence)


class _Provider:
    """The payment provider the failures page's probe asks: it knows one charge."""

    class _Charge:
        id, status = "ch_3Q9", "succeeded"

    def find_charge(self, *, idempotency_key: str) -> Any:
        return self._Charge() if idempotency_key == "payment-order-790" else None


def _uncertain(dsn: str, namespace: str, key: str) -> None:
    """An execution whose worker gave up mid-way: what the failures page's operator finds."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select fence from sentinel.acquire_v2(%s, %s, 'worker-1', 60000)", (namespace, key)).fetchone()
        assert row is not None
        c.execute("select sentinel.abandon_v1(%s, %s, %s, 'worker killed')", (namespace, key, row[0]))


def test_every_python_example_of_the_guide_and_the_failures_page_runs(dsn: str) -> None:
    """Each block runs as printed; only the DSN placeholder and the user's own systems are supplied."""
    import asyncio

    from psycopg_pool import ConnectionPool

    import sentinel as package

    namespace = f"docs-{uuid.uuid4().hex[:10]}"
    pool = ConnectionPool(dsn, min_size=1, max_size=2, open=True)
    client = package.Sentinel(conninfo=dsn, namespace=namespace)
    table = f"orders_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"create table {table} (id integer, amount integer)")
    storage = _Storage()
    charged: List[int] = []

    def charge(amount: int) -> Dict[str, Any]:
        charged.append(amount)
        return {"charge_id": f"ch_{len(charged)}", "amount": amount}

    scope: Dict[str, Any] = {
        "Sentinel": package.Sentinel, "psycopg": psycopg, "dsn": dsn, "my_psycopg_pool": pool,
        "s": client, "sentinel": package, "storage": storage, "batch": ["a", "b", "c"], "charge": charge,
        "provider": _Provider(),
    }
    try:
        probed = f"{namespace}-probe"  # the probe example meets payment-order-790 uncertain, in its own namespace
        for page in ("guide.md", "failures.md"):
            if page == "failures.md":
                for ns, key in ((namespace, "payment-order-790"), (namespace, "payment-order-791"),
                                (probed, "payment-order-790")):
                    _uncertain(dsn, ns, key)
                scope["Sentinel"] = lambda **kw: package.Sentinel(**{**kw, "namespace": probed})
            for n, block in enumerate(_python_blocks(ROOT / "docs" / page)):
                code = block.replace('"postgresql://…"', "dsn").replace("orders (id, amount)", f"{table} (id, amount)")
                if "await " in code:  # an asyncio example: as in an async function of the reader's
                    body = "".join(f"    {line}\n" for line in code.splitlines())
                    code = f"async def _example():\n{body}\n_asyncio.run(_example())\n"
                    scope["_asyncio"] = asyncio
                    scope["namespace"] = namespace
                exec(compile(code, f"docs/{page} (python block {n + 1})", "exec"), scope)
        # what the examples did, from the database
        assert storage.fences and client.inspect("export-2026-11")["state"] == "completed"
        assert client.inspect("order-17")["state"] == "completed"
        assert client.inspect("payment-order-790")["reconciled_by"] == "alice@ops"
        assert client.inspect("payment-order-791")["state"] == "failed"  # released: the next once() runs it
        by_probe = scope["s"].inspect("payment-order-790")
        assert by_probe["response"] == {"charge_id": "ch_3Q9"} and by_probe["reconciled_by"].startswith("probe:")
        assert charged == [9900], "only the asyncio example charges: the probe found the charge it asked about"
    finally:
        client.close()
        if isinstance(scope.get("s"), package.Sentinel) and scope["s"] is not client:
            scope["s"].close()
        pool.close()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"drop table {table}")


def _sql_blocks(path: Path) -> List[str]:
    return re.findall(r"^```sql\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def _types(params: str) -> List[str]:
    """The argument types of a signature as the docs print it: ``name type [default ...]`` each."""
    params = re.sub(r"--[^\n]*", "", params)
    out = []
    for part in filter(None, (p.strip() for p in params.split(","))):
        words = re.split(r"\s+default\s+", part, flags=re.I)[0].split()
        out.append(" ".join(words[1:]).lower())
    return out


def test_every_function_signature_in_the_protocol_reference_is_the_database_s(conn: psycopg.Connection[Any]) -> None:
    """docs/protocol.md prints each function's arguments: each must exist with exactly those types."""
    known = {(name, tuple(t.strip() for t in args.split(",") if t.strip()))
             for name, args in conn.execute(
                 "select p.proname, pg_get_function_identity_arguments(p.oid) from pg_proc p"
                 " where p.pronamespace = 'sentinel'::regnamespace").fetchall()}
    aliases = {"integer": "integer", "int": "integer", "bigint": "bigint", "boolean": "boolean", "text": "text",
               "jsonb": "jsonb", "timestamptz": "timestamp with time zone"}
    checked = 0
    for block in _sql_blocks(ROOT / "docs" / "protocol.md"):
        for name, params in re.findall(r"sentinel\.(\w+)\(([^()]*)\)\s*(?:returns|$|--)", block, re.M):
            arg_names = tuple(aliases.get(t, t) for t in _types(params))
            identity = tuple(f"{n} {t}" for n, t in zip(
                [p.split()[0] for p in filter(None, (x.strip() for x in re.sub(r"--[^\n]*", "", params).split(",")))],
                arg_names))
            assert (name, identity) in known, f"docs/protocol.md shows sentinel.{name}({', '.join(identity)})"
            checked += 1
    assert checked >= 20, checked


def test_the_sql_examples_of_operations_failures_and_guide_run(dsn: str) -> None:
    """The statements a reader copies run against an installed schema (pg_cron's wrapper: its statement)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        for r in ("app", "ops"):
            if not c.execute("select 1 from pg_roles where rolname = %s", (r,)).fetchone():
                c.execute(f"create role {r}")
        ran = 0
        for page in ("operations.md", "failures.md", "guide.md", "tenants.md"):
            for block in _sql_blocks(ROOT / "docs" / page):
                cron = re.search(r"cron\.schedule\([^$]*\$\$(.*?)\$\$", block, re.S)
                statement = cron.group(1) if cron else block
                c.execute(statement.encode())
                ran += 1
        assert ran == 6, ran

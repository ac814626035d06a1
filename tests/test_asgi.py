"""``sentinel.contrib.asgi``: Idempotency-Key for real Starlette and FastAPI applications on a real PostgreSQL.

The applications are driven through ``httpx.AsyncClient`` with
``httpx.ASGITransport``. Every protected handler writes one row per run to a
table of its own (its side effect), so "the handler ran once" is read from the
database. The concurrency test runs eight threads, each with its own event
loop, ``AsyncSentinel``, application and client (as eight workers would), all
sending one request with the same key at once; the first handler holds until
the seven others have been answered, so they really overlap it. Waits are on
database state, events or observed protocol events, each with a deadline.
"""

import asyncio
import contextlib
import io
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import psycopg
import pytest
from fastapi import Depends, FastAPI, Header, Request
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sentinel import AsyncSentinel, Event, Sentinel
from sentinel.contrib.asgi import (
    Claim,
    IdempotencyMiddleware,
    current_claim,
    idempotency_key,
    record_key,
)
from workers import wait_until

ROOT = Path(__file__).resolve().parent.parent
KEY = "Idempotency-Key"


# -- the applications ------------------------------------------------------------------------------


class HeaderAuth(AuthenticationBackend):
    """``Authorization: User <name>`` authenticates <name> (a test stand-in for real authentication)."""

    async def authenticate(self, conn: HTTPConnection) -> Optional[Tuple[AuthCredentials, SimpleUser]]:
        value = conn.headers.get("Authorization", "")
        if not value.startswith("User "):
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(value[5:])


class Shop:
    """A table of side effects: each run of a protected handler inserts one row."""

    def __init__(self, dsn: str, namespace: str) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.table = f"asgi_runs_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"create table {self.table} (id serial primary key, route text, body text)")

    async def ran(self, route: str, body: bytes) -> int:
        """Record one run; its row id."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as c:
            cur = await c.execute(f"insert into {self.table} (route, body) values (%s, %s) returning id",
                                  (route, body.decode("utf-8", "replace")))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    def runs(self, route: Optional[str] = None) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            q = f"select count(*) from {self.table}" + (" where route = %s" if route else "")
            row = c.execute(q, (route,) if route else ()).fetchone()
            return int(row[0]) if row else 0

    def record(self, key: str) -> Optional[Dict[str, Any]]:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            cur = c.execute("select * from sentinel.inspect_v1(%s, %s)", (self.namespace, key))
            row = cur.fetchone()
            return None if row is None else dict(zip([d.name for d in cur.description or []], row))

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(f"drop table if exists {self.table}")


@pytest.fixture
def shop(dsn: str, namespace: str) -> Iterator[Shop]:
    made = Shop(dsn, namespace)
    yield made
    made.drop()


Gate = Callable[[], Awaitable[None]]


async def _open() -> None:
    return None


def starlette_app(s: AsyncSentinel, shop: Shop, gate: Gate = _open, **options: Any) -> Starlette:
    """A Starlette shop behind the middleware (routes='all'), with users from ``Authorization: User <name>``."""
    state = {"fail_next": False}

    async def pay(request: Request) -> Response:
        body = await request.body()
        row = await shop.ran("pay", body)
        await gate()
        if state["fail_next"]:
            state["fail_next"] = False
            return JSONResponse({"error": "provider down"}, status_code=503)
        claim = current_claim(request)
        response = JSONResponse({"payment": row, "fence": claim.fence if claim else None}, status_code=201,
                                headers={"Location": f"/payments/{row}", "X-Trace": "t"})
        response.set_cookie("session", "secret")
        return response

    async def binary(request: Request) -> Response:
        await shop.ran("binary", await request.body())
        return Response(b"\x00\xffbytes", media_type="application/octet-stream", status_code=200)

    async def boom(request: Request) -> Response:
        await shop.ran("boom", await request.body())
        raise RuntimeError("the handler failed")

    async def stream(request: Request) -> Response:
        await shop.ran("stream", await request.body())
        size = int(request.query_params.get("chunks", "3"))

        async def chunks() -> AsyncIterator[bytes]:
            n = 0
            while size < 0 or n < size:  # a negative count streams for ever
                n += 1
                yield f"chunk {n};".encode() * 100

        return StreamingResponse(chunks(), media_type="text/plain")

    async def listing(request: Request) -> Response:
        await shop.ran("list", b"")
        return JSONResponse({"runs": shop.runs()})

    app = Starlette(
        routes=[
            Route("/payments", pay, methods=["POST", "PUT"]),
            Route("/payments", listing, methods=["GET"]),
            Route("/binary", binary, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(IdempotencyMiddleware, sentinel=s, **options),
        ],
    )
    app.state.flags = state
    return app


def fastapi_app(s: AsyncSentinel, shop: Shop, gate: Gate = _open, **options: Any) -> FastAPI:
    """A FastAPI shop: the middleware with routes='declared', keys scoped by the X-Tenant dependency."""
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, sentinel=s, routes="declared", **options)

    async def tenant(x_tenant: Annotated[Optional[str], Header()] = None) -> Optional[str]:
        return None if x_tenant is None else f"tenant-{x_tenant}"

    protect = idempotency_key(scope=tenant, required=True)

    @app.post("/orders", status_code=201)
    async def create_order(request: Request, order: Dict[str, int],
                           claim: Annotated[Claim, Depends(protect)]) -> Dict[str, Any]:
        row = await shop.ran("orders", await request.body())
        await gate()
        return {"order": row, "amount": order["amount"], "fence": claim.fence, "key": claim.key}

    @app.post("/free")
    async def unprotected(request: Request) -> Dict[str, Any]:
        return {"row": await shop.ran("free", await request.body())}

    return app


@contextlib.asynccontextmanager
async def client_for(app: Any, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        yield client


def arun(make: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


ALICE = {"Authorization": "User alice"}
APPS = ["starlette", "fastapi"]


def build(kind: str, s: AsyncSentinel, shop: Shop, gate: Gate = _open, **options: Any) -> Any:
    return starlette_app(s, shop, gate, **options) if kind == "starlette" else fastapi_app(s, shop, gate, **options)


def request_of(kind: str, key: str, amount: int = 10) -> Dict[str, Any]:
    """The protected request of an application: its path, body and headers."""
    if kind == "starlette":
        return {"url": "/payments", "json": {"amount": amount}, "headers": {KEY: key, **ALICE}}
    return {"url": "/orders", "json": {"amount": amount}, "headers": {KEY: key, "X-Tenant": "acme"}}


def record_of(kind: str, key: str) -> str:
    return record_key("user-alice" if kind == "starlette" else "tenant-acme", key)


def route_of(kind: str) -> str:
    return "pay" if kind == "starlette" else "orders"


# -- concurrency -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", APPS)
def test_concurrent_identical_requests_run_the_handler_once(kind: str, dsn: str, namespace: str,
                                                            shop: Shop) -> None:
    """Eight workers (threads, each with its own loop, client and connections) send one request at once."""
    workers = 8
    barrier = threading.Barrier(workers)
    release = threading.Event()
    answers: List[httpx.Response] = []
    failures: List[BaseException] = []
    lock = threading.Lock()

    async def hold() -> None:  # the first handler waits until the others were answered
        assert await asyncio.to_thread(release.wait, 30), "the test never released the handler"

    async def worker() -> None:
        s = AsyncSentinel(conninfo=dsn, namespace=namespace, default_ttl_ms=5000)
        try:
            await s.open()
            async with client_for(build(kind, s, shop, hold)) as client:
                await asyncio.to_thread(barrier.wait, 30)
                answer = await client.post(**request_of(kind, "order-1"))
            with lock:
                answers.append(answer)
        finally:
            await s.close()

    def thread_main() -> None:
        try:
            arun(worker)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            failures.append(exc)

    threads = [threading.Thread(target=thread_main) for _ in range(workers)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answers) + len(failures) >= workers - 1, 30, "seven of the eight requests answered")
    assert not failures, failures
    early = list(answers)
    release.set()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert shop.runs(route_of(kind)) == 1, "the handler ran exactly once"
    assert sorted(a.status_code for a in early) == [409] * (workers - 1)
    for a in early:
        assert a.json()["error"] == "request_in_progress"
        assert 1 <= int(a.headers["Retry-After"]) <= 5  # the lease's seconds left (default_ttl_ms=5000)
    fresh = [a for a in answers if a not in early]
    assert len(fresh) == 1 and fresh[0].status_code == 201 and "Idempotent-Replayed" not in fresh[0].headers

    async def retry() -> httpx.Response:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(build(kind, s, shop)) as client:
                return await client.post(**request_of(kind, "order-1"))

    again = arun(retry)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == fresh[0].json()
    assert shop.runs(route_of(kind)) == 1


@pytest.mark.parametrize("kind", APPS)
def test_with_wait_ms_retries_in_flight_wait_for_the_response(kind: str, dsn: str, namespace: str,
                                                              shop: Shop) -> None:
    n = 5

    async def main() -> None:
        alive: List[Event] = []
        released = asyncio.Event()
        s = AsyncSentinel(conninfo=dsn, namespace=namespace, observers=[
            lambda e: alive.append(e) if e.kind == "alive" else None])

        async def hold() -> None:
            await released.wait()

        try:
            async with client_for(build(kind, s, shop, hold, wait_ms=20_000)) as client:
                calls = [asyncio.ensure_future(client.post(**request_of(kind, "order-2"))) for _ in range(n)]
                deadline = asyncio.get_running_loop().time() + 20
                while len(alive) < n - 1:  # the four others found the key running, and now wait
                    assert asyncio.get_running_loop().time() < deadline, f"{len(alive)} waiting requests"
                    await asyncio.sleep(0.01)
                assert not any(c.done() for c in calls), "nobody is answered while the first runs"
                released.set()
                answers = await asyncio.gather(*calls)
        finally:
            await s.close()
        assert [a.status_code for a in answers] == [201] * n
        assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
        assert sorted(a.headers.get("Idempotent-Replayed", "-") for a in answers) == ["-"] + ["true"] * (n - 1)

    arun(main)
    assert shop.runs(route_of(kind)) == 1


# -- replay, 422, 400 --------------------------------------------------------------------------------


def test_replay_carries_the_marker_and_only_the_recorded_headers(dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> Tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop)) as client:
                first = await client.post(**request_of("starlette", "order-3"))
                again = await client.post(**request_of("starlette", "order-3"))
                headers = {KEY: "bin-1", **ALICE}
                b1 = await client.post("/binary", content=b"x", headers=headers)
                b2 = await client.post("/binary", content=b"x", headers=headers)
        return first, again, b1, b2

    first, again, b1, b2 = arun(main)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["set-cookie"].startswith("session=") and first.headers["X-Trace"] == "t"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == "application/json"
    assert "set-cookie" not in again.headers and "X-Trace" not in again.headers
    assert first.json()["fence"] == shop.record(record_of("starlette", "order-3"))["fence"]  # type: ignore[index]
    assert b1.content == b2.content == b"\x00\xffbytes" and b2.headers["Idempotent-Replayed"] == "true"
    assert b2.headers["Content-Type"] == "application/octet-stream"
    assert shop.runs("pay") == 1 and shop.runs("binary") == 1


@pytest.mark.parametrize("kind", APPS)
def test_a_key_reused_with_another_method_path_or_body_is_422(kind: str, dsn: str, namespace: str,
                                                              shop: Shop) -> None:
    async def main() -> List[httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(build(kind, s, shop)) as client:
                first = await client.post(**request_of(kind, "order-4", amount=10))
                assert first.status_code == 201
                req = request_of(kind, "order-4", amount=10)
                other_body = await client.post(**request_of(kind, "order-4", amount=11))
                other_query = await client.post(req["url"] + "?coupon=1", json=req["json"], headers=req["headers"])
                out = [other_body, other_query]
                if kind == "starlette":
                    out.append(await client.put(req["url"], json=req["json"], headers=req["headers"]))
                return out

    for answer in arun(main):
        assert answer.status_code == 422
        assert answer.json()["error"] == "idempotency_key_reused"
    assert shop.runs(route_of(kind)) == 1


def test_malformed_missing_and_unscoped_keys_are_400(dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> Dict[str, httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            out: Dict[str, httpx.Response] = {}
            async with client_for(starlette_app(s, shop)) as client:
                body = {"amount": 1}
                out["empty"] = await client.post("/payments", json=body, headers={KEY: "", **ALICE})
                out["long"] = await client.post("/payments", json=body, headers={KEY: "k" * 256, **ALICE})
                out["latin1"] = await client.post("/payments", json=body,
                                                  headers=[(KEY.encode(), "clé".encode("latin-1")),
                                                           (b"Authorization", b"User alice")])
                out["twice"] = await client.post("/payments", json=body,
                                                 headers=[(KEY, "a"), (KEY, "b"), ("Authorization", "User alice")])
                out["anonymous"] = await client.post("/payments", json=body, headers={KEY: "k"})
            async with client_for(starlette_app(s, shop, required=True)) as client:
                out["missing"] = await client.post("/payments", json=body, headers=ALICE)
            async with client_for(fastapi_app(s, shop)) as client:
                out["fastapi-missing"] = await client.post("/orders", json=body, headers={"X-Tenant": "acme"})
                out["fastapi-unscoped"] = await client.post("/orders", json=body, headers={KEY: "k"})
                out["fastapi-long"] = await client.post("/orders", json=body,
                                                        headers={KEY: "k" * 256, "X-Tenant": "acme"})
            return out

    answers = arun(main)
    expected = {
        "empty": "idempotency_key_invalid", "long": "idempotency_key_invalid", "latin1": "idempotency_key_invalid",
        "twice": "idempotency_key_invalid", "anonymous": "idempotency_key_requires_authentication",
        "missing": "idempotency_key_missing", "fastapi-missing": "idempotency_key_missing",
        "fastapi-unscoped": "idempotency_key_requires_authentication", "fastapi-long": "idempotency_key_invalid",
    }
    assert {name: (a.status_code, a.json()["error"]) for name, a in answers.items()} == {
        name: (400, error) for name, error in expected.items()}
    assert shop.runs() == 0, "no handler ran"
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select count(*) from sentinel.executions where namespace = %s", (namespace,)).fetchone()
    assert row is not None and row[0] == 0, "nothing was claimed"


def test_scopes_keep_users_apart(dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> List[httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop)) as client:
                return [await client.post("/payments", json={"amount": 1},
                                          headers={KEY: "same", "Authorization": f"User {who}"})
                        for who in ("alice", "bob", "alice")]

    alice, bob, alice_again = arun(main)
    assert alice.status_code == bob.status_code == 201 and alice.json() != bob.json()
    assert alice_again.json() == alice.json() and alice_again.headers["Idempotent-Replayed"] == "true"
    assert shop.runs("pay") == 2
    assert shop.record("http:user-alice:same") is not None and shop.record("http:user-bob:same") is not None


def test_safe_methods_and_routes_without_the_dependency_are_not_protected(dsn: str, namespace: str,
                                                                         shop: Shop) -> None:
    async def main() -> None:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop)) as client:
                for _ in range(2):
                    got = await client.get("/payments", headers={KEY: "g", **ALICE})
                    assert got.status_code == 200 and "Idempotent-Replayed" not in got.headers
                no_key = [await client.post("/payments", json={"amount": 1}, headers=ALICE) for _ in range(2)]
                assert [a.status_code for a in no_key] == [201, 201] and no_key[0].json()["fence"] is None
            async with client_for(fastapi_app(s, shop)) as client:
                free = [await client.post("/free", json={}, headers={KEY: "f", "X-Tenant": "acme"})
                        for _ in range(2)]
                assert [a.status_code for a in free] == [200, 200] and free[0].json() != free[1].json()

    arun(main)
    assert shop.runs("list") == 2 and shop.runs("pay") == 2 and shop.runs("free") == 2
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select count(*) from sentinel.executions where namespace = %s", (namespace,)).fetchone()
    assert row is not None and row[0] == 0


def test_the_fastapi_dependency_returns_the_claim_and_validation_errors_are_replayed(
        dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> List[httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(fastapi_app(s, shop)) as client:
                ok = await client.post(**request_of("fastapi", "order-5"))
                bad = {KEY: "order-6", "X-Tenant": "acme"}
                invalid = [await client.post("/orders", json={"amount": "many"}, headers=bad) for _ in range(2)]
                return [ok, *invalid]

    ok, invalid, invalid_again = arun(main)
    rec = shop.record("http:tenant-acme:order-5")
    assert ok.status_code == 201 and rec is not None
    assert ok.json()["key"] == "http:tenant-acme:order-5" and ok.json()["fence"] == rec["fence"]
    assert invalid.status_code == invalid_again.status_code == 422
    assert invalid_again.content == invalid.content and invalid_again.headers["Idempotent-Replayed"] == "true"
    assert shop.runs("orders") == 1, "the invalid body never reached the handler"


# -- uncertain, 5xx, exceptions ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", APPS)
def test_a_request_cancelled_while_its_handler_runs_leaves_the_key_uncertain(kind: str, dsn: str, namespace: str,
                                                                           shop: Shop) -> None:
    key = record_of(kind, "order-7")

    async def main() -> httpx.Response:
        entered, never = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            entered.set()
            await never.wait()

        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(build(kind, s, shop, hold)) as client:
                call = asyncio.ensure_future(client.post(**request_of(kind, "order-7")))
                await entered.wait()
                call.cancel()  # the server's task for the request is cancelled (a shutdown): effects may exist
                with pytest.raises(asyncio.CancelledError):
                    await call
                deadline = asyncio.get_running_loop().time() + 10
                while (await s.inspect(key) or {}).get("state") != "uncertain":
                    assert asyncio.get_running_loop().time() < deadline, await s.inspect(key)
                    await asyncio.sleep(0.02)
                return await client.post(**request_of(kind, "order-7"))

    retry = arun(main)
    assert retry.status_code == 409 and retry.json()["error"] == "outcome_uncertain"
    assert shop.runs(route_of(kind)) == 1


def test_a_key_left_uncertain_by_a_dead_worker_is_409_until_reconciled(dsn: str, namespace: str,
                                                                       shop: Shop) -> None:
    key = record_of("starlette", "order-8")
    with psycopg.connect(dsn, autocommit=True) as c:  # a worker claimed it, then died: its outcome is unknown
        row = c.execute("select fence from sentinel.acquire_v2(%s, %s, 'worker-1', 60000)", (namespace, key)).fetchone()
        assert row is not None
        c.execute("select sentinel.abandon_v1(%s, %s, %s, 'worker killed')", (namespace, key, row[0]))
    recorded = {"status": 201, "headers": [["Content-Type", "application/json"]], "body": '{"charge_id": "ch_1"}'}

    async def main() -> Tuple[httpx.Response, httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop)) as client:
                before = await client.post(**request_of("starlette", "order-8"))
                await s.reconcile(key, action="completed", response=recorded, actor="alice@ops",
                                  reason="charge ch_1 found at the provider")
                after = await client.post(**request_of("starlette", "order-8"))
                return before, after

    before, after = arun(main)
    assert before.status_code == 409 and before.json()["error"] == "outcome_uncertain"
    assert after.status_code == 201 and after.json() == {"charge_id": "ch_1"}
    assert after.headers["Idempotent-Replayed"] == "true"
    assert shop.runs() == 0, "the handler never ran"


def test_a_5xx_is_not_stored_and_the_retry_runs_the_handler_again(dsn: str, namespace: str, shop: Shop) -> None:
    key = record_of("starlette", "order-9")

    async def main() -> List[httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            app = starlette_app(s, shop)
            app.state.flags["fail_next"] = True
            async with client_for(app) as client:
                failed = await client.post(**request_of("starlette", "order-9"))
                state_after_5xx = (await s.inspect(key) or {}).get("state")
                assert state_after_5xx == "failed", state_after_5xx
                retried = await client.post(**request_of("starlette", "order-9"))
                replayed = await client.post(**request_of("starlette", "order-9"))
                return [failed, retried, replayed]

    failed, retried, replayed = arun(main)
    assert failed.status_code == 503 and failed.json() == {"error": "provider down"}
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.json() == retried.json()
    assert shop.runs("pay") == 2, "the 5xx run, then the retry; the replay runs nothing"


def test_a_handler_that_raises_is_recorded_failed_and_runs_again(dsn: str, namespace: str, shop: Shop) -> None:
    key = record_of("starlette", "boom-1")

    async def main() -> Tuple[List[httpx.Response], Optional[Dict[str, Any]]]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop), raise_app_exceptions=False) as client:
                answers = [await client.post("/boom", json={}, headers={KEY: "boom-1", **ALICE}) for _ in range(2)]
            return answers, await s.inspect(key)

    answers, rec = arun(main)
    assert [a.status_code for a in answers] == [500, 500]
    assert rec is not None and rec["state"] == "failed" and "the handler failed" in json.dumps(rec["error"])
    assert shop.runs("boom") == 2


# -- bodies ------------------------------------------------------------------------------------------


def test_a_request_body_over_the_limit_is_413_and_nothing_is_claimed(dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> httpx.Response:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop, max_request_bytes=1000)) as client:
                return await client.post("/payments", content=b"x" * 1001, headers={KEY: "big", **ALICE})

    answer = arun(main)
    assert answer.status_code == 413 and answer.json()["error"] == "request_too_large"
    assert shop.runs() == 0 and shop.record(record_of("starlette", "big")) is None


def test_a_streaming_response_is_buffered_and_replayed(dsn: str, namespace: str, shop: Shop) -> None:
    async def main() -> List[httpx.Response]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop)) as client:
                return [await client.post("/stream?chunks=3", headers={KEY: "s-1", **ALICE}) for _ in range(2)]

    first, again = arun(main)
    assert first.status_code == again.status_code == 200
    assert first.text == "".join(f"chunk {n};" * 100 for n in (1, 2, 3)) == again.text
    assert again.headers["Idempotent-Replayed"] == "true" and shop.runs("stream") == 1


def test_an_endless_streaming_response_is_stopped_and_its_key_is_uncertain(dsn: str, namespace: str,
                                                                           shop: Shop) -> None:
    key = record_of("starlette", "s-2")

    async def main() -> Tuple[httpx.Response, httpx.Response, Optional[Dict[str, Any]]]:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            async with client_for(starlette_app(s, shop, max_response_bytes=10_000)) as client:
                first = await client.post("/stream?chunks=-1", headers={KEY: "s-2", **ALICE})
                again = await client.post("/stream?chunks=-1", headers={KEY: "s-2", **ALICE})
            return first, again, await s.inspect(key)

    first, again, rec = arun(main)
    assert first.status_code == 500 and first.json()["error"] == "response_too_large"
    assert "max_response_bytes (10000)" in first.json()["detail"]
    assert rec is not None and rec["state"] == "uncertain"
    assert again.status_code == 409 and again.json()["error"] == "outcome_uncertain"
    assert shop.runs("stream") == 1


# -- configuration errors ----------------------------------------------------------------------------


def test_misconfigurations_are_refused_with_the_fix(dsn: str, namespace: str, shop: Shop) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    sync = Sentinel(conninfo=dsn, namespace=namespace)
    try:
        with pytest.raises(TypeError, match="AsyncSentinel"):
            IdempotencyMiddleware(app, sentinel=sync)  # type: ignore[arg-type]
    finally:
        sync.close()

    async def main() -> None:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            with pytest.raises(ValueError, match="'all'.*'declared'"):
                IdempotencyMiddleware(app, sentinel=s, routes="some")
            with pytest.raises(ValueError, match="Set-Cookie"):
                IdempotencyMiddleware(app, sentinel=s, stored_headers=["Location", "set-cookie"])
            with pytest.raises(ValueError, match="max_response_bytes"):
                IdempotencyMiddleware(app, sentinel=s, max_response_bytes=-1)

            def routed(*middleware: Middleware) -> FastAPI:
                api = FastAPI(middleware=list(middleware))

                @api.post("/x")
                async def x(claim: Annotated[Optional[Claim], Depends(idempotency_key())]) -> Dict[str, Any]:
                    return {}

                return api

            async with client_for(routed()) as client:
                with pytest.raises(RuntimeError, match="needs the middleware"):
                    await client.post("/x", headers={KEY: "k"})
            everything = Middleware(IdempotencyMiddleware, sentinel=s, scope=lambda conn: "t")
            async with client_for(routed(everything)) as client:
                with pytest.raises(RuntimeError, match="routes='declared'"):
                    await client.post("/x", headers={KEY: "k"})

    arun(main)


# -- the docs page -----------------------------------------------------------------------------------


def _examples(path: Path) -> List[Tuple[str, Optional[str]]]:
    """Each python block of the page, with the text block printed right after it (its output), if any."""
    text = path.read_text(encoding="utf-8")
    blocks = list(re.finditer(r"^```(python|text)\n(.*?)^```", text, re.S | re.M))
    out: List[Tuple[str, Optional[str]]] = []
    for i, m in enumerate(blocks):
        if m.group(1) != "python":
            continue
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        printed = nxt.group(2) if nxt is not None and nxt.group(1) == "text" else None
        out.append((m.group(2), printed))
    return out


def test_the_docs_examples_run_as_written_and_print_what_the_page_shows(dsn: str, namespace: str) -> None:
    examples = _examples(ROOT / "docs" / "asgi.md")
    assert len(examples) == 3, "docs/asgi.md: the Starlette app, its requests, the FastAPI app"
    scope: Dict[str, Any] = {"__name__": "docs_asgi"}
    for n, (block, printed) in enumerate(examples):
        code = block.replace('"postgresql://app@db/shop"', repr(dsn)).replace('namespace="shop"',
                                                                               f'namespace="{namespace}"')
        if "AsyncSentinel(" in block:
            assert code != block, f"block {n + 1}: the address or namespace to replace changed"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"docs/asgi.md (python block {n + 1})", "exec"), scope)
        if printed is not None:
            assert out.getvalue() == printed, f"block {n + 1} printed\n{out.getvalue()}"
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("select key, state from sentinel.executions where namespace = %s order by key",
                         (namespace,)).fetchall()
    assert [tuple(r) for r in rows] == [("http:acme:order-789", "completed"),
                                        ("http:tenant-acme:order-790", "completed")]

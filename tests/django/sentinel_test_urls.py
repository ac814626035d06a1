"""Views for the Django tests: the example shop's URLs plus views exercising @idempotent_view's corners.

Each view counts its executions per Idempotency-Key in ``CALLS``; ``GATES`` lets
a test hold a view inside its execution (no sleeps: events).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Dict, Iterator

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path

import sentinel
from sentinel.contrib.django import idempotent_view

CALLS: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


class Gate:
    """Holds a view inside its execution until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.lease_lost = threading.Event()
        self.release = threading.Event()


GATES: Dict[str, Gate] = {}


def _count(request: Any, view: str) -> int:
    key = f"{view}:{request.headers.get('Idempotency-Key')}"
    with _lock:
        CALLS[key] += 1
        return CALLS[key]


@idempotent_view
def echo(request: Any) -> Any:
    n = _count(request, "echo")
    response = JsonResponse({"n": n, "body": request.body.decode()}, status=201)
    response["Location"] = f"/things/{n}"
    response["X-Not-Stored"] = "fresh only"
    response.set_cookie("flavour", "fresh")
    return response


@idempotent_view(required=True)
def required(request: Any) -> Any:
    return JsonResponse({"n": _count(request, "required")}, status=201)


@idempotent_view(scope=lambda request: request.headers.get("X-Api-Client"))
def by_client(request: Any) -> Any:
    return JsonResponse({"n": _count(request, "by_client")}, status=201)


@idempotent_view
def status(request: Any, code: int) -> Any:
    """Answers ``code`` the first time, 201 afterwards (a 5xx must not be replayed)."""
    n = _count(request, "status")
    return JsonResponse({"n": n}, status=code if n == 1 else 201)


@idempotent_view
def boom(request: Any) -> Any:
    """Raises the first time, succeeds afterwards."""
    n = _count(request, "boom")
    if n == 1:
        raise RuntimeError("the view failed")
    return JsonResponse({"n": n}, status=201)


@idempotent_view
def binary(request: Any) -> Any:
    _count(request, "binary")
    return HttpResponse(b"\x00\xffPNG\r\n" + bytes(range(256)), content_type="application/octet-stream")


@idempotent_view
def streaming(request: Any) -> Any:
    n = _count(request, "streaming")

    def chunks() -> Iterator[bytes]:
        yield b"chunk-1;"
        yield f"n={n}".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain; charset=utf-8", status=202)


@idempotent_view(ttl_ms=2000, hard_ttl_ms=30000)
def gated(request: Any) -> Any:
    """Signals that it started, then waits until the test releases it."""
    gate = GATES[request.headers["Idempotency-Key"]]
    _count(request, "gated")
    gate.started.set()
    assert gate.release.wait(20), "the test never released the view"
    return JsonResponse({"released": True}, status=201)


@idempotent_view(ttl_ms=300, hard_ttl_ms=300)
def outlives_lease(request: Any) -> Any:
    """Runs past its hard deadline: the key reads uncertain while it still runs."""
    gate = GATES[request.headers["Idempotency-Key"]]
    _count(request, "outlives_lease")
    ctx = sentinel.current_execution()
    assert ctx is not None and ctx.wait_lost(20), "the lease was never lost"
    gate.lease_lost.set()
    assert gate.release.wait(20), "the test never released the view"
    return JsonResponse({"late": True}, status=201)


@idempotent_view(wait_ms=20000)
def waits(request: Any) -> Any:
    """Retries arriving while it runs wait for its response instead of getting 409."""
    gate = GATES[request.headers["Idempotency-Key"]]
    n = _count(request, "waits")
    gate.started.set()
    assert gate.release.wait(20), "the test never released the view"
    return JsonResponse({"n": n}, status=201)


urlpatterns = [
    path("", include("shop.urls")),
    path("t/echo", echo),
    path("t/echo/other", echo),
    path("t/required", required),
    path("t/by-client", by_client),
    path("t/status/<int:code>", status),
    path("t/boom", boom),
    path("t/binary", binary),
    path("t/streaming", streaming),
    path("t/gated", gated),
    path("t/outlives-lease", outlives_lease),
    path("t/waits", waits),
]

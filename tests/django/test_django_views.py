"""@idempotent_view through Django's test Client: replay, scoping, mismatch, 409s, what is stored."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List, Optional, Set

import pytest

from sentinel.contrib.django import REPLAYED_HEADER, get_sentinel, record_key


@pytest.fixture
def tv() -> Any:
    """The test views (imported once Django is set up): CALLS counts executions, GATES holds views."""
    import sentinel_test_urls

    return sentinel_test_urls


def post(client: Any, path: str, body: Any = None, key: Optional[str] = None, **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(path, data=json.dumps(body if body is not None else {}), content_type="application/json",
                       headers=headers)


def record(user: Any, key: str) -> Optional[Dict[str, Any]]:
    return get_sentinel().inspect(record_key(f"user-{user.pk}", key))


def replayed(response: Any) -> bool:
    return response.headers.get(REPLAYED_HEADER) == "true"


def test_first_request_runs_the_view_and_retries_replay_it(tv: Any, http: Any, user: Any, idem_key: str) -> None:
    first = post(http, "/t/echo", {"a": 1}, idem_key)
    assert first.status_code == 201 and not replayed(first)
    for _ in range(2):
        again = post(http, "/t/echo", {"a": 1}, idem_key)
        assert again.status_code == 201 and replayed(again)
        assert again.content == first.content
        assert again["Content-Type"] == first["Content-Type"] == "application/json"
        assert again["Location"] == first["Location"] == "/things/1"
        assert "X-Not-Stored" not in again and "flavour" not in again.cookies, "only the chosen headers replay"
    assert tv.CALLS[f"echo:{idem_key}"] == 1
    stored = record(user, idem_key)
    assert stored is not None and stored["state"] == "completed"
    assert stored["response"]["status"] == 201 and stored["response"]["body"] == first.content.decode()


def test_same_key_with_another_body_path_or_method_is_422(tv: Any, http: Any, idem_key: str) -> None:
    assert post(http, "/t/echo", {"a": 1}, idem_key).status_code == 201
    other_body = post(http, "/t/echo", {"a": 2}, idem_key)
    other_path = post(http, "/t/echo/other", {"a": 1}, idem_key)
    other_query = post(http, "/t/echo?x=1", {"a": 1}, idem_key)
    other_method = http.put("/t/echo", data=json.dumps({"a": 1}), content_type="application/json",
                            headers={"Idempotency-Key": idem_key})
    for response in (other_body, other_path, other_query, other_method):
        assert response.status_code == 422
        assert response.json()["error"] == "idempotency_key_reused"
    assert tv.CALLS[f"echo:{idem_key}"] == 1
    assert replayed(post(http, "/t/echo", {"a": 1}, idem_key)), "the original request still replays"


def test_keys_are_scoped_per_user(tv: Any, http: Any, make_user: Any, idem_key: str) -> None:
    from django.test import Client

    mine = post(http, "/t/echo", {"a": 1}, idem_key)
    other = Client()
    other.force_login(make_user())
    theirs = post(other, "/t/echo", {"a": 1}, idem_key)
    assert theirs.status_code == 201 and not replayed(theirs), "another user's key runs on its own"
    assert theirs.json()["n"] == 2 and mine.json()["n"] == 1
    assert tv.CALLS[f"echo:{idem_key}"] == 2
    assert replayed(post(other, "/t/echo", {"a": 1}, idem_key))


def test_anonymous_requests_are_rejected_unless_a_scope_names_them(tv: Any, idem_key: str) -> None:
    from django.test import Client

    anonymous = Client()
    refused = post(anonymous, "/t/echo", {"a": 1}, idem_key)
    assert refused.status_code == 400 and refused.json()["error"] == "idempotency_key_requires_authentication"
    assert tv.CALLS[f"echo:{idem_key}"] == 0
    # a view with its own scope (here: an API client header) serves anonymous clients
    a1 = post(anonymous, "/t/by-client", None, idem_key, **{"X-Api-Client": "acme"})
    a2 = post(anonymous, "/t/by-client", None, idem_key, **{"X-Api-Client": "acme"})
    b1 = post(anonymous, "/t/by-client", None, idem_key, **{"X-Api-Client": "globex"})
    assert (a1.status_code, replayed(a1), replayed(a2), replayed(b1)) == (201, False, True, False)
    assert tv.CALLS[f"by_client:{idem_key}"] == 2
    assert post(anonymous, "/t/by-client", None, idem_key).status_code == 400


def test_requests_without_the_header_pass_through(tv: Any, http: Any) -> None:
    before = tv.CALLS["echo:None"]
    assert post(http, "/t/echo", {"a": 1}).status_code == 201
    assert post(http, "/t/echo", {"a": 1}).status_code == 201
    assert tv.CALLS["echo:None"] == before + 2, "no key: the view runs every time"
    refused = post(http, "/t/required", {"a": 1})
    assert refused.status_code == 400 and refused.json()["error"] == "idempotency_key_missing"
    assert tv.CALLS["required:None"] == 0


def test_safe_methods_pass_through_even_with_a_key(tv: Any, http: Any, idem_key: str) -> None:
    for _ in range(2):
        response = http.get("/t/echo", headers={"Idempotency-Key": idem_key})
        assert response.status_code == 201 and not replayed(response)
    assert tv.CALLS[f"echo:{idem_key}"] == 2


@pytest.mark.parametrize("bad", ["", "x" * 256, "clé", "tab\there"])
def test_malformed_keys_are_400(http: Any, bad: str) -> None:
    response = post(http, "/t/echo", {"a": 1}, bad)
    assert response.status_code == 400 and response.json()["error"] == "idempotency_key_invalid"


def test_4xx_is_stored_and_replayed(tv: Any, http: Any, idem_key: str) -> None:
    first = post(http, "/t/status/402", None, idem_key)
    again = post(http, "/t/status/402", None, idem_key)
    assert first.status_code == 402 and again.status_code == 402 and replayed(again)
    assert tv.CALLS[f"status:{idem_key}"] == 1


def test_5xx_is_not_stored_and_a_retry_runs_the_view_again(tv: Any, http: Any, user: Any, idem_key: str) -> None:
    first = post(http, "/t/status/503", None, idem_key)
    assert first.status_code == 503 and not replayed(first)
    stored = record(user, idem_key)
    assert stored is not None and stored["state"] == "failed", "a 5xx is recorded as a (retryable) failure"
    second = post(http, "/t/status/503", None, idem_key)
    assert second.status_code == 201 and not replayed(second)
    third = post(http, "/t/status/503", None, idem_key)
    assert third.status_code == 201 and replayed(third) and third.content == second.content
    assert tv.CALLS[f"status:{idem_key}"] == 2


def test_a_view_that_raises_propagates_and_leaves_the_key_retryable(http: Any, user: Any, idem_key: str) -> None:
    with pytest.raises(RuntimeError, match="the view failed"):
        post(http, "/t/boom", None, idem_key)
    stored = record(user, idem_key)
    assert stored is not None and stored["state"] == "failed"
    assert "RuntimeError" in stored["error"]["type"]
    retry = post(http, "/t/boom", None, idem_key)
    assert retry.status_code == 201 and retry.json() == {"n": 2}
    assert replayed(post(http, "/t/boom", None, idem_key))


def test_a_key_an_operator_resolved_as_failed_gets_409_request_failed(tv: Any, http: Any, user: Any,
                                                                     idem_key: str) -> None:
    with pytest.raises(RuntimeError):
        post(http, "/t/boom", None, idem_key)
    get_sentinel().reconcile(record_key(f"user-{user.pk}", idem_key), action="failed", actor="alice@ops",
                             reason="refunded by hand; do not run again")
    refused = post(http, "/t/boom", None, idem_key)
    assert refused.status_code == 409 and refused.json()["error"] == "request_failed"
    assert tv.CALLS[f"boom:{idem_key}"] == 1


def test_binary_and_streaming_bodies_replay_byte_for_byte(tv: Any, http: Any, user: Any, idem_key: str) -> None:
    first = post(http, "/t/binary", None, idem_key)
    again = post(http, "/t/binary", None, idem_key)
    assert replayed(again) and again.content == first.content and b"\x00\xff" in again.content
    assert again["Content-Type"] == "application/octet-stream"
    stored = record(user, idem_key)
    assert stored is not None and "body_base64" in stored["response"] and "body" not in stored["response"]

    s1 = post(http, "/t/streaming", None, idem_key + "-s")
    s2 = post(http, "/t/streaming", None, idem_key + "-s")
    assert s1.status_code == s2.status_code == 202
    assert s1.content == s2.content == b"chunk-1;n=1" and replayed(s2)
    assert tv.CALLS[f"binary:{idem_key}"] == 1 and tv.CALLS[f"streaming:{idem_key}-s"] == 1


def _in_thread(fn: Any) -> Any:
    """Run fn in a thread (closing its Django connection); return (thread, results list)."""
    from django.db import connections

    out: List[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # reported to the test
            out.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def logged_in(user: Any) -> Any:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def test_a_retry_while_the_first_runs_gets_409_with_retry_after(tv: Any, http: Any, user: Any, idem_key: str) -> None:
    gate = tv.GATES[idem_key] = tv.Gate()
    thread, out = _in_thread(lambda: post(logged_in(user), "/t/gated", None, idem_key))
    try:
        assert gate.started.wait(10), "the first request never reached the view"
        busy = post(http, "/t/gated", None, idem_key)
        assert busy.status_code == 409
        assert busy.json()["error"] == "request_in_progress"
        assert 1 <= int(busy["Retry-After"]) <= 2, "seconds until the lease (ttl 2 s) lapses"
    finally:
        gate.release.set()
        thread.join(20)
    assert out[0].status_code == 201 and not replayed(out[0])
    assert replayed(post(http, "/t/gated", None, idem_key))
    assert tv.CALLS[f"gated:{idem_key}"] == 1


def test_an_uncertain_key_gets_409_outcome_uncertain(tv: Any, http: Any, user: Any, idem_key: str) -> None:
    gate = tv.GATES[idem_key] = tv.Gate()
    thread, out = _in_thread(lambda: post(logged_in(user), "/t/outlives-lease", None, idem_key))
    try:
        assert gate.lease_lost.wait(10), "the view never lost its lease"
        unknown = post(http, "/t/outlives-lease", None, idem_key)
        assert unknown.status_code == 409
        assert unknown.json()["error"] == "outcome_uncertain"
        assert "Retry-After" not in unknown, "an uncertain key does not resolve by waiting"
        stored = record(user, idem_key)
        assert stored is not None and stored["state"] == "uncertain"
    finally:
        gate.release.set()
        thread.join(20)
    # the late completion still held the current fence: it is recorded and replayed from now on
    assert out[0].status_code == 201
    assert replayed(post(http, "/t/outlives-lease", None, idem_key))
    assert tv.CALLS[f"outlives_lease:{idem_key}"] == 1


def test_eight_concurrent_requests_in_threads_with_wait_ms_all_get_the_one_response(
        tv: Any, make_user: Any, idem_key: str, settings: Any) -> None:
    settings.SENTINEL = {"NAMESPACE": f"waits-{idem_key[-12:]}"}  # a shared Sentinel of this test's own
    waiting: Set[int] = set()
    seen = threading.Condition()

    def observe(event: Any) -> None:  # called in the caller's thread
        if event.kind == "alive" and event.key.endswith(idem_key):
            with seen:
                waiting.add(threading.get_ident())
                seen.notify_all()

    get_sentinel().add_observer(observe)
    user = make_user()
    gate = tv.GATES[idem_key] = tv.Gate()
    barrier = threading.Barrier(8)

    def request() -> Any:
        client = logged_in(user)
        barrier.wait(10)
        return post(client, "/t/waits", {"amount": 1}, idem_key)

    started = [_in_thread(request) for _ in range(8)]
    assert gate.started.wait(10)
    with seen:  # the view is held until the 7 others found it running and wait for it
        assert seen.wait_for(lambda: len(waiting) == 7, timeout=20), f"only {len(waiting)} retries waited"
    gate.release.set()
    for thread, _ in started:
        thread.join(30)
    responses = [out[0] for _, out in started]
    assert all(not isinstance(r, BaseException) for r in responses), responses
    assert sorted(r.status_code for r in responses) == [201] * 8
    assert sum(not replayed(r) for r in responses) == 1
    assert len({r.content for r in responses}) == 1
    assert tv.CALLS[f"waits:{idem_key}"] == 1


def test_the_decorator_refuses_async_views(tv: Any) -> None:
    from sentinel.contrib.django import idempotent_view

    async def view(request: Any) -> Any:
        return None

    with pytest.raises(TypeError, match="synchronous"):
        idempotent_view(view)
    assert tv.echo.__name__ == "echo", "functools.wraps keeps the view's identity"

"""The example shop over real HTTP: 8 concurrent POST /payments with one Idempotency-Key charge once."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

Reply = Tuple[int, Dict[str, str], bytes]


def call(url: str, method: str, user: str, body: Optional[Dict[str, Any]] = None,
         key: Optional[str] = None) -> Reply:
    """One HTTP request with Basic auth; (status, headers, body), errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:pw".encode()).decode())
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def test_eight_concurrent_payments_with_one_key_charge_once(live_url: str, make_user: Any) -> None:
    from payments.models import Payment

    user = make_user()
    key = f"order-{uuid.uuid4().hex[:8]}"
    body = {"amount": 9900, "currency": "EUR", "customer": "cus_abc"}
    barrier = threading.Barrier(8)
    replies: List[Reply] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(10)
        reply = call(f"{live_url}/payments", "POST", user.username, body, key)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == 8

    # the ledger: exactly one payment (one charge at the provider) for the key
    payments = list(Payment.objects.filter(user=user))
    assert len(payments) == 1
    payment = payments[0]
    assert payment.amount == 9900 and payment.idempotency_key == f"http:user-{user.pk}:{key}"

    fresh = [r for r in replies if r[0] == 201 and r[1].get("Idempotent-Replayed") != "true"]
    replayed = [r for r in replies if r[0] == 201 and r[1].get("Idempotent-Replayed") == "true"]
    busy = [r for r in replies if r[0] == 409]
    assert len(fresh) == 1, [r[0] for r in replies]
    assert len(fresh) + len(replayed) + len(busy) == 8, [(r[0], r[2]) for r in replies]
    created = json.loads(fresh[0][2])
    assert created["id"] == payment.pk and created["charge_id"] == payment.charge_id
    assert fresh[0][1]["Location"] == f"/payments/{payment.pk}"
    for _, headers, content in replayed:
        assert content == fresh[0][2] and headers["Location"] == f"/payments/{payment.pk}"
    for _, headers, content in busy:
        assert json.loads(content)["error"] == "request_in_progress"
        assert 1 <= int(headers["Retry-After"]) <= 5  # the example's lease: 5 s

    # every retry from now on replays the one payment; GET is not guarded
    status, headers, content = call(f"{live_url}/payments", "POST", user.username, body, key)
    assert (status, headers.get("Idempotent-Replayed"), content) == (201, "true", fresh[0][2])
    status, _, content = call(f"{live_url}/payments", "GET", user.username, key=key)
    assert status == 200 and [p["id"] for p in json.loads(content)["payments"]] == [payment.pk]


def test_the_example_api_answers_422_400_and_401(live_url: str, make_user: Any) -> None:
    from payments.models import Payment

    user = make_user()
    key = f"order-{uuid.uuid4().hex[:8]}"
    body = {"amount": 100, "currency": "eur", "customer": "cus_1"}
    assert call(f"{live_url}/payments", "POST", user.username, body, key)[0] == 201
    status, _, content = call(f"{live_url}/payments", "POST", user.username, {**body, "amount": 200}, key)
    assert (status, json.loads(content)["error"]) == (422, "idempotency_key_reused")
    status, _, content = call(f"{live_url}/payments", "POST", user.username, body)
    assert (status, json.loads(content)["error"]) == (400, "idempotency_key_missing")
    status, headers, _ = call(f"{live_url}/payments", "POST", "nobody", body, key)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    # another user with the same key gets a payment of their own
    other = make_user()
    status, headers, _ = call(f"{live_url}/payments", "POST", other.username, body, key)
    assert status == 201 and "Idempotent-Replayed" not in headers
    assert Payment.objects.filter(user=user).count() == 1 and Payment.objects.filter(user=other).count() == 1

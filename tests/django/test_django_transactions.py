"""once() records on Sentinel's own connection, so it refuses to run inside atomic(); atomic_once() commits with it."""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List

import pytest
from djutil import sentinel_state

from sentinel import Sentinel, TransactionInProgress
from sentinel.contrib.django import atomic_once


class Rollback(Exception):
    """Raised to roll back an atomic block."""


@pytest.fixture
def s() -> Any:
    with Sentinel(fingerprints=False) as client:
        yield client


@pytest.fixture
def key() -> str:
    return f"tx-{uuid.uuid4().hex}"


def _pay(user: Any, key: str, amount: int = 100) -> Any:
    from payments.models import Payment

    return Payment.objects.create(user=user, amount=amount, currency="eur", customer="cus_1",
                                  charge_id=f"ch_{uuid.uuid4().hex[:20]}", idempotency_key=key, fence=0)


def _never() -> Dict[str, Any]:
    raise AssertionError("a replay must not run the function")


def test_once_outside_atomic_commits_claim_writes_and_response(s: Sentinel, key: str, user: Any,
                                                               django_dsn: str) -> None:
    from payments.models import Payment

    seen: List[Any] = []

    def charge() -> Dict[str, Any]:
        seen.append(sentinel_state(django_dsn, s.namespace, key))
        return {"payment_id": _pay(user, key).pk}

    first = s.once(key, charge)
    again = s.once(key, _never)
    assert seen == ["executing"], "the claim is committed before the function starts"
    assert again.replayed and again.response == first.response
    assert Payment.objects.filter(idempotency_key=key).count() == 1
    assert sentinel_state(django_dsn, s.namespace, key) == "completed"


def test_once_inside_atomic_is_refused_before_anything_is_claimed(s: Sentinel, key: str, user: Any,
                                                                   django_dsn: str) -> None:
    """Recording on Sentinel's own connection inside atomic() would replay success for writes rolled back."""
    from django.db import transaction
    from payments.models import Payment

    def charge() -> Dict[str, Any]:
        return {"payment_id": _pay(user, key).pk}

    with pytest.raises(Rollback), transaction.atomic():
        with pytest.raises(TransactionInProgress, match="atomic_once") as info:
            s.once(key, charge)
        assert "non_atomic_requests" in str(info.value) and key in str(info.value)
        raise Rollback

    assert sentinel_state(django_dsn, s.namespace, key) is None, "nothing was claimed"
    assert not Payment.objects.filter(idempotency_key=key).exists()
    # Outside atomic() the same call runs.
    assert s.once(key, charge).completed


def test_an_atomic_request_to_an_idempotent_view_is_refused(http: Any, user: Any, django_dsn: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    from sentinel.contrib.django import get_sentinel, record_key

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    idem = f"atomic-{uuid.uuid4().hex}"
    with pytest.raises(TransactionInProgress, match="ATOMIC_REQUESTS"):
        http.post("/t/echo", data="{}", content_type="application/json", headers={"Idempotency-Key": idem})
    assert get_sentinel().inspect(record_key(f"user-{user.pk}", idem)) is None


def test_atomic_once_commits_claim_writes_and_response_together(s: Sentinel, key: str, user: Any,
                                                                django_dsn: str) -> None:
    from django.db import transaction
    from payments.models import Payment

    # rolled back by the caller's block: nothing stays, not even the claim
    with pytest.raises(Rollback), transaction.atomic():
        _pay(user, f"{key}-before")
        with atomic_once(key, sentinel=s) as tx:
            assert tx.acquired
            tx.complete({"payment_id": _pay(user, key).pk})
        assert sentinel_state(django_dsn, s.namespace, key) is None, "uncommitted: invisible to others"
        raise Rollback
    assert sentinel_state(django_dsn, s.namespace, key) is None
    assert not Payment.objects.filter(idempotency_key__startswith=key).exists()

    # a block that raises leaves nothing either
    with pytest.raises(Rollback), atomic_once(key, sentinel=s) as tx:
        _pay(user, key)
        raise Rollback
    assert sentinel_state(django_dsn, s.namespace, key) is None
    assert not Payment.objects.filter(idempotency_key=key).exists()

    # committed: both, once; a replay returns the recorded value (not its JSON text)
    with atomic_once(key, sentinel=s) as tx:
        assert tx.acquired
        payment = _pay(user, key)
        tx.complete({"payment_id": payment.pk, "amount": payment.amount})
    assert sentinel_state(django_dsn, s.namespace, key) == "completed"
    with atomic_once(key, sentinel=s) as again:
        assert again.replayed and not again.acquired
        assert again.response == {"payment_id": payment.pk, "amount": 100}
    assert Payment.objects.filter(idempotency_key=key).count() == 1
    assert s.once(key, _never).response == {"payment_id": payment.pk, "amount": 100}


def test_sentinel_transaction_on_djangos_psycopg_connection(s: Sentinel, key: str, user: Any,
                                                            django_dsn: str) -> None:
    """The plain recipe: Sentinel.transaction(key, django.db.connection.connection) inside atomic()."""
    import psycopg
    from django.db import connection, transaction
    from payments.models import Payment

    with transaction.atomic():
        connection.ensure_connection()
        assert isinstance(connection.connection, psycopg.Connection), "Django uses psycopg 3 here"
        with connection.cursor() as cur:
            cur.execute("select 1")  # begin the transaction, so Sentinel's block is a savepoint of it
        with s.transaction(key, connection.connection) as tx:
            assert tx.acquired
            tx.complete({"payment_id": _pay(user, key).pk})
        assert sentinel_state(django_dsn, s.namespace, key) is None, "commits with Django's transaction"
    assert sentinel_state(django_dsn, s.namespace, key) == "completed"
    assert Payment.objects.filter(idempotency_key=key).count() == 1
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("select 1")
        with s.transaction(key, connection.connection) as again:
            assert again.replayed
            # Django loads jsonb as text on its connections: the replay is the JSON text (atomic_once parses it)
            assert json.loads(again.response) == tx.response

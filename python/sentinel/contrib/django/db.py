"""``atomic_once``: Sentinel's transactional mode on Django's own connection.

``Sentinel.once()`` commits its claim on Sentinel's own connection before the
function runs, whatever Django's transaction does (see
``sentinel.contrib.django``). When the work is only database writes, the claim,
the writes and the recorded response can instead commit *together* in Django's
transaction with :meth:`sentinel.Sentinel.transaction`, given Django's
underlying psycopg 3 connection; :func:`atomic_once` does that and takes care of
two details:

- Django's ``atomic()`` begins the server transaction lazily, at its first
  query; until then psycopg would run Sentinel's block as a transaction of its
  own (``BEGIN`` ... ``COMMIT`` as the block ends, while Django's block is still
  open), so ``atomic_once`` begins it first and Sentinel's block becomes a
  savepoint that commits when Django's transaction does;
- Django loads ``jsonb`` as text on its connections (its JSONField parses it);
  Sentinel's queries go through cursors that parse it, so a replayed
  ``tx.response`` is the recorded value, not its JSON text. Django's own
  queries on the connection are untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Union, cast

import psycopg

from ..._client import Sentinel, Transaction
from .._borrowed import BorrowedConnection
from .conf import check_postgresql, database_alias, get_sentinel

__all__ = ["atomic_once"]


@contextlib.contextmanager
def atomic_once(
    key: str,
    *,
    using: Optional[str] = None,
    sentinel: Union[Sentinel, None] = None,
    ttl_ms: Optional[int] = None,
    hard_ttl_ms: Optional[int] = None,
    fingerprint: Optional[str] = None,
    retain_ms: Optional[int] = None,
) -> Iterator[Transaction]:
    """Claim ``key``, do ORM writes and record the response in ONE transaction of Django's database.

    ::

        with atomic_once(f"order-{order_id}") as tx:
            if tx.acquired:
                payment = Payment.objects.create(...)
                tx.complete({"payment_id": payment.pk})
        response = tx.response            # fresh, or replayed (tx.replayed)

    Runs inside ``transaction.atomic(using=...)`` (a savepoint when you are
    already inside one; then everything commits when *your* outermost block
    does). A block that raises, or an outer block that rolls back, leaves
    nothing: no claim, no writes, no response. Concurrent callers of the same
    key wait for the first transaction to end, then replay it (or claim the
    key if it rolled back). ``using`` defaults to Sentinel's alias; ``sentinel``
    to :func:`get_sentinel` (only its namespace and serializers are used). Needs
    Django's psycopg 3 backend.
    """
    from django.core.exceptions import ImproperlyConfigured
    from django.db import transaction

    alias = using or database_alias()
    connection = check_postgresql(alias)
    s = sentinel if sentinel is not None else get_sentinel()
    with transaction.atomic(using=alias):
        connection.ensure_connection()
        raw = connection.connection
        if not isinstance(raw, psycopg.Connection):
            raise ImproperlyConfigured(
                f"atomic_once needs Django's psycopg 3 backend; the database alias {alias!r} uses "
                f"{type(raw).__module__} (pip install 'psycopg[binary]')"
            )
        with connection.cursor() as cursor:
            cursor.execute("select 1")  # begin the server transaction now: Sentinel's block becomes a savepoint
        conn = cast("psycopg.Connection[Any]", BorrowedConnection(raw))
        with s.transaction(key, conn, ttl_ms=ttl_ms, hard_ttl_ms=hard_ttl_ms, fingerprint=fingerprint,
                           retain_ms=retain_ms) as tx:
            yield tx

"""Sentinel for Django (``pip install 'sentinel-coordination[django]'``; Django 4.2 to 6.x).

Settings::

    INSTALLED_APPS = [..., "sentinel.contrib.django"]      # app label "sentinel"
    SENTINEL = {"DATABASE": "default", "NAMESPACE": "shop", "DEFAULT_TTL_MS": 5000}   # all optional

- ``python manage.py migrate`` installs the same schema as ``sentinel.init_db``:
  one Django migration per packaged SQL file, each recorded in Sentinel's ledger
  ``sentinel.migrations`` too, so ``init_db``, ``sentinel status`` and
  ``manage.py migrate`` agree whichever ran first. Not reversible (see
  :mod:`sentinel.contrib.django.operations`).
- ``Sentinel()`` without arguments connects to ``SENTINEL["DATABASE"]``'s
  database (NAME, USER, PASSWORD, HOST, PORT, OPTIONS), with its namespace and
  default lease; a database that is not PostgreSQL raises
  ``ImproperlyConfigured``. :func:`get_sentinel` is one shared per process.
- ``@idempotent_view`` makes a view honour the ``Idempotency-Key`` header
  (:mod:`sentinel.contrib.django.decorators`).
- :func:`atomic_once` records the claim and the response in Django's own
  transaction, together with your ORM writes.

Transactions: the claim is committed on Sentinel's own connection
---------------------------------------------------------------------

``Sentinel.once()`` must commit its claim *before* the function starts (that
is what keeps a second worker from starting it), so it never uses Django's
connection: it uses its own small pool of connections to the same database
(built from the Django settings). Consequently, inside ``transaction.atomic()``:

- ``once()`` commits its claim and then the response on its own: other
  connections see the record while your atomic block is still open, and it
  stays when your block rolls back;
- what the function writes through the ORM belongs to *your* transaction and
  rolls back with it, while Sentinel keeps saying the key completed.

So call ``once()`` (or an ``@idempotent_view``) outside ``atomic()`` (and
without ``ATOMIC_REQUESTS`` for those views) when its function writes to the
database, or, when the work is only database writes, use :func:`atomic_once`:
the claim, your writes and the response then commit or roll back together in
Django's transaction (concurrent callers wait, no heartbeat, no uncertain
state), which needs Django's psycopg 3 backend.

In tests: Sentinel's connection does not see data that a ``TestCase``'s
transaction has not committed, and Sentinel's records are not rolled back
between tests; use a fresh key (or namespace) per test.
"""

from __future__ import annotations

from .conf import conninfo_for_alias, database_alias, get_sentinel, reset_sentinel, sentinel_defaults
from .db import atomic_once
from .decorators import (
    REPLAYED_HEADER,
    STORED_HEADERS,
    idempotent_view,
    record_key,
    request_fingerprint,
    user_scope,
)

__all__ = [
    "idempotent_view",
    "user_scope",
    "record_key",
    "request_fingerprint",
    "REPLAYED_HEADER",
    "STORED_HEADERS",
    "atomic_once",
    "get_sentinel",
    "reset_sentinel",
    "sentinel_defaults",
    "conninfo_for_alias",
    "database_alias",
]

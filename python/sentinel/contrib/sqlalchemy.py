"""Sentinel's transactional mode on SQLAlchemy's own connection: ``transaction()`` and ``async_transaction()``.

``pip install 'sentinel-coordination[sqlalchemy]'`` (SQLAlchemy 2, the
``postgresql+psycopg`` driver, i.e. psycopg 3). When the work is writes to the
database Sentinel lives in, the claim, your ORM (or Core) writes and the
recorded response commit in ONE transaction of your ``Session`` or
``Connection``::

    with transaction(s, f"order-{order_id}", session) as tx:
        if tx.acquired:
            session.add(Payment(order_id=order_id, amount=amount))
            session.flush()
            tx.complete({"order_id": order_id})
    response = tx.response            # fresh, or replayed (tx.replayed)

This is :meth:`sentinel.Sentinel.transaction` given SQLAlchemy's underlying
psycopg connection, plus what SQLAlchemy needs:

- the block runs in ``begin()`` when the session (or connection) has no
  transaction yet, so it commits as the block ends; inside your transaction,
  in ``begin_nested()``, so it commits when *your* transaction does;
- Sentinel's block runs in a SQLAlchemy savepoint (``begin_nested()``),
  the only savepoint: SQLAlchemy releases it, or rolls it back when the block
  raises (objects added in it are expunged) or a flush in it fails, and
  psycopg never begins or commits a transaction of its own on the connection;
- the session is flushed as the block ends, inside that savepoint, so the
  writes it holds go into the claim's transaction, and a write that fails
  there rolls the claim back with it (your transaction goes on);
- Sentinel's queries parse ``jsonb`` themselves, whatever
  ``json_deserializer`` the engine has.

A block that raises, or a transaction of yours that rolls back, leaves
nothing: no claim, no writes, no response; the key runs again next time.
Concurrent callers of the same key wait for the first transaction to end,
then replay it (or claim the key if it rolled back). No heartbeat runs: keep
the block short.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Optional, Union, cast

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .._client import Sentinel, Transaction
from .._client_async import AsyncSentinel, AsyncTransaction
from ._borrowed import AsyncBorrowedConnection, BorrowedConnection

if TYPE_CHECKING:  # sqlalchemy.ext.asyncio needs greenlet (sqlalchemy[asyncio]); the sync path does not
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["transaction", "async_transaction"]


class _JsonbConnection(BorrowedConnection):
    """SQLAlchemy's psycopg connection as Sentinel's block uses it.

    Its cursors made here load jsonb as Python values; ``transaction()`` opens
    nothing, since the block already runs in a SQLAlchemy savepoint, which
    SQLAlchemy alone rolls back or releases (a psycopg savepoint nested in it
    would not survive SQLAlchemy rolling its own back after a failed flush).
    """

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext()


class _AsyncJsonbConnection(AsyncBorrowedConnection):
    """:class:`_JsonbConnection` for an async psycopg connection."""

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext()


def _wrong_driver(what: str, raw: Any, wanted: str) -> TypeError:
    return TypeError(
        f"{what} needs SQLAlchemy's postgresql+psycopg driver (psycopg 3{wanted}); this connection is a "
        f"{type(raw).__module__}.{type(raw).__name__}: create the engine with a 'postgresql+psycopg://' URL "
        "(pip install 'psycopg[binary]')"
    )


@contextlib.contextmanager
def transaction(
    sentinel: Sentinel,
    key: str,
    bind: Union[Session, Connection],
    *,
    ttl_ms: Optional[int] = None,
    hard_ttl_ms: Optional[int] = None,
    fingerprint: Optional[str] = None,
    retain_ms: Optional[int] = None,
) -> Iterator[Transaction]:
    """Claim ``key``, do your writes on ``bind`` and record the response in ONE transaction of ``bind``.

    ``bind`` is a SQLAlchemy ``Session`` or ``Connection`` on the
    ``postgresql+psycopg`` driver; ``sentinel`` a :class:`~sentinel.Sentinel`
    (only its namespace, serializers and observers are used: the block runs on
    ``bind``'s connection). A block that acquired the key must call
    ``tx.complete(response)``; ``tx.replayed``, ``tx.execution_alive`` and
    ``tx.uncertain`` tell what happened otherwise. The options are those of
    :meth:`sentinel.Sentinel.transaction`.
    """
    if not isinstance(sentinel, Sentinel):
        raise TypeError(f"transaction() needs a Sentinel, not {type(sentinel).__name__} "
                        "(for an AsyncSession or AsyncConnection: async_transaction() with an AsyncSentinel)")
    if not isinstance(bind, (Session, Connection)):
        raise TypeError(f"transaction() needs a SQLAlchemy Session or Connection, not {type(bind).__name__}")
    outer = bind.begin() if not bind.in_transaction() else contextlib.nullcontext()
    with outer, bind.begin_nested():  # the block's savepoint, owned by SQLAlchemy
        connection = bind.connection() if isinstance(bind, Session) else bind
        raw = connection.connection.driver_connection
        if not isinstance(raw, psycopg.Connection):
            raise _wrong_driver("transaction()", raw, "")
        conn = cast("psycopg.Connection[Any]", _JsonbConnection(raw))
        with sentinel.transaction(key, conn, ttl_ms=ttl_ms, hard_ttl_ms=hard_ttl_ms, fingerprint=fingerprint,
                                  retain_ms=retain_ms) as tx:
            yield tx
        if isinstance(bind, Session):
            # The session's pending writes join the claim's transaction, inside the SQLAlchemy savepoint: a
            # flush that fails rolls that savepoint back (SQLAlchemy does so itself), the claim with it.
            bind.flush()


@contextlib.asynccontextmanager
async def async_transaction(
    sentinel: AsyncSentinel,
    key: str,
    bind: Union[AsyncSession, AsyncConnection],
    *,
    ttl_ms: Optional[int] = None,
    hard_ttl_ms: Optional[int] = None,
    fingerprint: Optional[str] = None,
    retain_ms: Optional[int] = None,
) -> AsyncIterator[AsyncTransaction]:
    """:func:`transaction` for an ``AsyncSession`` or ``AsyncConnection`` (``postgresql+psycopg``) and an AsyncSentinel.

    ::

        async with async_transaction(s, f"order-{order_id}", session) as tx:
            if tx.acquired:
                session.add(Payment(order_id=order_id, amount=amount))
                await tx.complete({"order_id": order_id})
    """
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if not isinstance(sentinel, AsyncSentinel):
        raise TypeError(f"async_transaction() needs an AsyncSentinel, not {type(sentinel).__name__} "
                        "(for a Session or Connection: transaction() with a Sentinel)")
    if not isinstance(bind, (AsyncSession, AsyncConnection)):
        raise TypeError(f"async_transaction() needs a SQLAlchemy AsyncSession or AsyncConnection, not "
                        f"{type(bind).__name__}")
    async with contextlib.AsyncExitStack() as stack:
        if not bind.in_transaction():
            await stack.enter_async_context(bind.begin())
        await stack.enter_async_context(bind.begin_nested())
        connection = await bind.connection() if isinstance(bind, AsyncSession) else bind
        raw = (await connection.get_raw_connection()).driver_connection
        if not isinstance(raw, psycopg.AsyncConnection):
            raise _wrong_driver("async_transaction()", raw, ", its async connection")
        conn = cast("psycopg.AsyncConnection[Any]", _AsyncJsonbConnection(raw))
        async with sentinel.transaction(key, conn, ttl_ms=ttl_ms, hard_ttl_ms=hard_ttl_ms, fingerprint=fingerprint,
                                        retain_ms=retain_ms) as tx:
            yield tx
        if isinstance(bind, AsyncSession):
            await bind.flush()

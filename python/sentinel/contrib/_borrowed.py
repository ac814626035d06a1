"""A framework's own psycopg connection, as Sentinel's ``transaction()`` block uses it.

Django and SQLAlchemy register loaders of their own on the connections they
hand out (jsonb as text, or through their own deserialiser). The cursors this
wrapper makes load jsonb as Python values, as Sentinel's protocol calls
expect; every other attribute is the framework's connection's.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import JsonbLoader


class BorrowedConnection:
    """A framework's sync psycopg connection whose cursors made here load jsonb as Python values."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self._raw = raw

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        cur = self._raw.cursor()
        cur.adapters.register_loader("jsonb", JsonbLoader)
        return cur.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class AsyncBorrowedConnection:
    """:class:`BorrowedConnection` for an async psycopg connection."""

    def __init__(self, raw: psycopg.AsyncConnection[Any]) -> None:
        self._raw = raw

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        cur = self._raw.cursor()
        cur.adapters.register_loader("jsonb", JsonbLoader)
        return await cur.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

"""Both drivers behind one API, so the suite that uses the ``client`` fixture runs on each.

``Sentinel`` is generated from ``AsyncSentinel``'s source; this runs the tests
written against the sync API on the asyncio driver too: :class:`OnLoop` puts an
``AsyncSentinel`` on an event loop of its own thread and waits for each call,
so a test's threads, functions and probes see the same behaviour from either.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable, Coroutine

import sentinel


class OnLoop:
    """An :class:`sentinel.AsyncSentinel` with the sync API: each coroutine method runs on the client's loop."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="async-driver", daemon=True)
        self._thread.start()
        self._client = sentinel.AsyncSentinel(**options)
        self._run(self._client.open())

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._run(attr(*args, **kwargs))

            return call
        return attr

    def idempotent(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        decorate = self._client.idempotent(*args, **kwargs)

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            wrapped = decorate(fn)
            return lambda *a, **kw: self._run(wrapped(*a, **kw))

        return wrap

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> OnLoop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make(driver: str, **options: Any) -> Any:
    """A client of ``driver`` ("sync" or "async") with these options."""
    return sentinel.Sentinel(**options) if driver == "sync" else OnLoop(**options)

"""Both drivers behind one API, so the suite that uses the ``client`` fixture runs on each.

``Sentinel`` is generated from ``AsyncSentinel``'s source; this runs the tests
written against the sync API on the asyncio driver too: :class:`OnLoop` puts an
``AsyncSentinel`` on an event loop of its own thread and waits for each call,
so a test's threads, functions and probes see the same behaviour from either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any, Callable, Coroutine, Optional

import sentinel


class OnLoop:
    """An :class:`sentinel.AsyncSentinel` with the sync API: each coroutine method runs on the client's loop."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._start()

    def _start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._died: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, name="async-driver", daemon=True)
        self._thread.start()
        self._client = sentinel.AsyncSentinel(**self._options)
        self._run(self._client.open())

    def _serve(self) -> None:
        try:
            self._loop.run_forever()
        except BaseException as exc:  # KeyboardInterrupt or SystemExit in a task ends the loop, as in asyncio.run
            self._died = exc

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if self._thread.is_alive():
                    continue
                died = self._died
                if died is None:
                    raise RuntimeError("the event loop of the async driver stopped") from None
                # What asyncio.run() raises to its caller; a program that goes on starts a new loop (and
                # client), as this one does for the next call.
                self._loop.run_until_complete(self._client.close())
                self._loop.close()
                self._start()
                raise died from None

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

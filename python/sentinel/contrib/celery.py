"""Celery tasks whose body runs at most once per key (``pip install 'sentinel-coordination[celery]'``).

::

    from celery import Celery
    from sentinel.contrib.celery import SentinelTask, configure

    app = Celery("shop", broker=...)
    configure(app, conninfo="postgresql://app@db/shop", namespace="shop")

    @app.task(base=SentinelTask, bind=True, acks_late=True, reject_on_worker_lost=True,
              sentinel_key=lambda order_id, amount: f"charge-order-{order_id}",
              sentinel_hard_ttl_ms=600_000)
    def charge(self, order_id, amount):
        ...

Each delivery of a :class:`SentinelTask` message runs the task body through
:meth:`sentinel.Sentinel.once`, under a key taken from the task id (default)
or computed by ``sentinel_key`` from the task's arguments:

- the first delivery runs the body and records its return value;
- a later delivery of a completed key (a redelivered message, a duplicate, a
  retry) returns the recorded value without running the body;
- while the key runs in another worker, the delivery retries later with
  Celery's ``retry`` (countdown ``sentinel_retry_countdown``, default the
  task's ``default_retry_delay``; it counts toward ``max_retries``, after
  which the task fails with :class:`TaskInProgress`);
- when an execution started and its outcome is unknown (its worker died or
  lost its lease mid-task) the task fails with :class:`TaskOutcomeUncertain`,
  is not retried, and the ``sentinel.contrib.celery`` logger writes, at
  ERROR, the ``sentinel reconcile`` commands that resolve the key;
- a body that raised was recorded as failed: a retry runs it again (unless
  the exception is in ``sentinel_permanent``, then the failure is replayed as
  :class:`TaskPermanentFailure`).

:func:`configure` tells an app how to build its ``Sentinel``; each process
builds its own on first use (a prefork worker's pool processes never share
their parent's), and closes it when the process shuts down.
"""

from __future__ import annotations

import inspect
import logging
import os
import shlex
import threading
import types
import weakref
from typing import Any, Callable, Dict, Optional, Tuple, Type

from celery import Task, signals

from .._client import Sentinel
from .._events import Probe
from .._results import Result
from ..errors import (
    DatabaseUnavailable,
    ExecutionInProgress,
    InvalidKey,
    KeyMismatch,
    OutcomeUncertain,
    PermanentFailure,
    SentinelError,
)

__all__ = [
    "SentinelTask",
    "configure",
    "get_sentinel",
    "NotConfigured",
    "TaskInProgress",
    "TaskKeyMismatch",
    "TaskOutcomeUncertain",
    "TaskPermanentFailure",
    "reconcile_commands",
]

logger = logging.getLogger(__name__)

#: The task options :class:`SentinelTask` reads (``@app.task(base=SentinelTask, sentinel_...=...)``).
OPTIONS = (
    "sentinel_key",
    "sentinel_ttl_ms",
    "sentinel_hard_ttl_ms",
    "sentinel_wait_ms",
    "sentinel_retry_countdown",
    "sentinel_fingerprint",
    "sentinel_retain_ms",
    "sentinel_permanent",
    "sentinel_on_uncertain",
)


# -- exceptions a result backend can rebuild ---------------------------------------------------
#
# A result backend stores an exception as its class and ``args`` and rebuilds it as ``cls(*args)``; the
# core's exceptions take the Result as a keyword, so these keep (message, namespace, key) as their args.


class NotConfigured(SentinelError, RuntimeError):
    """A :class:`SentinelTask` ran in an app that :func:`configure` was never called for."""


class _Rebuildable:
    """Keeps ``(message, namespace, key)`` as ``args``, so a result backend can rebuild the exception."""

    args: Tuple[Any, ...]

    def _keep(self, message: str, namespace: str, key: str) -> None:
        self.args = (message, namespace, key)
        self.namespace = namespace
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class TaskInProgress(_Rebuildable, ExecutionInProgress):
    """The key runs in another worker, and the task used up its retries waiting for it."""

    def __init__(self, message: str, namespace: str = "", key: str = "", *, result: Any = None) -> None:
        super().__init__(message, result=result)
        self._keep(message, namespace, key)


class TaskOutcomeUncertain(_Rebuildable, OutcomeUncertain):
    """An execution of the key started and its outcome is unknown: reconcile it, then send the task again."""

    def __init__(self, message: str, namespace: str = "", key: str = "", *, result: Any = None) -> None:
        super().__init__(message, result=result)
        self._keep(message, namespace, key)


class TaskKeyMismatch(_Rebuildable, KeyMismatch):
    """The key was first used with other arguments (another fingerprint): a key reused for different work."""

    def __init__(self, message: str, namespace: str = "", key: str = "") -> None:
        super().__init__(message, namespace=namespace, key=key)
        self._keep(message, namespace, key)


class TaskPermanentFailure(_Rebuildable, PermanentFailure):
    """The key's failure was recorded as permanent (``sentinel_permanent``, or reconciled as failed)."""

    def __init__(self, message: str, namespace: str = "", key: str = "", *, result: Any = None) -> None:
        super().__init__(message, result=result)
        self._keep(message, namespace, key)


# -- one Sentinel per process ----------------------------------------------------------------------


class _PerProcess:
    """Builds the app's ``Sentinel`` in each process on first use; never hands a parent's to a child."""

    def __init__(self, factory: Callable[[], Sentinel]) -> None:
        self.factory = factory
        self._lock = threading.Lock()
        self._pid = 0
        self._client: Optional[Sentinel] = None

    def get(self) -> Sentinel:
        client, pid = self._client, os.getpid()
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._client is None or self._pid != pid:
                built = self.factory()
                if not isinstance(built, Sentinel):
                    raise TypeError(
                        f"the factory given to sentinel.contrib.celery.configure() returned "
                        f"{type(built).__name__}, not a sentinel.Sentinel (Celery tasks are sync: AsyncSentinel "
                        "does not fit)"
                    )
                self._client, self._pid = built, pid
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            mine = self._pid == os.getpid()
        if client is not None and mine:
            client.close()


_apps: weakref.WeakKeyDictionary[Any, _PerProcess] = weakref.WeakKeyDictionary()
_apps_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A lock some thread of the parent held at the fork would stay held in the child for ever: new ones."""
    global _apps_lock
    _apps_lock = threading.Lock()
    for holder in list(_apps.values()):
        holder._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(app: Any, factory: Optional[Callable[[], Sentinel]] = None, **options: Any) -> None:
    """Tell ``app`` how its :class:`SentinelTask` tasks get their ``Sentinel``.

    Either ``options``, the arguments of :class:`sentinel.Sentinel`
    (``conninfo=``, ``namespace=``, ``default_ttl_ms=``, ...), or
    ``factory``, a callable returning a new ``Sentinel``: use it for a client
    on your own ``psycopg_pool`` pool, which must be created in the process
    that uses it. With neither, ``Sentinel()`` takes its settings from a
    configured Django project. Each process (each pool process of a prefork
    worker) builds its own client on its first task and closes it when it
    shuts down. Calling it again replaces the app's client.
    """
    if factory is not None and options:
        raise TypeError(
            "configure() takes either factory= or the Sentinel options "
            f"({', '.join(sorted(options))}), not both: put the options in the factory"
        )
    if factory is None:
        try:
            inspect.signature(Sentinel).bind(**options)
        except TypeError as exc:
            raise TypeError(f"configure(): {exc}; it takes the keyword arguments of sentinel.Sentinel") from None

        def factory() -> Sentinel:
            return Sentinel(**options)
    elif not callable(factory):
        raise TypeError(f"configure(factory=...) must be a callable returning a Sentinel, got {factory!r}")
    with _apps_lock:
        old = _apps.get(app)
        _apps[app] = _PerProcess(factory)
    if old is not None:
        old.close()


def get_sentinel(app: Any) -> Sentinel:
    """This process's ``Sentinel`` for ``app`` (built on first use, see :func:`configure`)."""
    holder = _apps.get(app)
    if holder is None:
        raise NotConfigured(
            f"the Celery app {getattr(app, 'main', None) or app!r} has SentinelTask tasks but no Sentinel: call "
            "sentinel.contrib.celery.configure(app, conninfo=..., namespace=...) where the app is created"
        )
    return holder.get()


def _close_clients(**_: Any) -> None:
    """At a worker process's shutdown: close the clients this process built."""
    with _apps_lock:
        holders = list(_apps.values())
    for holder in holders:
        holder.close()


signals.worker_process_shutdown.connect(_close_clients, weak=False, dispatch_uid="sentinel.contrib.celery.child")
signals.worker_shutdown.connect(_close_clients, weak=False, dispatch_uid="sentinel.contrib.celery.worker")


# -- the task ---------------------------------------------------------------------------------------


def reconcile_commands(namespace: str, key: str) -> Tuple[str, str]:
    """The ``sentinel reconcile`` commands an operator runs for an uncertain key: (it happened, it did not)."""
    where = f"{shlex.quote(key)} --namespace {shlex.quote(namespace)}"
    return (
        f"sentinel reconcile {where} --as completed --response JSON --reason TEXT",
        f"sentinel reconcile {where} --release --reason TEXT",
    )


def _check_ms(name: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise TypeError(f"{name} must be an int of milliseconds >= {minimum} (or None), got {value!r}")


def _check_options(cls: type, given: Dict[str, Any]) -> None:
    """Refuse an unknown ``sentinel_*`` option or a value of the wrong kind, when the task is defined."""
    unknown = sorted(name for name in given if name.startswith("sentinel_") and name not in OPTIONS)
    if unknown:
        raise TypeError(f"task {cls.__name__}: unknown option(s) {unknown}; SentinelTask reads {list(OPTIONS)}")
    for name in ("sentinel_key", "sentinel_on_uncertain"):
        value = given.get(name)
        if value is not None and not callable(value):
            raise TypeError(f"task {cls.__name__}: {name} must be a callable (or None), got {value!r}")
    _check_ms("sentinel_ttl_ms", given.get("sentinel_ttl_ms"), 1)
    _check_ms("sentinel_hard_ttl_ms", given.get("sentinel_hard_ttl_ms"), 1)
    _check_ms("sentinel_retain_ms", given.get("sentinel_retain_ms"), 0)
    _check_ms("sentinel_wait_ms", given.get("sentinel_wait_ms"), 0)
    countdown = given.get("sentinel_retry_countdown")
    if countdown is not None and (isinstance(countdown, bool) or not isinstance(countdown, (int, float))
                                  or countdown < 0):
        raise TypeError(f"sentinel_retry_countdown must be seconds >= 0 (or None), got {countdown!r}")
    fingerprint = given.get("sentinel_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, (str, bool)):
        raise TypeError(f"sentinel_fingerprint must be a str, True, False or None, got {fingerprint!r}")
    permanent = given.get("sentinel_permanent", ())
    if not isinstance(permanent, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in permanent):
        raise TypeError(f"sentinel_permanent must be a tuple of exception classes, got {permanent!r}")


class SentinelTask(Task):  # type: ignore[misc]
    """A Celery task base class whose body runs at most once per key across deliveries.

    Use it as ``@app.task(base=SentinelTask, ...)`` (or subclass it); the
    app needs :func:`configure`. Options, given to ``@app.task`` or set in a
    subclass:

    - ``sentinel_key``: a callable of the task's arguments returning the key
      (``lambda order_id, amount: f"charge-order-{order_id}"``, without
      ``self`` for a bound task). Default: ``celery:<task name>:<task id>``,
      so a redelivery or retry of the message, or another message sent with
      the same ``task_id``, shares the key;
    - ``sentinel_ttl_ms``, ``sentinel_hard_ttl_ms``: the lease and the hard
      deadline (:meth:`sentinel.Sentinel.once`; default the client's). Set
      the hard deadline to the longest the body may take;
    - ``sentinel_wait_ms``: when another worker runs the key, wait that long
      for its outcome before retrying (default 0);
    - ``sentinel_retry_countdown``: seconds before a delivery that found the
      key running retries (default the task's ``default_retry_delay``);
    - ``sentinel_fingerprint``, ``sentinel_retain_ms``, ``sentinel_permanent``,
      ``sentinel_on_uncertain``: ``once()``'s ``fingerprint``, ``retain_ms``,
      ``permanent`` and ``on_uncertain``.

    Inside the body, :func:`sentinel.current_execution` gives the execution's
    fence and lease.
    """

    sentinel_key: Optional[Callable[..., str]] = None
    sentinel_ttl_ms: Optional[int] = None
    sentinel_hard_ttl_ms: Optional[int] = None
    sentinel_wait_ms: int = 0
    sentinel_retry_countdown: Optional[float] = None
    sentinel_fingerprint: Optional[Any] = None
    sentinel_retain_ms: Optional[int] = None
    sentinel_permanent: Tuple[Type[BaseException], ...] = ()
    sentinel_on_uncertain: Optional[Probe] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        given = dict(cls.__dict__)
        _check_options(cls, given)
        for name in ("sentinel_key", "sentinel_on_uncertain"):
            # @app.task puts its options in the class: a plain function there would become a method.
            if isinstance(given.get(name), types.FunctionType):
                setattr(cls, name, staticmethod(given[name]))

    def sentinel_key_for(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
        """The key of this call: ``sentinel_key(*args, **kwargs)``, or ``celery:<task name>:<task id>``."""
        compute = self.sentinel_key
        if compute is not None:
            key = compute(*args, **kwargs)
            if not isinstance(key, str) or not key:
                raise InvalidKey(f"task {self.name}: sentinel_key returned {key!r}; it must return a non-empty str")
            return key
        task_id = self.request.id
        if not task_id:
            raise InvalidKey(
                f"task {self.name} was called directly, without a task id to key on: send it (delay(), "
                "apply_async(), apply()) or give it sentinel_key=... computing the key from its arguments"
            )
        return f"celery:{self.name}:{task_id}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self.sentinel_key_for(args, kwargs)
        client = get_sentinel(self.app)
        body = super().__call__
        started = False

        def run(*a: Any, **kw: Any) -> Any:
            nonlocal started
            started = True
            return body(*a, **kw)

        try:
            result = client.once(
                key, run, args, kwargs, ttl_ms=self.sentinel_ttl_ms, hard_ttl_ms=self.sentinel_hard_ttl_ms,
                wait_ms=self.sentinel_wait_ms, fingerprint=self.sentinel_fingerprint,
                retain_ms=self.sentinel_retain_ms, permanent=tuple(self.sentinel_permanent),
                on_uncertain=self.sentinel_on_uncertain,
            )
        except (KeyMismatch, DatabaseUnavailable) as exc:
            if started:  # the body's own
                raise
            if isinstance(exc, KeyMismatch):
                raise TaskKeyMismatch(
                    f"{exc.namespace}/{exc.key} was first used with other arguments: a key reused for different "
                    "work (check sentinel_key; sentinel_fingerprint=False opts out)", exc.namespace, exc.key,
                ) from exc
            # Nothing ran: this delivery may try again (a claim it may have left reads uncertain, never re-runs).
            logger.warning("%s[%s]: %s; nothing ran, retrying", self.name, self.request.id, exc)
            raise self.retry(exc=exc, countdown=self.sentinel_retry_countdown) from exc
        return self._answer(result)

    def _answer(self, result: Result) -> Any:
        where = f"{result.namespace}/{result.key}"
        if result.execution_alive:
            logger.info("%s[%s]: %s is running in another worker; retrying later", self.name, self.request.id,
                        where)
            busy = TaskInProgress(f"{where} is running in another worker (fence {result.fence})",
                                  result.namespace, result.key, result=result)
            raise self.retry(exc=busy, countdown=self.sentinel_retry_countdown)
        if result.uncertain:
            happened, did_not = reconcile_commands(result.namespace, result.key)
            logger.error(
                "%s[%s]: %s is uncertain: an execution started under fence %s and its outcome is unknown (a "
                "worker died or lost its lease mid-task); not retried. Find out whether it happened, record it "
                "with `%s` or, if it did not, `%s`, then send the task again",
                self.name, self.request.id, where, result.fence, happened, did_not,
            )
            raise TaskOutcomeUncertain(
                f"{where}: the outcome of fence {result.fence} is unknown (a worker died or lost its lease "
                f"mid-task); not retried: reconcile it (`{happened}` or `{did_not}`), then send the task again",
                result.namespace, result.key, result=result,
            )
        if result.failed:
            raise TaskPermanentFailure(f"{where} failed permanently: {result.error}", result.namespace, result.key,
                                       result=result)
        if result.replayed:
            logger.info("%s[%s]: %s already completed; returning its recorded result", self.name,
                        self.request.id, where)
        return result.response

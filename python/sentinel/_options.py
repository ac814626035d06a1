"""The checked arguments of the clients: limits, options, one call's arguments, retry schedules."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type

from ._logs import held_back, one_line
from ._logs import throttle as _throttle
from ._support import default_dumps
from .errors import (
    DatabaseUnavailable,
    InvalidArgument,
    InvalidKey,
    InvalidNamespace,
    InvalidTTL,
    KeyLocked,
    SerializationConflict,
)

__all__ = ["Options", "RecordRetry"]

logger = logging.getLogger("sentinel")

# -- generated from sql/protocol.json by tools/gen_protocol.py: do not edit by hand --
#: The protocol's limits, as the SQL functions enforce them (sql/protocol.json).
MAX_KEY_BYTES = 1_024
NAMESPACE_PATTERN = '^[a-z0-9][a-z0-9_.-]{0,62}$'
MAX_TTL_MS = 2_592_000_000
MAX_RETAIN_MS = 3_153_600_000_000
MAX_OWNER_CHARS = 200
MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 1_000
MAX_FINGERPRINT_CHARS = 200
MAX_ROWS = 10_000
# -- end of the generated part --
NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)

_ACQUIRE_SQL = (
    "select outcome, fence, state, attempt, response, error, claimed_at, lease_expires_at,"
    " hard_expires_at, now from sentinel.acquire_v2(%s, %s, %s, %s, %s, true, %s, %s)"
)
# The same answer in one statement that reads a decided key from sentinel.decided_v1 (a primary-key read)
# and calls acquire_v2 only when there is none with this fingerprint: acquire_v2 decides everything else.
# A decided answer needs no timestamps (they are NULL). Its parameters: (ns, key, fp, ns, key, owner, ttl,
# hard, fp, token). Its plan is worth having only when prepared: see acquire_statement().
_ACQUIRE_DECIDED_SQL = (
    "with d as materialized ("
    "select v.outcome, v.fence, v.state, v.attempt, v.response, v.error from sentinel.decided_v1 v"
    " where v.namespace = %s and v.key = %s and v.fingerprint is not distinct from %s)"
    " select d.*, null::timestamptz, null::timestamptz, null::timestamptz, null::timestamptz from d"
    " union all"
    " select a.outcome, a.fence, a.state, a.attempt, a.response, a.error, a.claimed_at, a.lease_expires_at,"
    " a.hard_expires_at, a.now"
    " from sentinel.acquire_v2(%s, %s, %s, %s, %s, true, %s, %s) a"
    " where not exists (select from d)"
)


def acquire_statement(conn: Any, ns: str, key: str, owner: str, ttl: int, hard: int, fingerprint: Optional[str],
                      token: str) -> Tuple[str, Tuple[Any, ...]]:
    """once()'s acquire: the query and its parameters for this connection.

    A connection that prepares its statements (``prepare_threshold`` set)
    reads a decided key through ``sentinel.decided_v1`` in the same
    statement, so a replay costs a primary-key read; planning that statement
    afresh on every call would cost more than it saves, so a connection that
    does not prepare calls ``acquire_v2`` alone.
    """
    if getattr(conn, "prepare_threshold", None) is None:
        return _ACQUIRE_SQL, (ns, key, owner, ttl, hard, fingerprint, token)
    return _ACQUIRE_DECIDED_SQL, (ns, key, fingerprint, ns, key, owner, ttl, hard, fingerprint, token)


# The calls that change a claim present its token: (namespace, key, fence, token, ...).
_COMPLETE_SQL = "select outcome, state from sentinel.complete_v3(%s, %s, %s, %s, %s::jsonb, %s)"
_FAIL_SQL = "select outcome, state from sentinel.fail_v3(%s, %s, %s, %s, %s::jsonb, %s, %s)"
_ABANDON_SQL = "select outcome, state from sentinel.abandon_v2(%s, %s, %s, %s, %s)"


@dataclass(frozen=True)
class _Call:
    """The checked arguments of one once() call."""

    key: str
    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    ttl: int
    hard: int
    fingerprint: Optional[str]
    pass_context: bool
    retain_ms: Optional[int]
    permanent: Tuple[Type[BaseException], ...]
    #: the call gave neither ttl_ms nor hard_ttl_ms: it runs under the client's defaults
    defaulted: bool = False

    @property
    def token(self) -> str:
        """Drawn per call when first asked (a cached replay never is): sent with acquire_v2, it is the proof of
        the claim every later call presents. Only the calling thread draws it (``_AcquireRetry`` asks first)."""
        token: Optional[str] = self.__dict__.get("_token")
        if token is None:
            token = secrets.token_hex(16)
            object.__setattr__(self, "_token", token)
        return token


class _AcquireRetry:
    """The retry of an acquire whose reply may have been lost (sync and async paths alike).

    Each call draws a random token (``_Call.token``) and sends it with ``acquire_v2``. When the
    connection breaks after the statement went out, the claim may have been
    committed without our knowing it: the same call asks again, with the same
    token, and the database hands the claim back (same fence) if it was made.
    It retries with backoff while that claim's lease would still live, never
    when the statement never left (nothing can have been claimed then).
    """

    __slots__ = ("token", "retries", "_asked", "_answered", "_until", "_delay", "_ttl_s", "_conflicts")

    def __init__(self, call: _Call) -> None:
        self.token = call.token
        self.retries = 0
        self._asked = False  # an acquire went out
        self._answered = False  # ... and its answer came back: never ask again after that
        self._until = 0.0
        self._delay = 0.05
        self._ttl_s = call.ttl / 1000.0
        self._conflicts = 0

    def after_conflict(self) -> Optional[float]:
        """Seconds to wait before asking again after a serialization conflict, or None after too many."""
        self._conflicts += 1
        if self._conflicts > 50:
            return None
        return float(min(0.002 * 2 ** min(self._conflicts, 8), 0.2) * (0.5 + random.random()))

    def asking(self) -> None:
        if not self._asked:
            self._until = time.monotonic() + self._ttl_s  # the claim, if made, lives at least this long
        self._asked = True

    def answered(self) -> None:
        self._answered = True

    def after(self, exc: BaseException, ns: str, key: str) -> Optional[float]:
        """Seconds to wait before asking again, or None to give up with ``exc``."""
        if not self._asked or self._answered:
            return None  # nothing went out (nothing claimed), or the answer came: the run's own errors
        remaining = self._until - time.monotonic()
        if remaining <= 0:
            logger.error("%s/%s: the reply to acquire was lost and the database stayed out of reach for "
                         "a whole lease; if the claim was made, it reads uncertain now", ns, key)
            return None
        self.retries += 1
        pause = min(self._delay * (0.5 + random.random()), remaining)
        self._delay = min(self._delay * 2, 1.0)
        logger.warning("%s/%s: the reply to acquire was lost (%s); asking again as the same call",
                       ns, key, exc)
        return pause


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKey("key must be a non-empty string")
    if "\x00" in key:
        raise InvalidKey("key must not contain NUL characters (\\x00)")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long in UTF-8; the maximum is {MAX_KEY_BYTES}")
    return key


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidNamespace(
            f"invalid namespace {namespace!r}: use 1 to 63 characters of a-z, 0-9, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return namespace


def _check_ttl(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTTL(f"{name} must be an int number of milliseconds, got {value!r}")
    if value <= 0 or value > MAX_TTL_MS:
        raise InvalidTTL(f"{name} must be between 1 and {MAX_TTL_MS} ms (30 days), got {value}")
    return value


def _check_reply_timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
        raise InvalidArgument(f"reply_timeout must be None or between 1 and 3600 seconds, got {value!r}")
    return float(value)


@contextlib.contextmanager
def _naming(ns: str, key: str) -> Iterator[None]:
    """Name the key in a KeyLocked raised by the block (the database's message cannot)."""
    try:
        yield
    except KeyLocked as exc:
        raise KeyLocked(f"{ns}/{key}: {exc}") from exc.__cause__


def _safe_text(text: str) -> str:
    """``text`` with lone surrogates (``os.fsdecode`` of undecodable bytes) spelled out: jsonb refuses them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _error_document(exc: BaseException, max_chars: int = 4000) -> str:
    """The error stored for a failed execution, as JSON text."""
    message = _safe_text(str(exc)).replace("\x00", "\\0")[:max_chars]
    kind = type(exc)
    return json.dumps({"type": f"{kind.__module__}.{kind.__qualname__}", "message": message})


def _not_started_document(exc: BaseException) -> str:
    """The error recorded when a claim is released because its function never started."""
    return json.dumps({"type": "sentinel.NotStarted",
                       "message": f"{type(exc).__name__} arrived after the claim and before the function started"
                                  f": {_safe_text(str(exc))}"[:4000]})


def _no_function() -> None:  # pragma: no cover - never called: transaction() runs no function
    raise AssertionError


@dataclass(frozen=True)
class Options:
    """The checked options of a client, shared by :class:`Sentinel` and :class:`AsyncSentinel`.

    Built once by the client's constructor (which names and documents each
    option); every value here has passed its check.
    """

    namespace: str
    default_ttl_ms: int
    default_hard_ttl_ms: Optional[int]
    dumps: Callable[[Any], str]
    loads: Callable[[Any], Any]
    fingerprints: bool
    retain_ms: Optional[int]
    permanent_errors: Tuple[Type[BaseException], ...]
    cache_size: int
    cache_ttl_s: float
    listen: bool
    poll_s: float
    reply_s: Optional[float]
    check_schema: bool

    @classmethod
    def checked(  # noqa: PLR0913 - one keyword-only argument per option
        cls, *, namespace: Optional[str], default_ttl_ms: Optional[int], default_hard_ttl_ms: Optional[int],
        dumps: Optional[Callable[[Any], str]], loads: Optional[Callable[[Any], Any]], fingerprints: bool,
        retain_ms: Optional[int], permanent_errors: Tuple[Type[BaseException], ...], cache_size: int,
        cache_ttl_ms: int, listen: bool, poll_interval_ms: int, reply_timeout: Optional[float],
        check_schema: bool,
    ) -> Options:
        """Check every option (raising the error that names it) and fill in the defaults."""
        if retain_ms is not None:
            _check_retain(retain_ms)
        if not isinstance(permanent_errors, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in permanent_errors):
            raise TypeError("permanent_errors must be a tuple of exception classes")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidArgument(f"cache_size must be an int >= 0, got {cache_size!r}")
        return cls(
            namespace=_check_namespace("default" if namespace is None else namespace),
            default_ttl_ms=_check_ttl("default_ttl_ms", 3000 if default_ttl_ms is None else default_ttl_ms),
            default_hard_ttl_ms=(None if default_hard_ttl_ms is None
                                 else _check_ttl("default_hard_ttl_ms", default_hard_ttl_ms)),
            dumps=dumps or default_dumps,
            loads=loads or _same,
            fingerprints=bool(fingerprints),
            retain_ms=retain_ms,
            permanent_errors=permanent_errors,
            cache_size=cache_size,
            cache_ttl_s=_check_ttl("cache_ttl_ms", cache_ttl_ms) / 1000.0,
            listen=bool(listen),
            poll_s=_check_ttl("poll_interval_ms", poll_interval_ms) / 1000.0,
            reply_s=_check_reply_timeout(reply_timeout),
            check_schema=bool(check_schema),
        )


def _same(value: Any) -> Any:
    return value


def _check_retain(retain: Any) -> int:
    if isinstance(retain, bool) or not isinstance(retain, int) or not 0 <= retain <= MAX_RETAIN_MS:
        raise InvalidTTL(f"retain_ms must be None or between 0 and {MAX_RETAIN_MS} ms, got {retain!r}")
    return retain


def _check_wait(wait_ms: Any) -> int:
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or wait_ms < 0 or wait_ms > MAX_TTL_MS:
        raise InvalidTTL(f"wait_ms must be an int between 0 and {MAX_TTL_MS}, got {wait_ms!r}")
    return wait_ms


def _log_extra(ns: str, key: str, fence: int) -> Dict[str, Any]:
    return {"sentinel_namespace": ns, "sentinel_key": key, "sentinel_fence": fence}


class RecordRetry:
    """When to ask again after a recording call failed for a reason that may pass (sync and async alike).

    A lost connection, a lock timeout or a serialization conflict: retried
    with jittered backoff until the execution's hard deadline, past which
    the recording is given up (the key reads uncertain once its lease lapses).
    """

    __slots__ = ("_deadline", "_delay")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._delay = 0.05

    def after(self, exc: BaseException, sql: str, params: Tuple[Any, ...], log_extra: Dict[str, Any],
              ) -> Optional[float]:
        """Seconds to wait before asking again, or None when the deadline has passed."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return None
        held = _throttle(("record", sql, *params[:3]))
        if held is not None:
            logger.warning("recording failed (%s); retrying for up to %.1fs%s", one_line(exc), remaining,
                           held_back(held), extra=log_extra)
        pause = min(self._delay * (0.5 + random.random()), remaining)
        self._delay = min(self._delay * 2, 1.0)
        return pause


#: The errors after which a recording call is asked again (see RecordRetry).
RETRY_RECORDING = (DatabaseUnavailable, KeyLocked, SerializationConflict)



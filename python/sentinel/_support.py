"""Pieces of once() that are not the protocol: serialisation, fingerprints, the local cache, waiting."""

from __future__ import annotations

import collections
import dataclasses
import decimal
import hashlib
import json
import logging
import secrets
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from psycopg import sql

from ._conn import Source

logger = logging.getLogger("sentinel")


# -- serialisation ------------------------------------------------------------


def encode_default(value: Any) -> Any:
    """``json.dumps`` ``default=``: dataclass instances become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(
        f"Object of type {type(value).__name__} is not JSON serializable: return JSON values (str, numbers, "
        "lists, dicts, dataclasses), or give Sentinel(dumps=...) a serializer that knows this type, "
        "for example dumps=lambda v: json.dumps(v, default=str)"
    )


def default_dumps(value: Any) -> str:
    """The default serializer: JSON without NaN/Infinity; dataclasses as objects."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=encode_default)


def _jsonb_number(text: str) -> Any:
    """A JSON number as a replay will see it: jsonb stores numeric and prints it without exponent.

    numeric has no negative zero: ``-0.0`` comes back as ``0.0``.
    """
    number = decimal.Decimal(text)
    return json.loads(format(number.copy_abs() if number.is_zero() else number, "f"))


def _jsonb_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """An object as jsonb stores it: the last of duplicate keys, keys by length, then bytewise."""
    merged = dict(pairs)
    if len(merged) < 2:
        return merged
    return {k: merged[k] for k in sorted(merged, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))}


def decode_like_jsonb(text: str) -> Any:
    """Decode the JSON text of a response exactly as it will come back from jsonb.

    ``1e16`` is stored as the numeric ``10000000000000000`` and replayed as an
    int, so the fresh caller must get the same int, not the float; and jsonb
    orders an object's keys (shorter first, then bytewise), so the fresh
    caller gets them in that order too: serialised again, fresh and replayed
    responses are the same bytes.
    """
    return json.loads(text, parse_float=_jsonb_number, object_pairs_hook=_jsonb_object)


# -- fingerprints -----------------------------------------------------------------


def auto_fingerprint(args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[str]:
    """A stable hash of the canonical JSON of a call's arguments (scheme ``v2``).

    It names the *arguments* only, never the function: a worker that renamed
    or moved the function, or a reader asking with another callable, replays
    the recorded result, and a call with other arguments is refused (the
    Idempotency-Key convention). The function's identity is not part of it;
    pass ``fingerprint=`` to name the work when that matters. None when the
    arguments do not serialise to JSON (no fingerprint is stored then, rather
    than one that would differ between processes). The database does not
    compare it with a fingerprint of the older scheme ``v1`` (which also
    hashed the function's name).
    """
    if not args and not kwargs:
        return _NO_ARGUMENTS  # the common once(key, fn): the same hash every time
    try:
        payload = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"), allow_nan=False,
                             ensure_ascii=True, default=encode_default)
    except (TypeError, ValueError):
        return None
    return _hashed(payload)


def _hashed(payload: str) -> str:
    return "v2:" + hashlib.sha256(payload.encode()).hexdigest()[:40]


#: the fingerprint of a call without arguments (what auto_fingerprint((), {}) would hash)
_NO_ARGUMENTS = _hashed(json.dumps([[], {}], separators=(",", ":")))


# -- local cache ------------------------------------------------------------------


class ResponseCache:
    """A per-process LRU of completed responses, each kept at most ``ttl_s`` seconds.

    A cached replay is refused exactly when a database replay would be: each
    entry keeps the fingerprint of the *record* when it is known (the
    execution this process completed, or a replay asked with a fingerprint,
    which the database matched), and a caller with a fingerprint is never
    served from an entry whose record fingerprint is unknown.
    """

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size = size
        self.ttl_s = ttl_s
        # (expires, response, fence, attempt, record fingerprint, whether it is known)
        self._data: collections.OrderedDict[Tuple[str, str], Tuple[float, Any, int, int, Optional[str], bool]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by a thread not copied)."""
        self._lock = threading.Lock()

    def get(self, ns: str, key: str, fingerprint: Optional[str]) -> Optional[Tuple[Any, int, int]]:
        """(response, fence, attempt) if cached, fresh, and the database would replay it to ``fingerprint``."""
        with self._lock:
            item = self._data.get((ns, key))
            if item is None:
                return None
            if item[0] <= time.monotonic():
                del self._data[(ns, key)]
                return None
            _, response, fence, attempt, recorded, known = item
            if fingerprint is not None and (not known or (recorded is not None and recorded != fingerprint)):
                return None  # the database decides: it may answer mismatch
            self._data.move_to_end((ns, key))
            return response, fence, attempt

    def put(self, ns: str, key: str, response: Any, fence: int, attempt: int, fingerprint: Optional[str], *,
            known: bool) -> None:
        """Cache a completed response; ``known``: ``fingerprint`` is the record's (else the caller's None)."""
        with self._lock:
            self._data[(ns, key)] = (time.monotonic() + self.ttl_s, response, fence, attempt, fingerprint,
                                     known or fingerprint is not None)
            self._data.move_to_end((ns, key))
            while len(self._data) > self.size:
                self._data.popitem(last=False)


# -- waiting for another worker's outcome --------------------------------------------


def private_channel() -> str:
    """A LISTEN channel for one listener: random, so only it hears the notifications of its watchers (watch_v2)."""
    return "sentinel_w_" + secrets.token_hex(20)


class WatchIds:
    """Which key each of a listener's watchers (watch_v2 ids, the payloads it receives) waits for."""

    def __init__(self) -> None:
        self._keys: Dict[str, str] = {}

    def bind(self, watch_id: int, key: str) -> None:
        self._keys[str(watch_id)] = key

    def unbind(self, watch_id: int) -> None:
        self._keys.pop(str(watch_id), None)

    def key(self, payload: str) -> Optional[str]:
        return self._keys.get(payload)


class Listener:
    """One LISTEN connection per Sentinel; wakes callers waiting for a key's outcome.

    If LISTEN cannot work (the connection fails, or a transaction-pooling
    PgBouncer is in between), ``ready`` stays unset and waiters poll.
    """

    def __init__(self, source: Source, namespace: str) -> None:
        self._source = source
        #: the channel this listener LISTENs on; watch_v2 sends its watchers' notifications there
        self.channel = private_channel()
        self.ids = WatchIds()
        self._waiters: Dict[str, List[threading.Event]] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sentinel-listener", daemon=True)
        self._thread.start()

    def register(self, key: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(key, []).append(event)
        return event

    def unregister(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(key)
            if events and event in events:
                events.remove(event)
                if not events:
                    del self._waiters[key]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=3)

    def _run(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                with self._source.dedicated() as conn:
                    conn.execute(sql.SQL("listen {}").format(sql.Identifier(self.channel)))
                    self.ready.set()
                    backoff = 0.1
                    while not self._closed:
                        for note in conn.notifies(timeout=0.5):
                            self._wake(note.payload)
            except Exception as exc:
                self.ready.clear()
                if self._closed:
                    return
                logger.warning("LISTEN connection failed (%s); waiters poll until it is back", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.ready.clear()

    def _wake(self, payload: str) -> None:
        with self._lock:
            key = self.ids.key(payload)
            events = list(self._waiters.get(key, ())) if key is not None else []
        for event in events:
            event.set()

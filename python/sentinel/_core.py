"""What both clients share that is not I/O: what the protocol's answers mean, events, serialisation."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from ._events import (
    DidNotHappen,
    Event,
    Happened,
    Observer,
    ProbeAnswer,
    Unknown,
    emit,
    probe_name,
)
from ._heartbeat import Lease
from ._options import (
    MAX_FINGERPRINT_CHARS,
    MAX_REASON_CHARS,
    Options,
    _Call,
    _check_key,
    _check_retain,
    _check_ttl,
    _error_document,
    _log_extra,
)
from ._results import Result
from ._support import ResponseCache, auto_fingerprint, decode_like_jsonb
from .errors import (
    ClientClosed,
    FencedOut,
    InvalidText,
    InvalidTTL,
    KeyMismatch,
    RecordConflict,
    ResultNotSerializable,
    SentinelError,
)

__all__ = ["ClientCore", "Resolutions", "TransactionState"]

logger = logging.getLogger("sentinel")


class ClientCore:
    """Everything of a client that is not I/O, written once for both drivers.

    Argument checks, the mapping of the protocol's answers to :class:`Result`
    and exceptions, events and logs, serialisation and the local cache. The
    drivers (``_client_async`` and the ``_client`` generated from it) do the
    I/O and call these to decide what it means.
    """

    def _setup(self, options: Options, observers: Sequence[Observer], on_uncertain: Any) -> None:
        if on_uncertain is not None and not callable(on_uncertain):
            raise TypeError("on_uncertain must be a callable probe")
        self.options = options
        self._cache = ResponseCache(options.cache_size, options.cache_ttl_s) if options.cache_size else None
        self._observers: List[Observer] = list(observers)
        self._on_uncertain = on_uncertain
        self._isolation_known = False
        self._explicit_rc = False  # the sessions default to another isolation than read committed
        self._schema_ok = not options.check_schema
        self._owner_pid = -1
        self._owner = ""
        self._lock = threading.Lock()
        self._closed = False

    @property
    def namespace(self) -> str:
        """The namespace of this client's keys."""
        return self.options.namespace

    @property
    def default_ttl_ms(self) -> int:
        """The lease of a once() call that names none, in milliseconds."""
        return self.options.default_ttl_ms

    @property
    def default_hard_ttl_ms(self) -> Optional[int]:
        """The hard deadline of a once() call that names neither ttl, in milliseconds (None: the lease)."""
        return self.options.default_hard_ttl_ms

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every :class:`Event` from now on."""
        if not callable(observer):
            raise TypeError("an observer must be callable")
        self._observers.append(observer)

    @property
    def owner(self) -> str:
        """This process's owner tag, ``host:pid:random`` (for diagnostics only)."""
        pid = os.getpid()
        if pid != self._owner_pid:
            with self._lock:
                if pid != self._owner_pid:
                    self._owner = f"{socket.gethostname()[:120]}:{pid}:{secrets.token_hex(4)}"
                    self._owner_pid = pid
        return self._owner

    def _emit(self, kind: str, ns: str, key: str, fence: Optional[int] = None, attempt: Optional[int] = None,
              duration_s: Optional[float] = None, error: Optional[BaseException] = None, **details: Any) -> None:
        if not self._observers and not logger.isEnabledFor(
                logging.WARNING if kind in ("uncertain", "fenced", "lease_lost") else logging.DEBUG):
            return  # nobody listens: build no event (this is on every call's path)
        emit(self._observers, Event(kind, ns, key, fence, attempt, duration_s, error, details))

    def _lease_lost(self, lease: Lease) -> None:
        self._emit("lease_lost", lease.namespace, lease.key, lease.fence, reason=lease.lost_reason)

    def _isolation_seen(self, level: str) -> None:
        """Run protocol calls in explicit read committed transactions when the sessions default to another level."""
        self._isolation_known = True
        self._explicit_rc = level != "read committed"
        if self._explicit_rc:
            logger.info("the sessions' default isolation is %s; protocol calls run in explicit read "
                        "committed transactions (alter the role's default_transaction_isolation to read committed "
                        "to save that)", level)

    def _to_json(self, value: Any) -> Tuple[str, Any]:
        """A function's result as the JSON text to record and as a replay will see it; raises if it cannot be."""
        text = self.options.dumps(value)
        if not isinstance(text, str):
            raise TypeError(f"the serializer returned {type(text).__name__}, not str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"it holds a lone surrogate ({text[exc.start:exc.end]!r}, typically os.fsdecode() of bytes that are "
                "not UTF-8), which PostgreSQL cannot store: decode such names with errors='replace' or "
                "errors='backslashreplace', or return the bytes as base64"
            ) from None
        return text, self.options.loads(decode_like_jsonb(text))

    # -- the checks of once() ------------------------------------------------

    def _ttls(self, ttl_ms: Optional[int], hard_ttl_ms: Optional[int]) -> Tuple[int, int]:
        opts = self.options
        ttl = _check_ttl("ttl_ms", opts.default_ttl_ms if ttl_ms is None else ttl_ms)
        if hard_ttl_ms is None:
            hard = opts.default_hard_ttl_ms if ttl_ms is None and opts.default_hard_ttl_ms else ttl
            hard = max(hard, ttl)
        else:
            hard = _check_ttl("hard_ttl_ms", hard_ttl_ms)
        if hard < ttl:
            raise InvalidTTL(f"hard_ttl_ms ({hard}) must be >= ttl_ms ({ttl})")
        return ttl, hard

    def _call(
        self, key: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: Optional[Mapping[str, Any]],
        ttl_ms: Optional[int], hard_ttl_ms: Optional[int], fingerprint: Union[str, bool, None],
        pass_context: bool, retain_ms: Optional[int], permanent: Tuple[Type[BaseException], ...],
    ) -> _Call:
        """Check every argument of once() before anything runs or is written."""
        if self._closed:
            # Refuse before claiming: a claim whose function can never run would read uncertain.
            raise ClientClosed(f"this {type(self).__name__} is closed; create a new one to go on")
        key = _check_key(key)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        ttl, hard = self._ttls(ttl_ms, hard_ttl_ms)
        kw = dict(kwargs) if kwargs is not None else {}
        fp: Optional[str]
        if fingerprint is False:
            fp = None
        elif fingerprint is None or fingerprint is True:
            fp = auto_fingerprint(args, kw) if (self.options.fingerprints or fingerprint is True) else None
        elif isinstance(fingerprint, str) and 0 < len(fingerprint) <= MAX_FINGERPRINT_CHARS:
            fp = fingerprint
        else:
            raise InvalidText(f"fingerprint must be a str of 1 to {MAX_FINGERPRINT_CHARS} characters, True, False "
                              "or None")
        retain = self.options.retain_ms if retain_ms is None else _check_retain(retain_ms)
        if not isinstance(permanent, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException)
                                                       for t in permanent):
            raise TypeError("permanent must be a tuple of exception classes")
        return _Call(key, fn, tuple(args), kw, ttl, hard, fp, pass_context, retain,
                     self.options.permanent_errors + permanent, ttl_ms is None and hard_ttl_ms is None)

    def _ttl_hint(self, call: _Call) -> Optional[str]:
        """For a lost lease: the options that give a call that named no ttl more time (None when it named one)."""
        if not call.defaulted:
            return None
        return (f"once() was given no ttl_ms, so it ran under the defaults: a {call.ttl} ms lease and a "
                f"{call.hard} ms hard deadline; for longer work pass ttl_ms= and hard_ttl_ms= to once() (or "
                "default_ttl_ms= / default_hard_ttl_ms= to the client)")

    def _cached(self, call: _Call) -> Optional[Result]:
        """A completed response this process recorded or replayed moments ago (``cache_size``), or None."""
        if self._cache is None:
            return None
        hit = self._cache.get(self.namespace, call.key, call.fingerprint)
        if hit is None:
            return None
        self._emit("replayed", self.namespace, call.key, hit[1], hit[2], cached=True)
        return Result(self.namespace, call.key, "completed", response=hit[0], replayed=True, fence=hit[1],
                      attempt=hit[2], cached=True)

    # -- what the protocol's answers mean ------------------------------------

    def _observed(
        self, call: _Call, outcome: str, fence: int, state: str, attempt: int,
        response: Any, error: Any, hard_at: Optional[datetime],
    ) -> Result:
        """The Result of an acquire that did not claim the key (or KeyMismatch)."""
        ns, key = self.namespace, call.key
        if outcome == "completed":
            value = self.options.loads(response)
            if self._cache is not None:
                self._cache.put(ns, key, value, fence, attempt, call.fingerprint, known=False)
            self._emit("replayed", ns, key, fence, attempt)
            return Result(ns, key, state, response=value, replayed=True, fence=fence, attempt=attempt)
        if outcome == "failed":
            self._emit("replayed", ns, key, fence, attempt, failed=True)
            return Result(ns, key, state, replayed=True, error=error, fence=fence, attempt=attempt)
        if outcome == "alive":
            self._emit("alive", ns, key, fence, attempt)
            return Result(ns, key, state, execution_alive=True, fence=fence, attempt=attempt, hard_expires_at=hard_at)
        if outcome == "uncertain":
            self._emit("uncertain", ns, key, fence, attempt)
            return Result(ns, key, state, uncertain=True, fence=fence, attempt=attempt, hard_expires_at=hard_at)
        if outcome == "mismatch":
            raise KeyMismatch(
                f"key {ns}/{key} was first used with another fingerprint: a key reused for different work "
                "(pass fingerprint=False to opt out)",
                namespace=ns, key=key,
            )
        raise SentinelError(f"unexpected acquire outcome {outcome!r}")  # pragma: no cover

    def _failure_params(self, call: _Call, fence: int, exc: BaseException, max_chars: int = 4000,
                        ) -> Tuple[Any, ...]:
        """The arguments of fail_v3 for a function that raised ``exc``."""
        permanent = isinstance(exc, call.permanent) if call.permanent else False
        return (self.namespace, call.key, fence, call.token, _error_document(exc, max_chars), permanent,
                call.retain_ms)

    def _failure_reported(
        self, call: _Call, fence: int, attempt: int, took: float, exc: BaseException,
        rec: Optional[Tuple[Any, ...]], **details: Any,
    ) -> None:
        """Report what fail_v3 answered for a function that raised.

        ``uncertain`` is the database's rule for a late failure: the function
        raised after its lease was lost, may have had effects, and the key
        stays uncertain with the error kept as evidence for the reconciler.
        """
        ns, key = self.namespace, call.key
        permanent = isinstance(exc, call.permanent) if call.permanent else False
        if rec is not None and rec[0] == "stale":
            self._emit("fenced", ns, key, fence, attempt, took, exc, state=rec[1], **details)
        elif rec is not None and rec[0] == "conflict":
            logger.error("%s/%s raised %s under fence %s, but that fence already holds another outcome, which "
                         "stands (recorded without the claim's token)", ns, key, type(exc).__name__, fence,
                         extra=_log_extra(ns, key, fence))
            self._emit("fenced", ns, key, fence, attempt, took, exc, state=rec[1], conflict=True, **details)
        elif rec is not None and rec[0] == "uncertain":
            logger.warning("%s/%s raised %s after its lease was lost under fence %s; the key stays "
                           "uncertain (the error is kept for the reconciler)", ns, key, type(exc).__name__, fence,
                           extra=_log_extra(ns, key, fence))
            self._emit("uncertain", ns, key, fence, attempt, took, exc, reason="late failure", **details)
        else:
            self._emit("failed", ns, key, fence, attempt, took, exc, persisted=rec is not None, permanent=permanent,
                       **details)

    def _not_started_reported(self, ns: str, key: str, fence: int, exc: BaseException,
                              rec: Optional[Tuple[Any, ...]]) -> bool:
        """Report the release of a claim whose function never started; True if it was released."""
        log_extra = _log_extra(ns, key, fence)
        if rec is not None and rec[0] == "recorded":
            logger.warning("%s/%s was released: %s arrived after the claim and before the function "
                           "started; the next caller runs it", ns, key, type(exc).__name__, extra=log_extra)
            self._emit("failed", ns, key, fence, None, None, exc, persisted=True, permanent=False, started=False)
            return True
        else:
            logger.error("%s/%s: the function never started, but its claim could not be released (%s); "
                         "it will read uncertain once its lease lapses", ns, key, rec[0] if rec else "unreachable",
                         extra=log_extra)
            return False

    def _abandon_reported(self, ns: str, key: str, fence: int, reason: str, rec: Optional[Tuple[Any, ...]]) -> bool:
        """Report what abandon_v2 answered; True if the database recorded the execution as uncertain."""
        log_extra = _log_extra(ns, key, fence)
        if rec is None:
            logger.error("could not mark %s/%s uncertain (database unavailable); it will read "
                         "uncertain once its lease lapses", ns, key, extra=log_extra)
            return False
        if rec[0] == "uncertain":
            self._emit("uncertain", ns, key, fence, reason=reason)
        else:
            logger.warning("%s/%s marked %s: %s", ns, key, rec[0], reason, extra=log_extra)
        return rec[0] in ("uncertain", "released")

    def _unserialisable(self, call: _Call, value: Any, exc: BaseException, recorded: bool,
                        refused: bool) -> ResultNotSerializable:
        """The error for a result that could not be stored (by the serializer, or by the database)."""
        ns, key = self.namespace, call.key
        if refused:
            message = (f"{ns}/{key}: the function ran but PostgreSQL refused to store its result as jsonb ({exc}); "
                       "the key is marked uncertain and will not run again until reconciled")
        else:
            message = (f"{ns}/{key}: the function ran but its result ({type(value).__name__}) could not be "
                       f"serialised to JSON ({exc}); the key is marked uncertain and will not run again until "
                       "reconciled")
        return ResultNotSerializable(message, value=value, recorded=recorded)

    def _completion(self, call: _Call, rec: Optional[Tuple[Any, ...]], value: Any, fence: int, attempt: int,
                    hard_at: datetime, took: float, **details: Any) -> Result:
        """The Result of complete_v3's answer (or FencedOut when the key was reconciled meanwhile)."""
        ns, key = self.namespace, call.key
        if rec is None:
            self._emit("completed", ns, key, fence, attempt, took, persisted=False, **details)
            logger.error("%s/%s ran under fence %s but its response could not be recorded before the "
                         "hard deadline; other callers will see it uncertain", ns, key, fence,
                         extra=_log_extra(ns, key, fence))
            return Result(ns, key, "executing", response=value, fence=fence, attempt=attempt,
                          persisted=False, hard_expires_at=hard_at)
        if rec[0] == "stale":
            self._emit("fenced", ns, key, fence, attempt, took, state=rec[1], **details)
            raise FencedOut(
                f"{ns}/{key}: the function ran under fence {fence}, but the key was reconciled meanwhile "
                f"(state now {rec[1]}); its response was not recorded",
                response=value, fence=fence, state=rec[1],
            )
        if rec[0] == "conflict":
            self._emit("fenced", ns, key, fence, attempt, took, state=rec[1], conflict=True, **details)
            logger.error("%s/%s: the function ran under fence %s, but that fence already holds another response, "
                         "which stands (recorded without the claim's token); inspect the key's events",
                         ns, key, fence, extra=_log_extra(ns, key, fence))
            raise RecordConflict(
                f"{ns}/{key}: the function ran under fence {fence}, but the record under that fence holds another "
                "response, which every replay serves; it was written without the claim's token (a role with the "
                "legacy complete_v1/complete_v2): see `sentinel events` for the key and reconcile it",
                response=value, fence=fence, state=rec[1],
            )
        self._emit("completed", ns, key, fence, attempt, took, persisted=True, **details)
        if self._cache is not None:
            self._cache.put(ns, key, value, fence, attempt, call.fingerprint, known=True)
        return Result(ns, key, "completed", response=value, fence=fence, attempt=attempt, hard_expires_at=hard_at)


class Resolutions(ClientCore):
    """What an operator's reconcile and a probe's answer mean for a key (the operator calls build on it)."""

    def _reconcile_params(self, key: str, action: str, actor: str, reason: str, response: Any, error: Any,
                          force: bool) -> Tuple[Any, ...]:
        key = _check_key(key)
        resp = None if response is None and action != "completed" else self.options.dumps(response)
        err = None if error is None else self.options.dumps(error)
        return (self.namespace, key, action, actor, reason, resp, err, force)

    def _reconciled(self, key: str, out: Dict[str, Any], action: str, actor: str, reason: str) -> Dict[str, Any]:
        self._emit("reconciled", self.namespace, key, out.get("fence"), action=action, actor=actor,
                   reason=reason, previous_state=out.get("previous_state"))
        return out

    def _probe_decision(self, probe: Any, call: _Call, result: Result, answer: Any,
                        ) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The reconcile a probe's answer asks for (action and arguments), or None to leave the key uncertain."""
        actor = probe_name(probe)
        if isinstance(answer, Happened):
            return "completed", {"response": answer.response, "actor": actor, "reason": "probe: the effect happened"}
        if isinstance(answer, DidNotHappen):
            return "release", {"actor": actor, "reason": f"probe: {answer.reason}"[:MAX_REASON_CHARS]}
        self._emit("uncertain", self.namespace, call.key, result.fence, result.attempt,
                   reason=getattr(answer, "reason", "unknown"), probe=actor)
        return None

    def _probe_failed(self, probe: Any, call: _Call, exc: BaseException) -> ProbeAnswer:
        logger.error("probe %r failed for %s/%s", probe, self.namespace, call.key, exc_info=exc)
        return Unknown(f"the probe raised {type(exc).__name__}: {exc}")


class TransactionState:
    """What a ``transaction()`` block learned about its key; shared by the sync and async blocks."""

    def __init__(self, core: ClientCore, conn: Any, call: _Call, outcome: str,
                 fence: int, state: str, attempt: int, response: Any, error: Any) -> None:
        self._core = core
        self._conn = conn
        self._call = call
        self.outcome = outcome
        self.fence = fence
        self.state = state
        self.attempt = attempt
        self.response = response
        self.error = error
        self.completed = False
        # acquired and completed describe work that commits with the block: told once it has
        self._held: List[str] = []

    def _opened(self) -> None:
        """Tell the observers what the block found; its claim only once the block commits."""
        core, ns, key = self._core, self._core.namespace, self._call.key
        if self.outcome == "acquired":
            self._held.append("acquired")
            return
        kind = "replayed" if self.outcome in ("completed", "failed") else self.outcome
        core._emit(kind, ns, key, self.fence, self.attempt, transactional=True)

    def _committed(self, savepoint: bool) -> None:
        """The block's transaction committed (or, inside the caller's transaction, its savepoint was released)."""
        core = self._core
        for kind in self._held:
            core._emit(kind, core.namespace, self._call.key, self.fence, self.attempt, transactional=True,
                       savepoint=savepoint or None)
        self._held = []

    @property
    def acquired(self) -> bool:
        """This block owns the key: do the work, then ``complete(response)``."""
        return self.outcome == "acquired"

    @property
    def replayed(self) -> bool:
        """The key completed before (``response`` holds it) or failed permanently (``error``)."""
        return self.outcome in ("completed", "failed")

    @property
    def execution_alive(self) -> bool:
        """Another worker is running the key with a live lease."""
        return self.outcome == "alive"

    @property
    def uncertain(self) -> bool:
        """An earlier execution's outcome is unknown: reconcile it."""
        return self.outcome == "uncertain"

    def _serialise(self, response: Any) -> Tuple[str, Any]:
        """Check that complete() may run; the response as JSON text and as it will be replayed."""
        if not self.acquired:
            raise SentinelError(f"complete() needs an acquired key; this block saw {self.outcome!r}")
        if self.completed:
            raise SentinelError("complete() was already called in this block")
        core = self._core
        try:
            return core._to_json(response)
        except Exception as exc:
            raise ResultNotSerializable(
                f"{core.namespace}/{self._call.key}: the response could not be serialised ({exc}); "
                "nothing is recorded once the block rolls back", value=response, recorded=False) from exc

    def _params(self, text: str) -> Tuple[Any, ...]:
        return (self._core.namespace, self._call.key, self.fence, self._call.token, text, self._call.retain_ms)

    def _recorded(self, row: Any, value: Any) -> Any:
        """Take the answer of complete_v3: recorded, or an error saying why not."""
        core, key = self._core, self._call.key
        if row is None or row[0] != "recorded":
            raise SentinelError(f"{core.namespace}/{key}: complete was refused ({row[0] if row else None})")
        self.completed = True
        self.state = "completed"
        self.response = value
        self._held.append("completed")
        return value

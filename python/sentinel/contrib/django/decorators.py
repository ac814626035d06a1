"""HTTP idempotency for Django views: ``@idempotent_view``.

A client sends ``Idempotency-Key: <key>`` with an unsafe request (POST, PUT,
PATCH, DELETE). The view runs at most once per (scope, key) through
``Sentinel.once()``; its response is recorded and replayed to every retry:

=====================================================  ======================================================
request                                                 answer
=====================================================  ======================================================
first with this key                                     the view's response (recorded unless 5xx, see below)
retry after it finished                                 the recorded response, with ``Idempotent-Replayed: true``
retry while the first still runs                        409 ``{"error": "request_in_progress"}``, ``Retry-After``
retry after the first was interrupted (outcome unknown)  409 ``{"error": "outcome_uncertain"}``
same key, other method, path or body                    422 ``{"error": "idempotency_key_reused"}``
no header                                               the view, unprotected (400 with ``required=True``)
header but no scope (anonymous, by default)             400 ``{"error": "idempotency_key_requires_authentication"}``
malformed key (empty, over 255 characters, not ASCII)   400 ``{"error": "idempotency_key_invalid"}``
GET, HEAD, OPTIONS, TRACE                               the view, unprotected (safe methods)
=====================================================  ======================================================

Keys are scoped: the record key is ``http:<scope>:<Idempotency-Key>``, where
the scope is ``user-<pk>`` for an authenticated user (``scope=`` may compute
another one, e.g. from an API client or the session; returning None rejects the
request with 400). One user never sees another's replay.

What is recorded: status, reason, the headers named in ``stored_headers``
(``Content-Type`` and ``Location`` by default; never ``Set-Cookie``) and the
body (as text when it is UTF-8 without NUL, else base64). Responses with a
status below 500 (2xx, 3xx and 4xx: the view ran and decided) are recorded and
replayed; a 5xx response is recorded as a *failure* and returned as is, so the
client's retry with the same key runs the view again (like an exception).
``should_store=`` changes that rule. A view that raises: the exception
propagates (Django turns it into a 500) and the key is recorded failed, so a
retry runs the view again. Streaming responses are buffered.

The claim is made on Sentinel's own connection and committed before the view
runs (see ``sentinel.contrib.django``): the view's own database writes are not
part of Sentinel's record. A process that dies while the view runs leaves the
key ``uncertain`` once its lease lapses: retries get 409 ``outcome_uncertain``
until an operator reconciles it (``sentinel inspect/reconcile
'http:user-42:<key>' --namespace <ns>``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ..._client import Sentinel
from ..._results import Result
from ...errors import KeyMismatch, SentinelError
from .conf import get_sentinel

__all__ = [
    "idempotent_view",
    "user_scope",
    "record_key",
    "request_fingerprint",
    "REPLAYED_HEADER",
    "STORED_HEADERS",
    "DEFAULT_HARD_TTL_MS",
]

logger = logging.getLogger("sentinel.django")

#: Added to every replayed response.
REPLAYED_HEADER = "Idempotent-Replayed"
#: Response headers recorded and replayed by default.
STORED_HEADERS = ("Content-Type", "Location")
#: The hard deadline of a view's execution unless ``hard_ttl_ms`` says otherwise.
DEFAULT_HARD_TTL_MS = 60_000
MAX_KEY_LENGTH = 255
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

SentinelSource = Union[Sentinel, Callable[[], Sentinel], None]


def user_scope(request: Any) -> Optional[str]:
    """The default scope: ``user-<pk>`` for an authenticated user, None (rejected) otherwise."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return f"user-{user.pk}"


def record_key(scope: str, idempotency_key: str) -> str:
    """The Sentinel key of an ``Idempotency-Key`` within a scope: ``http:<scope>:<key>``.

    ``:`` and ``%`` in the scope are percent-encoded, so no two (scope, key)
    pairs share a record; a scope over 200 bytes is replaced by its SHA-256.
    """
    part = scope.replace("%", "%25").replace(":", "%3A")
    if len(part.encode("utf-8")) > 200:
        part = "sha256-" + hashlib.sha256(scope.encode("utf-8")).hexdigest()
    return f"http:{part}:{idempotency_key}"


def request_fingerprint(request: Any) -> str:
    """What must not change between retries of one key: method, path with query string, body."""
    body_hash = hashlib.sha256(request.body).hexdigest()
    text = f"{request.method}\n{request.get_full_path()}\n{body_hash}"
    return "http-v1:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _default_should_store(response: Any) -> bool:
    return int(response.status_code) < 500


def _json(status: int, error: str, detail: str, **headers: str) -> Any:
    from django.http import JsonResponse

    response = JsonResponse({"error": error, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _valid_key(value: str) -> bool:
    return 0 < len(value) <= MAX_KEY_LENGTH and all(" " <= ch <= "~" for ch in value)


class _NotStored(Exception):
    """Raised inside once() for a response that must not be recorded (5xx): the key is recorded failed."""

    def __init__(self, response: Any) -> None:
        super().__init__(f"the view answered {response.status_code}; not recorded, a retry runs the view again")
        self.response = response


def _finalise(response: Any) -> Any:
    """Render a template response; buffer a streaming one (its content is needed to record it)."""
    render = getattr(response, "render", None)
    if callable(render) and not getattr(response, "is_rendered", True):
        response = render() or response
    if getattr(response, "streaming", False):
        from django.http import HttpResponse

        body = b"".join(response.streaming_content)
        buffered = HttpResponse(body, status=response.status_code, reason=response.reason_phrase)
        for name, value in response.items():
            buffered[name] = value
        buffered.cookies = response.cookies
        response.close()
        response = buffered
    return response


def _document(response: Any, stored_headers: Sequence[str]) -> Dict[str, Any]:
    """The JSON document recorded for a response."""
    content: bytes = response.content
    headers: List[List[str]] = [[name, str(response[name])] for name in stored_headers if response.has_header(name)]
    doc: Dict[str, Any] = {"status": int(response.status_code), "reason": str(response.reason_phrase),
                           "headers": headers}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:  # jsonb cannot hold NUL
        doc["body"] = text
    else:
        doc["body_base64"] = base64.b64encode(content).decode("ascii")
    return doc


def _replay(doc: Dict[str, Any]) -> Any:
    from django.http import HttpResponse

    body = doc["body"].encode("utf-8") if "body" in doc else base64.b64decode(doc["body_base64"])
    response = HttpResponse(body, status=doc["status"], reason=doc.get("reason"))
    for name, value in doc.get("headers", []):
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def _retry_after(sentinel: Sentinel, key: str) -> int:
    """Seconds until the running execution's lease lapses (database clock), at least 1."""
    try:
        record = sentinel.inspect(key)
    except SentinelError:
        record = None
    if record and record.get("lease_expires_at") is not None and record.get("now") is not None:
        seconds: float = (record["lease_expires_at"] - record["now"]).total_seconds()
        return max(1, math.ceil(seconds))
    return 1


def _refusal(given: Optional[str], owner: Optional[str], header: str) -> Any:
    """The 400 answer for a request whose key is missing, malformed or unscoped, or None."""
    if given is None:
        return _json(400, "idempotency_key_missing", f"this endpoint requires an {header} header")
    if not _valid_key(given):
        return _json(400, "idempotency_key_invalid",
                     f"{header} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    if owner is None:
        return _json(400, "idempotency_key_requires_authentication",
                     f"{header} is accepted only from authenticated clients")
    return None


def _answer(result: Result, fresh: List[Any], s: Sentinel, key: str, header: str) -> Any:
    """The HTTP answer for what once() said about the request's key."""
    if result.execution_alive:
        return _json(409, "request_in_progress", f"a request with this {header} is being processed; retry later",
                     Retry_After=str(_retry_after(s, key)))
    if result.uncertain:
        logger.warning("%s is uncertain (fence %s): answering 409", key, result.fence)
        return _json(409, "outcome_uncertain",
                     f"the outcome of the request with this {header} is unknown (its processing was "
                     "interrupted); it will not be run again until it is resolved")
    if result.failed:
        return _json(409, "request_failed",
                     f"the request with this {header} failed and will not be run again; use a new key")
    if fresh and not result.replayed:
        return fresh[0]
    return _replay(result.response)


def idempotent_view(  # noqa: PLR0913 - the decorator's options, keyword-only
    view: Optional[Callable[..., Any]] = None,
    *,
    sentinel: SentinelSource = None,
    header: str = "Idempotency-Key",
    required: bool = False,
    scope: Callable[[Any], Optional[str]] = user_scope,
    methods: Optional[Iterable[str]] = None,
    ttl_ms: Optional[int] = None,
    hard_ttl_ms: Optional[int] = None,
    wait_ms: int = 0,
    retain_ms: Optional[int] = None,
    should_store: Callable[[Any], bool] = _default_should_store,
    stored_headers: Sequence[str] = STORED_HEADERS,
) -> Any:
    """Run a (synchronous) Django view at most once per ``Idempotency-Key`` and replay its response.

    Use as ``@idempotent_view`` or ``@idempotent_view(required=True, ...)``
    (on a class-based view: ``method_decorator(idempotent_view(), name="post")``).

    - ``sentinel``: the :class:`~sentinel.Sentinel` to use, or a callable
      returning it; default :func:`sentinel.contrib.django.get_sentinel` (built
      from ``settings.SENTINEL`` and ``settings.DATABASES``).
    - ``header``: the request header holding the key.
    - ``required``: answer 400 to unsafe requests without the header (default:
      run the view unprotected).
    - ``scope``: ``scope(request)`` returns the text that scopes keys (default
      :func:`user_scope`: ``user-<pk>``), or None to reject with 400.
    - ``methods``: the methods protected (default: every method except GET,
      HEAD, OPTIONS and TRACE, which pass through).
    - ``ttl_ms``: the lease (default: the Sentinel's ``default_ttl_ms``),
      renewed by heartbeats while the view runs; ``hard_ttl_ms`` (default 60 s,
      at least ``ttl_ms``): a view running longer is reported uncertain.
    - ``wait_ms``: a retry arriving while the first request runs waits up to
      that long for its response instead of getting 409 at once.
    - ``retain_ms``: the record may be purged that long after it finished
      (``Sentinel.purge_expired()``); default: the Sentinel's.
    - ``should_store(response)``: whether a response is recorded and replayed
      (default: status < 500); otherwise it is returned as is and the key is
      recorded failed, so a retry runs the view again.
    - ``stored_headers``: response headers recorded and replayed.
    """
    only = None if methods is None else frozenset(m.upper() for m in methods)
    headers = tuple(stored_headers)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        from asgiref.sync import iscoroutinefunction

        if iscoroutinefunction(fn):
            raise TypeError("idempotent_view supports synchronous views only")

        @functools.wraps(fn)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            method = str(request.method).upper()
            unprotected = method in SAFE_METHODS if only is None else method not in only
            if unprotected:
                return fn(request, *args, **kwargs)
            given = request.headers.get(header)
            if given is None and not required:
                return fn(request, *args, **kwargs)
            owner = scope(request) if given is not None and _valid_key(given) else None
            refused = _refusal(given, owner, header)
            if refused is not None:
                return refused
            assert given is not None and owner is not None
            s = sentinel if isinstance(sentinel, Sentinel) else (sentinel() if sentinel is not None
                                                                  else get_sentinel())
            key = record_key(str(owner), given)
            ttl = ttl_ms if ttl_ms is not None else s.default_ttl_ms
            hard = hard_ttl_ms if hard_ttl_ms is not None else max(ttl, DEFAULT_HARD_TTL_MS)
            fresh: List[Any] = []

            def run() -> Dict[str, Any]:
                response = _finalise(fn(request, *args, **kwargs))
                fresh.append(response)
                if not should_store(response):
                    raise _NotStored(response)
                return _document(response, headers)

            try:
                result: Result = s.once(key, run, ttl_ms=ttl, hard_ttl_ms=hard, wait_ms=wait_ms,
                                        retain_ms=retain_ms, fingerprint=request_fingerprint(request))
            except _NotStored as exc:
                return exc.response
            except KeyMismatch:
                return _json(422, "idempotency_key_reused",
                             f"this {header} was used with another request (method, path or body)")
            return _answer(result, fresh, s, key, header)

        return wrapper

    if view is not None:
        return decorate(view)
    return decorate


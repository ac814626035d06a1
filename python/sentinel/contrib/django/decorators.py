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

import functools
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ..._client import Sentinel
from ..._results import Result
from ...errors import KeyMismatch, SentinelError
from .. import _idempotency as shared
from .._idempotency import DEFAULT_HARD_TTL_MS, REPLAYED_HEADER, SAFE_METHODS, STORED_HEADERS, record_key
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

SentinelSource = Union[Sentinel, Callable[[], Sentinel], None]


def user_scope(request: Any) -> Optional[str]:
    """The default scope: ``user-<pk>`` for an authenticated user, None (rejected) otherwise."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return f"user-{user.pk}"


def request_fingerprint(request: Any) -> str:
    """What must not change between retries of one key: method, path with query string, body."""
    return shared.fingerprint(str(request.method), request.get_full_path(), request.body)


def _default_should_store(response: Any) -> bool:
    return int(response.status_code) < 500


def _json(answer: shared.Answer) -> Any:
    from django.http import JsonResponse

    response = JsonResponse(answer.body(), status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


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
    headers = [(name, str(response[name])) for name in stored_headers if response.has_header(name)]
    return shared.document(int(response.status_code), str(response.reason_phrase), headers, response.content)


def _replay(doc: Dict[str, Any]) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(shared.document_body(doc), status=doc["status"], reason=doc.get("reason"))
    for name, value in shared.document_headers(doc):
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def _retry_after(sentinel: Sentinel, key: str) -> int:
    """Seconds until the running execution's lease lapses (database clock), at least 1."""
    try:
        record = sentinel.inspect(key)
    except SentinelError:
        record = None
    return shared.retry_after(record)


def _answer(result: Result, fresh: List[Any], s: Sentinel, key: str, header: str) -> Any:
    """The HTTP answer for what once() said about the request's key."""
    if result.uncertain:
        logger.warning("%s is uncertain (fence %s): answering 409", key, result.fence)
    answer = shared.state_answer(result, header, _retry_after(s, key) if result.execution_alive else 1)
    if answer is not None:
        return _json(answer)
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
            owner = scope(request) if given is not None and shared.valid_key(given) else None
            refused = shared.refusal(given, owner, header)
            if refused is not None:
                return _json(refused)
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
                return _json(shared.key_reused(header))
            return _answer(result, fresh, s, key, header)

        return wrapper

    if view is not None:
        return decorate(view)
    return decorate


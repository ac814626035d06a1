"""HTTP idempotency for ASGI applications (Starlette, FastAPI): ``IdempotencyMiddleware`` and ``idempotency_key``.

``pip install 'sentinel-coordination[starlette]'`` (or ``[fastapi]``). A client
sends ``Idempotency-Key: <key>`` with an unsafe request (POST, PUT, PATCH,
DELETE); the handler runs at most once per (scope, key) through
:meth:`sentinel.AsyncSentinel.once`, and its response is recorded and replayed
to every retry. The answers are those of the Django decorator
(:mod:`sentinel.contrib.django.decorators`):

=====================================================  ======================================================
request                                                 answer
=====================================================  ======================================================
first with this key                                     the handler's response (recorded unless 5xx)
retry after it finished                                 the recorded response, with ``Idempotent-Replayed: true``
retry while the first still runs                        409 ``{"error": "request_in_progress"}``, ``Retry-After``
                                                        (or, with ``wait_ms``, the response once it is recorded)
retry after the first was interrupted (outcome unknown)  409 ``{"error": "outcome_uncertain"}``
key resolved as failed by an operator                   409 ``{"error": "request_failed"}``
same key, other method, path, query string or body      422 ``{"error": "idempotency_key_reused"}``
no header                                               the handler, unprotected (400 with ``required=True``)
header but no scope (anonymous, by default)             400 ``{"error": "idempotency_key_requires_authentication"}``
malformed key (empty, over 255 characters, not ASCII)   400 ``{"error": "idempotency_key_invalid"}``
request body over ``max_request_bytes``                 413 ``{"error": "request_too_large"}``, nothing claimed
response body over ``max_response_bytes``               500 ``{"error": "response_too_large"}``; key uncertain
GET, HEAD, OPTIONS, TRACE                               the handler, unprotected (safe methods)
=====================================================  ======================================================

Two ways to choose what is protected:

- ``IdempotencyMiddleware(app, sentinel=s)`` (``routes="all"``, the default):
  every unsafe request carrying the header, claimed before the application
  runs; on one Starlette route only with ``Route(..., middleware=[...])``;
- ``IdempotencyMiddleware(app, sentinel=s, routes="declared")`` with the FastAPI
  dependency ``Depends(idempotency_key(...))`` on the routes to protect: the
  key is claimed when the dependency runs, with the route's own options; its
  ``scope`` is itself a dependency (so it can use your current-user
  dependency). The dependency returns the :class:`Claim` (fence, execution).

How it works: the request body is read (up to ``max_request_bytes``) for the
fingerprint; ``once()`` claims the key in a task of its own, whose function
waits for the response; the application then runs in the request's task,
with its response buffered (up to ``max_response_bytes``); once the
application has returned, the response is recorded (or, for a 5xx, the key is
recorded failed) and only then sent to the client. An application that
raises: the key is recorded failed and the exception propagates (a 500), so a
retry runs the handler again, as for a 5xx. A request task that is
cancelled while the handler runs marks the key uncertain: the handler may
have had effects.

**Streaming responses and large bodies** are buffered, never streamed through:
a protected response must fit in ``max_response_bytes`` (default 512 KiB). A
body over it stops the application (:class:`ResponseTooLarge` is raised from
its ``send``): the handler has run, so its key becomes *uncertain* (retries get
409 ``outcome_uncertain`` until an operator resolves it) and the client gets 500
``response_too_large``. Keep streaming endpoints (server-sent events,
downloads) off protected routes. The ASGI extensions whose messages cannot be
recorded (``http.response.pathsend``, ``zerocopysend``, ``trailers``,
``early_hint``) are hidden from the application on protected requests. A
request body over ``max_request_bytes`` (default 1 MiB) is answered 413 before
anything is claimed.
"""

from __future__ import annotations

from typing import (
    Any,
    Awaitable,
    Callable,
    Collection,
    MutableMapping,
    Optional,
    Sequence,
    Union,
)

from starlette.requests import HTTPConnection, Request

from .._client import Sentinel
from .._client_async import AsyncSentinel
from . import _idempotency as shared
from ._asgi_exchange import (
    ASGIApp,
    ASGIReceive,
    ASGISend,
    CapturedResponse,
    Claim,
    ResponseTooLarge,
    ScopeFunction,
    _Answered,
    _Exchange,
    _Middleware,
    _Options,
)
from ._idempotency import REPLAYED_HEADER, STORED_HEADERS, record_key

__all__ = [
    "IdempotencyMiddleware",
    "idempotency_key",
    "current_claim",
    "user_scope",
    "Claim",
    "CapturedResponse",
    "ResponseTooLarge",
    "record_key",
    "REPLAYED_HEADER",
    "STORED_HEADERS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
]

SentinelSource = Union[AsyncSentinel, Callable[[], AsyncSentinel]]

#: A request body larger than this is answered 413 on a protected request.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: A protected response's body must fit in this (it is buffered and recorded).
DEFAULT_MAX_RESPONSE_BYTES = 512 * 1024
#: Where a request's idempotency state is kept in the ASGI scope.
SCOPE_KEY = "sentinel.idempotency"
#: ASGI extensions whose messages cannot be recorded, hidden from the application on protected requests.
HIDDEN_EXTENSIONS = frozenset({
    "http.response.pathsend", "http.response.zerocopysend", "http.response.trailers", "http.response.early_hint",
})


def user_scope(conn: HTTPConnection) -> Optional[str]:
    """The default scope: ``user-<identity>`` of Starlette's authenticated user, None (rejected) otherwise.

    The user is ``scope["user"]``, set by Starlette's ``AuthenticationMiddleware``.
    """
    user = conn.scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        identity = user.identity
    except NotImplementedError:
        raise TypeError(
            f"{type(user).__name__}.identity is not implemented, so the default scope cannot tell users apart: "
            "implement identity on your user class or pass scope= to IdempotencyMiddleware"
        ) from None
    return f"user-{identity}"


def _default_should_store(response: CapturedResponse) -> bool:
    return response.status < 500


class IdempotencyMiddleware:
    """ASGI middleware: run each unsafe request with an ``Idempotency-Key`` at most once and replay its response.

    ``app.add_middleware(IdempotencyMiddleware, sentinel=s)`` on Starlette or
    FastAPI, or ``IdempotencyMiddleware(app, sentinel=s)`` around any ASGI app.

    - ``sentinel``: the :class:`~sentinel.AsyncSentinel` to use, or a callable
      returning it (called for each protected request, on the event loop).
    - ``routes``: ``"all"`` (every unsafe request carrying the header) or
      ``"declared"`` (only routes with ``Depends(idempotency_key(...))``).
    - ``header``: the request header holding the key.
    - ``required``: answer 400 to unsafe requests without the header (default:
      run them unprotected).
    - ``scope``: ``scope(conn)`` (sync or async; ``conn`` a Starlette
      ``HTTPConnection``) returns the text that scopes keys, or None to reject
      with 400; default :func:`user_scope`.
    - ``methods``: the methods protected (default: all but GET, HEAD, OPTIONS, TRACE).
    - ``ttl_ms``: the lease (default: the Sentinel's), renewed while the
      handler runs; ``hard_ttl_ms`` (default 60 s, at least ``ttl_ms``): a
      handler running longer is reported uncertain.
    - ``wait_ms``: a retry arriving while the first request runs waits up to
      that long for its response instead of getting 409 at once.
    - ``retain_ms``: the record may be purged that long after it finished.
    - ``should_store(response)``: whether a :class:`CapturedResponse` is
      recorded (default: status < 500); otherwise it is sent as is and the key
      is recorded failed, so a retry runs the handler again.
    - ``stored_headers``: response headers recorded and replayed (never ``Set-Cookie``).
    - ``max_request_bytes`` / ``max_response_bytes``: see the module's documentation.
    """

    def __init__(  # noqa: PLR0913 - the middleware's options, keyword-only
        self,
        app: ASGIApp,
        *,
        sentinel: SentinelSource,
        routes: str = "all",
        header: str = "Idempotency-Key",
        required: bool = False,
        scope: ScopeFunction = user_scope,
        methods: Optional[Collection[str]] = None,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        retain_ms: Optional[int] = None,
        should_store: Callable[[CapturedResponse], bool] = _default_should_store,
        stored_headers: Sequence[str] = STORED_HEADERS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if isinstance(sentinel, Sentinel) or not (isinstance(sentinel, AsyncSentinel) or callable(sentinel)):
            raise TypeError(f"sentinel= must be an AsyncSentinel (or a callable returning one), not "
                            f"{type(sentinel).__name__}: the middleware runs on the event loop")
        if routes not in ("all", "declared"):
            raise ValueError(f"routes={routes!r}: use 'all' (every unsafe request with the header) or 'declared' "
                             "(only routes with Depends(idempotency_key()))")
        if not isinstance(header, str) or not header.strip():
            raise ValueError("header= must name a request header, such as 'Idempotency-Key'")
        if any(name.lower() == "set-cookie" for name in stored_headers):
            raise ValueError("stored_headers must not name Set-Cookie: a replay would hand one client's cookies to "
                             "every retry")
        for name, value in (("max_request_bytes", max_request_bytes), ("max_response_bytes", max_response_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: give a number of bytes (an int, 0 or more)")
        if not callable(scope):
            raise TypeError("scope= must be a callable scope(conn) returning the scope text or None")
        self.app = app
        self._sentinel = sentinel
        self.routes = routes
        self.header = header
        self._header_name = header.lower().encode("latin-1")
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        self.defaults = _Options(required, scope, ttl_ms, hard_ttl_ms, wait_ms, retain_ms)
        self.should_store = should_store
        self.stored_headers = tuple(stored_headers)
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes

    def sentinel_now(self) -> AsyncSentinel:
        """The AsyncSentinel for a request."""
        s = self._sentinel if isinstance(self._sentinel, AsyncSentinel) else self._sentinel()
        if not isinstance(s, AsyncSentinel):
            raise TypeError(f"the sentinel= callable returned {type(s).__name__}, not an AsyncSentinel")
        return s

    def _protects(self, method: str) -> bool:
        return method not in shared.SAFE_METHODS if self.methods is None else method in self.methods

    async def __call__(self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Handle one ASGI connection (HTTP requests only; anything else passes through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope["method"]).upper()
        given = [bytes(v).decode("latin-1") for n, v in scope.get("headers", []) if bytes(n).lower() ==
                 self._header_name]
        wanted = self.routes == "declared" or given or self.defaults.required
        if not self._protects(method) or not wanted:
            scope[SCOPE_KEY] = self  # not protected; the dependency finds the middleware's settings here
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        scope["extensions"] = {name: value for name, value in (scope.get("extensions") or {}).items()
                               if name not in HIDDEN_EXTENSIONS}
        exchange = _Exchange(self, scope, receive, send, given[0] if given else None, len(given))
        scope[SCOPE_KEY] = exchange
        if self.routes == "all":
            try:
                await exchange.protect(self.defaults, None, False)
            except _Answered as answered:
                await answered.response(scope, exchange.body.receive, send)
                return
        await exchange.run(self.app)


def current_claim(conn: HTTPConnection) -> Optional[Claim]:
    """The :class:`Claim` of the request (a Starlette ``Request``), or None when it is not protected."""
    exchange = conn.scope.get(SCOPE_KEY)
    return exchange.claim if isinstance(exchange, _Exchange) else None


def _exchange(request: Request) -> Optional[_Exchange]:
    """The request's exchange (None when the middleware let it pass unprotected); raises without the middleware."""
    found = request.scope.get(SCOPE_KEY)
    if not isinstance(found, (_Exchange, IdempotencyMiddleware)):
        raise RuntimeError(
            "idempotency_key() needs the middleware: "
            "app.add_middleware(IdempotencyMiddleware, sentinel=..., routes='declared')"
        )
    exchange = found if isinstance(found, _Exchange) else None
    if (found.middleware if isinstance(found, _Exchange) else found).routes != "declared":
        raise RuntimeError(
            "idempotency_key() on a route behind IdempotencyMiddleware(routes='all'): the middleware claimed "
            "the request before the route ran; use routes='declared' for per-route dependencies, or "
            "current_claim(request) for the claim"
        )
    return exchange


def idempotency_key(  # noqa: PLR0913 - the route's options, keyword-only
    *,
    scope: Optional[Callable[..., Any]] = None,
    required: Optional[bool] = None,
    ttl_ms: Optional[int] = None,
    hard_ttl_ms: Optional[int] = None,
    wait_ms: Optional[int] = None,
    retain_ms: Optional[int] = None,
) -> Callable[..., Awaitable[Optional[Claim]]]:
    """A FastAPI dependency protecting a route: ``claim = Depends(idempotency_key(required=True))``.

    Needs ``IdempotencyMiddleware(..., routes="declared")``, whose settings are
    the defaults of every option here. ``scope`` is itself a FastAPI dependency
    (resolved with its own parameters, e.g. your current user) returning the
    scope text, or None to reject with 400. The dependency returns the
    request's :class:`Claim`, or None when the request is not protected (no
    header, ``required`` false; a safe method).
    """
    try:
        from fastapi import Depends
    except ImportError as exc:  # pragma: no cover - the fastapi extra
        raise ImportError("idempotency_key() is a FastAPI dependency: pip install "
                          "'sentinel-coordination[fastapi]'") from exc

    def options(mw: _Middleware) -> _Options:
        d = mw.defaults
        return _Options(
            d.required if required is None else required, d.scope,
            d.ttl_ms if ttl_ms is None else ttl_ms, d.hard_ttl_ms if hard_ttl_ms is None else hard_ttl_ms,
            d.wait_ms if wait_ms is None else wait_ms, d.retain_ms if retain_ms is None else retain_ms,
        )

    if scope is None:
        async def claim(request: Request) -> Optional[Claim]:
            exchange = _exchange(request)
            return None if exchange is None else await exchange.protect(options(exchange.middleware), None, False)

        return claim

    async def scoped_claim(request: Request, owner: Optional[str] = Depends(scope)) -> Optional[Claim]:
        exchange = _exchange(request)
        if owner is not None and not isinstance(owner, str):
            raise TypeError(f"the scope dependency returned {owner!r}; it must return a str (or None to refuse)")
        return None if exchange is None else await exchange.protect(options(exchange.middleware), owner, True)

    return scoped_claim

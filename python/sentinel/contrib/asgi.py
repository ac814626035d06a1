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

import asyncio
import inspect
import logging
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import (
    Any,
    Awaitable,
    Callable,
    Collection,
    Deque,
    List,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from .._client import Sentinel
from .._client_async import AsyncSentinel
from .._results import ExecutionContext, Result, current_execution
from ..errors import KeyMismatch, SentinelError
from . import _idempotency as shared
from ._idempotency import DEFAULT_HARD_TTL_MS, REPLAYED_HEADER, STORED_HEADERS, record_key

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

logger = logging.getLogger("sentinel.asgi")

Message = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]
SentinelSource = Union[AsyncSentinel, Callable[[], AsyncSentinel]]
ScopeFunction = Callable[[HTTPConnection], Union[Optional[str], Awaitable[Optional[str]]]]

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


@dataclass(frozen=True)
class CapturedResponse:
    """A response the application sent: status, headers (names lower-case, as ASGI has them) and body."""

    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Claim:
    """The claim of a protected request: this request runs the handler.

    ``key`` is the record key (``http:<scope>:<Idempotency-Key>``, for
    ``sentinel inspect``); ``fence`` increases with every claim of the key
    (write it to systems that can reject stale writers); ``execution`` is the
    execution's context (``lease_lost``, ``check()``). The claim's ``once()``
    runs in a task of its own, so ``sentinel.current_execution()`` is not set
    in the handler: this is where its context is.
    """

    key: str
    fence: int
    attempt: int
    execution: ExecutionContext


class ResponseTooLarge(BaseException):
    """Raised from ``send`` when a protected response's body passes ``max_response_bytes``.

    A ``BaseException``, like ``asyncio.CancelledError``: it stops the
    application, which must not answer it with a response of its own (the one
    it started is being recorded). The handler has run, so the key is marked
    uncertain.
    """


class _Answered(Exception):
    """Raised by the dependency to answer instead of the route (400, 409, 413, 422, a replay)."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"answered {response.status_code} instead of running the route")
        self.response = response


class _NotStored(Exception):
    """Raised inside once() for a response that must not be recorded (5xx): the key is recorded failed."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the application answered {status}; not recorded, a retry runs the handler again")


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


def _json(answer: shared.Answer) -> Response:
    return JSONResponse(answer.body(), status_code=answer.status, headers=dict(answer.headers))


def _replay(key: str, doc: Any) -> Response:
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), int) or not (
            "body" in doc or "body_base64" in doc):
        raise SentinelError(
            f"{key}: the recorded response {doc!r} is not a response document; reconcile the key with one "
            '(for example {"status": 201, "headers": [["Content-Type", "application/json"]], "body": "{}"})'
        )
    response = Response(shared.document_body(doc), status_code=doc["status"])
    for name, value in shared.document_headers(doc):
        response.headers.append(name, value)
    response.headers[REPLAYED_HEADER] = "true"
    return response


async def _scope_of(scope: ScopeFunction, conn: HTTPConnection) -> Optional[str]:
    owner = scope(conn)
    if inspect.isawaitable(owner):
        owner = await owner
    if owner is not None and not isinstance(owner, str):
        raise TypeError(f"the scope function returned {owner!r}; it must return a str (or None to refuse)")
    return owner


@dataclass(frozen=True)
class _Options:
    """What a protected request needs beyond the middleware's settings; a route's dependency may change them."""

    required: bool
    scope: ScopeFunction
    ttl_ms: Optional[int]
    hard_ttl_ms: Optional[int]
    wait_ms: int
    retain_ms: Optional[int]


class _Body:
    """The request body: read on demand up to a limit, and handed to the application as it would have been."""

    def __init__(self, receive: ASGIReceive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._chunks: List[bytes] = []
        self._unread: Deque[Message] = deque()
        self.size = 0
        self.complete = False
        self.disconnected = False

    async def receive(self) -> Message:
        """The application's ``receive``: what was read ahead first, then the server's."""
        if self._unread:
            return self._unread.popleft()
        message = await self._receive()
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        if message["type"] == "http.request":
            chunk = bytes(message.get("body", b""))
            self.size += len(chunk)
            if self.size <= self._limit:
                self._chunks.append(chunk)
            else:
                self._chunks = []
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.disconnected = True

    async def read(self) -> Optional[bytes]:
        """The whole body; None when it is over the limit or the client left before sending it."""
        while not self.complete and not self.disconnected and self.size <= self._limit:
            message = await self._receive()
            self._note(message)
            self._unread.append(message)
        if self.size > self._limit or not self.complete:
            return None
        return b"".join(self._chunks)


class _Capture:
    """The application's ``send``: passed through, or buffered once the request is claimed."""

    def __init__(self, send: ASGISend, limit: int) -> None:
        self._send = send
        self._limit = limit
        self.active = False
        self.start: Optional[Message] = None
        self._chunks: List[bytes] = []
        self.size = 0
        self.complete = False

    async def send(self, message: Message) -> None:
        """Buffer the response of a claimed request; pass anything else through."""
        kind = message["type"]
        if not self.active or kind not in ("http.response.start", "http.response.body"):
            await self._send(message)
            return
        if self.complete or (kind == "http.response.start") == (self.start is not None):
            raise RuntimeError(f"unexpected ASGI message {kind!r} in a protected response")
        if kind == "http.response.start":
            self.start = dict(message)
            return
        chunk = bytes(message.get("body", b""))
        self.size += len(chunk)
        if self.size > self._limit:
            self._chunks = []
            raise ResponseTooLarge(
                f"the response body passed max_response_bytes ({self._limit}); a protected response is recorded "
                "whole, so it must fit (streaming endpoints do not belong behind the middleware)"
            )
        self._chunks.append(chunk)
        self.complete = not message.get("more_body", False)

    def captured(self) -> Optional[CapturedResponse]:
        """The whole response, or None when the application did not finish one."""
        if self.start is None or not self.complete:
            return None
        headers = tuple((bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                        for n, v in self.start.get("headers", []))
        return CapturedResponse(int(self.start["status"]), headers, b"".join(self._chunks))

    async def deliver(self) -> None:
        """Send the buffered response to the client, as the application sent it."""
        assert self.start is not None
        await self._send(self.start)
        await self._send({"type": "http.response.body", "body": b"".join(self._chunks), "more_body": False})


class _Exchange:
    """One request under the middleware: its body, its response, and its claim once made."""

    def __init__(self, middleware: IdempotencyMiddleware, scope: MutableMapping[str, Any], receive: ASGIReceive,
                 send: ASGISend, given: Optional[str], copies: int) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send
        self.given = given
        self.copies = copies
        self.body = _Body(receive, middleware.max_request_bytes)
        self.capture = _Capture(send, middleware.max_response_bytes)
        self.method = str(scope["method"]).upper()
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        self.full_path = str(scope.get("root_path", "")) + str(scope["path"]) + (f"?{query}" if query else "")
        self.claim: Optional[Claim] = None
        self._task: Optional[asyncio.Future[Result]] = None
        self._outcome: Optional[asyncio.Future[Any]] = None

    # -- the claim -------------------------------------------------------------------------

    async def protect(self, options: _Options, owner: Optional[str], scoped: bool) -> Optional[Claim]:
        """Claim the request's key; None when it is unprotected; raises :class:`_Answered` to answer instead."""
        if self.claim is not None:
            return self.claim
        mw, given = self.middleware, self.given
        if given is None and not options.required:
            return None
        if self.copies > 1:
            raise _Answered(_json(shared.Answer(400, "idempotency_key_invalid",
                                                f"send one {mw.header} header, not {self.copies}")))
        if given is not None and shared.valid_key(given) and not scoped:
            owner = await _scope_of(options.scope, HTTPConnection(self.scope))
        refused = shared.refusal(given, owner, mw.header)
        if refused is not None:
            raise _Answered(_json(refused))
        assert given is not None and owner is not None
        body = await self.body.read()
        if body is None:
            if self.body.disconnected:
                raise _Answered(_json(shared.Answer(400, "request_incomplete",
                                                    "the client disconnected before sending the whole body")))
            raise _Answered(_json(shared.Answer(
                413, "request_too_large",
                f"a request with an {mw.header} may have a body of at most {mw.max_request_bytes} bytes")))
        s = mw.sentinel_now()
        key = record_key(owner, given)
        ttl = options.ttl_ms if options.ttl_ms is not None else s.default_ttl_ms
        hard = options.hard_ttl_ms if options.hard_ttl_ms is not None else max(ttl, DEFAULT_HARD_TTL_MS)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[ExecutionContext] = loop.create_future()
        outcome: asyncio.Future[Any] = loop.create_future()

        async def handler_outcome() -> Any:
            ctx = current_execution()
            assert ctx is not None
            started.set_result(ctx)
            return await outcome  # the response document, or what the application raised

        task = asyncio.ensure_future(s.once(
            key, handler_outcome, ttl_ms=ttl, hard_ttl_ms=hard, wait_ms=options.wait_ms, retain_ms=options.retain_ms,
            fingerprint=shared.fingerprint(self.method, self.full_path, body)))
        try:
            first: List[asyncio.Future[Any]] = [started, task]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if started.done() and not task.done():
                # claimed, but the handler never started: a failure (a retry runs it), not an uncertain outcome
                outcome.set_exception(RuntimeError("the request was cancelled before its handler started"))
            else:
                task.cancel()
            _forget(task)
            raise
        if not started.done():
            started.cancel()
            raise _Answered(await self._answer(s, key, task))
        ctx = started.result()
        self._task, self._outcome = task, outcome
        self.claim = Claim(key, ctx.fence, ctx.attempt, ctx)
        self.capture.active = True
        return self.claim

    async def _answer(self, s: AsyncSentinel, key: str, task: asyncio.Future[Result]) -> Response:
        """The answer to a request whose key once() did not give it: a replay, 409 or 422."""
        header = self.middleware.header
        try:
            result = task.result()
        except KeyMismatch:
            return _json(shared.key_reused(header))
        if result.uncertain:
            logger.warning("%s is uncertain (fence %s): answering 409", key, result.fence)
        answer = shared.state_answer(result, header, await _retry_after(s, key) if result.execution_alive else 1)
        if answer is not None:
            return _json(answer)
        return _replay(key, result.response)

    # -- the application -------------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        """Run the application; record a claimed request's outcome; send what the client must get."""
        try:
            await app(self.scope, self.body.receive, self.capture.send)
        except _Answered as answered:
            if self.capture.start is not None or self._outcome is not None:
                raise RuntimeError("an idempotency answer came after the response had begun") from answered
            await answered.response(self.scope, self.body.receive, self.send)
            return
        except asyncio.CancelledError:
            if self._task is not None:
                self._task.cancel()  # the handler may have had effects: once() marks the key uncertain
                _forget(self._task)
            raise
        except BaseException as exc:
            if self._outcome is None:
                raise
            await self._settle(exc)
            if isinstance(exc, ResponseTooLarge) and self.capture.start is not None:
                logger.error("%s: %s; the key is uncertain", self.claim.key if self.claim else "?", exc)
                await _json(shared.Answer(500, "response_too_large", str(exc)))(
                    self.scope, self.body.receive, self.send)
                return
            raise
        if self._outcome is not None:
            await self._finish()

    async def _settle(self, exc: BaseException) -> None:
        """The handler's outcome is ``exc``: once() records it (failed, or uncertain for a BaseException)."""
        assert self._outcome is not None and self._task is not None
        self._outcome.set_exception(exc)
        try:
            await self._task
        except BaseException as err:
            if err is not exc:
                logger.error("%s: recording the failure %r raised %r", self.claim.key if self.claim else "?",
                             exc, err)

    async def _finish(self) -> None:
        assert self._outcome is not None and self._task is not None
        captured = self.capture.captured()
        if captured is None:
            problem = RuntimeError("the application returned without sending a complete response")
            await self._settle(problem)
            raise problem
        if not self.middleware.should_store(captured):
            await self._settle(_NotStored(captured.status))
        else:
            self._outcome.set_result(shared.document(
                captured.status, _reason(captured.status),
                [(name, value) for name, value in _stored(captured, self.middleware.stored_headers)],
                captured.body))
            await self._task  # the recording; its errors (the database out of reach, fenced out) propagate
        await self.capture.deliver()


def _stored(captured: CapturedResponse, names: Sequence[str]) -> List[Tuple[str, str]]:
    """The recorded headers: those named, in the order named, with the name as spelled there."""
    out: List[Tuple[str, str]] = []
    for wanted in names:
        out.extend((wanted, value) for name, value in captured.headers if name == wanted.lower())
    return out


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _forget(task: asyncio.Future[Any]) -> None:
    """Let a task end on its own; its exception is retrieved so none is reported as lost."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _retry_after(s: AsyncSentinel, key: str) -> int:
    try:
        record = await s.inspect(key)
    except SentinelError:
        record = None
    return shared.retry_after(record)


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

    def options(mw: IdempotencyMiddleware) -> _Options:
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


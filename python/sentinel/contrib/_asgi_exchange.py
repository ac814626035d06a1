"""One request under :class:`~sentinel.contrib.asgi.IdempotencyMiddleware`: its body, its response, its claim.

The middleware hands each protected request to an :class:`_Exchange`, which
reads the body ahead for the fingerprint (:class:`_Body`), claims the key
through ``once()`` in a task of its own, buffers the application's response
(:class:`_Capture`) and records it before sending it. The public names here
are documented and imported from :mod:`sentinel.contrib.asgi`.
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
    Deque,
    List,
    MutableMapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from .._client_async import AsyncSentinel
from .._results import ExecutionContext, Result, current_execution
from ..errors import KeyMismatch, SentinelError
from . import _idempotency as shared
from ._idempotency import DEFAULT_HARD_TTL_MS, REPLAYED_HEADER, record_key

logger = logging.getLogger("sentinel.asgi")

Message = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]
ScopeFunction = Callable[[HTTPConnection], Union[Optional[str], Awaitable[Optional[str]]]]


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


class _Middleware(Protocol):
    """What an exchange reads of its middleware (an :class:`~sentinel.contrib.asgi.IdempotencyMiddleware`)."""

    routes: str
    header: str
    defaults: _Options
    should_store: Callable[[CapturedResponse], bool]
    stored_headers: Tuple[str, ...]
    max_request_bytes: int
    max_response_bytes: int

    def sentinel_now(self) -> AsyncSentinel:
        """The AsyncSentinel for a request."""


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

    def __init__(self, middleware: _Middleware, scope: MutableMapping[str, Any], receive: ASGIReceive,
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

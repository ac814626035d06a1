"""``sentinel web``: a small operator page for a namespace's records (``pip install 'sentinel-coordination[web]'``).

Pages: the records of a namespace by effective state (``/``), one key with its
event history (``/key``) and the counts of a namespace (``/stats``). They read
through the protocol's read functions (``list_v2``, ``inspect_v1``,
``events_v1``, ``stats_v1``) as the role of the DSN, so the database's rights
decide which namespaces a page may show.

Reconciling (``POST /reconcile``, ``reconcile_v1``) is refused unless the app
was built with ``allow_reconcile=True``, which needs a password: every page then
asks for HTTP Basic authentication, the user name given is recorded as the
actor (``web:<name>``), and the form carries a token bound to that name, so
another site cannot post it with the browser's stored credentials.

Everything an application chose (keys, owners, actors, reasons, documents) is
HTML-escaped, control and format characters shown as escapes; the pages carry
no script and a Content-Security-Policy that forbids any. The server answers
only the Host names it was bound to (a loopback address by default), so a
web page cannot reach it by rebinding its own name to 127.0.0.1.

Starlette and uvicorn are imported only when the page is built or served.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import socket
import stat
import sys
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Sequence,
    TextIO,
    Tuple,
)
from urllib.parse import parse_qs

from ._cli_io import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _dsn
from ._ops import Operations
from ._options import _check_namespace
from ._present import form_message, http_status
from ._web_html import CSS, MAX_ROWS, Markup, _Failure, _Page, fmt, shown
from .errors import (
    InvalidArgument,
    SentinelError,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["create_app", "add_web_command", "cmd_web", "INSTALL_HINT"]

log = logging.getLogger("sentinel.web")

#: What to run when Starlette or uvicorn is missing.
INSTALL_HINT = "pip install 'sentinel-coordination[web]'"
DEFAULT_PORT = 8765
MAX_FORM_BYTES = 2 * 1024 * 1024  # a response document is capped at 1 MiB by default
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _require_starlette() -> None:
    try:
        import starlette  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the operator page needs Starlette: {INSTALL_HINT}") from exc


_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def create_app(
    conninfo: str,
    *,
    namespace: str = "default",
    allow_reconcile: bool = False,
    password: Optional[str] = None,
    allowed_hosts: Optional[Sequence[str]] = LOOPBACK_NAMES,
    max_rows: int = 100,
    connect_timeout: float = 10.0,
) -> Starlette:
    """The operator page as a Starlette (ASGI) app; ``sentinel web`` serves it with uvicorn.

    - ``conninfo``: the database; the pages act as its role, whose rights
      (``app``, ``probe``, ``operator``) decide what they may read and resolve.
    - ``namespace``: the namespace shown first (``?namespace=`` shows another).
    - ``allow_reconcile``: offer the reconcile form and accept ``POST
      /reconcile``; needs ``password``.
    - ``password``: ask every request for HTTP Basic authentication with this
      password; the user name given is recorded as the actor ``web:<name>``.
    - ``allowed_hosts``: the Host names answered (default: the loopback names);
      None answers any.
    - ``max_rows``: records listed per page unless ``?limit=`` says otherwise.

    Raises ``ValueError`` for ``allow_reconcile`` without a password, and
    ``ImportError`` (naming the extra to install) without Starlette.
    """
    _require_starlette()
    from starlette.applications import Starlette
    from starlette.routing import Route

    if allow_reconcile and not password:
        raise ValueError("allow_reconcile=True needs a password: reconciling is offered only behind HTTP Basic "
                         "authentication (pass password=...)")
    if password is not None and not password:
        raise ValueError("password must not be empty")
    if not 1 <= max_rows <= MAX_ROWS:
        raise ValueError(f"max_rows must be from 1 to {MAX_ROWS}, got {max_rows}")
    page = _Page(conninfo, namespace, allow_reconcile, password, allowed_hosts, max_rows, connect_timeout)
    ends = _Endpoints(page)
    app = Starlette(routes=[
        Route("/", ends.rendered(page.list_page)),
        Route("/key", ends.rendered(page.key_page)),
        Route("/stats", ends.rendered(page.stats_page)),
        Route("/reconcile", ends.reconcile, methods=["POST"]),
        Route("/style.css", ends.css),
    ])
    app.add_middleware(_Guard, page=page)
    return app


def _root(request: Request) -> str:
    """The path the app is mounted at ('' at the root), for the links of its pages."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _user(request: Request) -> Optional[str]:
    """The user name the request signed in with (None: the page asks for no password)."""
    user = request.scope.get("sentinel.web.user")
    return None if user is None else str(user)


class _Endpoints:
    """The Starlette endpoints around a :class:`_Page` (sync ones run in Starlette's thread pool)."""

    def __init__(self, page: _Page) -> None:
        self.page = page

    def failure(self, request: Request, exc: BaseException, status: int) -> Response:
        from starlette.responses import HTMLResponse

        namespace = request.query_params.get("namespace") or self.page.namespace
        body = fmt('<div class="error">{}</div><p><a href="{}/">Back to the list</a></p>',
                   shown(form_message(exc, "force")), _root(request))
        return HTMLResponse(self.page.layout(_root(request), "Error", namespace, body, _user(request)),
                            status_code=status)

    def rendered(self, view: Callable[[str, Mapping[str, str], Optional[str]], Tuple[int, Markup]]
                 ) -> Callable[[Request], Response]:
        """A sync endpoint showing ``view``, or the error page for what it refused."""
        from starlette.responses import HTMLResponse

        def endpoint(request: Request) -> Response:
            try:
                status, body = view(_root(request), dict(request.query_params), _user(request))
            except _Failure as exc:
                return self.failure(request, exc, exc.status)
            except SentinelError as exc:
                return self.failure(request, exc, http_status(exc))
            return HTMLResponse(body, status_code=status)

        return endpoint

    def css(self, request: Request) -> Response:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(CSS, media_type="text/css")

    async def form(self, request: Request, user: Optional[str]) -> Dict[str, str]:
        """The posted reconcile form, checked: reconciling on, same site, size, token; else :class:`_Failure`."""
        if not self.page.allow_reconcile or user is None:
            raise _Failure(403, "reconciling is off on this page: start `sentinel web` with --allow-reconcile and "
                                "a password")
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise _Failure(403, "the form was posted from another site")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_FORM_BYTES:
                raise _Failure(413, f"the form is over {MAX_FORM_BYTES} bytes")
        try:
            form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True,
                                                 max_num_fields=20).items()}
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Failure(400, "the form could not be read (send it from the key's page)") from exc
        if not hmac.compare_digest(form.get("token", ""), self.page.token(user)):
            raise _Failure(403, "the form token is missing or stale: reload the key's page and submit its form")
        return form

    async def reconcile(self, request: Request) -> Response:
        """``POST /reconcile``: resolve the key, then show its page (303), or the form again with the refusal."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import HTMLResponse, RedirectResponse

        user = _user(request)
        try:
            form = await self.form(request, user)
        except _Failure as exc:
            return self.failure(request, exc, exc.status)
        assert user is not None
        params = {"namespace": form.get("namespace") or self.page.namespace, "key": form.get("key", "")}

        def run() -> Response:
            try:
                self.page.reconcile(form, user)
            except (_Failure, SentinelError) as exc:
                status = exc.status if isinstance(exc, _Failure) else http_status(exc)
                try:
                    code, body = self.page.key_page(_root(request), params, user, form=form,
                                                    problem=form_message(exc, "force"), status=status)
                except (_Failure, SentinelError):
                    return self.failure(request, exc, status)
                return HTMLResponse(body, status_code=code)
            url = self.page.key_url(_root(request), params["namespace"], params["key"], reconciled="1")
            return RedirectResponse(url, status_code=303)

        return await run_in_threadpool(run)


class _Guard:
    """ASGI middleware: the Host check, authentication, and the security headers of every answer."""

    def __init__(self, app: Any, page: _Page) -> None:
        self.app = app
        self.page = page

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import PlainTextResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        headers = Headers(scope=scope)
        if not self.page.host_allowed(headers.get("host")):
            answer = PlainTextResponse(
                "sentinel web: this server does not answer that Host name (start it with --allowed-host NAME to "
                "reach it by another name)\n", status_code=400)
            await answer(scope, receive, send_with_headers)
            return
        if self.page.password is not None:
            user = self.page.user_of(headers.get("authorization"))
            if user is None:
                answer = PlainTextResponse(
                    "sentinel web: sign in (HTTP Basic) with any user name, which is recorded as the actor, and the "
                    "password the server was started with\n", status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="sentinel", charset="UTF-8"'})
                await answer(scope, receive, send_with_headers)
                return
            scope = {**scope, "sentinel.web.user": user}
        await self.app(scope, receive, send_with_headers)


# -- the command ----------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def _password(args: argparse.Namespace) -> Tuple[Optional[str], Optional[str]]:
    """The password --password-env or --password-file names (None: neither), or the problem with it."""
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            return None, (f"--password-env {args.password_env}: that environment variable is "
                          f"{'empty' if value is not None else 'not set'}; export the password in it")
        return value, None
    if args.password_file:
        path = Path(args.password_file)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"--password-file {args.password_file}: cannot read it ({exc})"
        value = text.split("\n", 1)[0].rstrip("\r")
        if not value:
            return None, f"--password-file {args.password_file}: the file is empty; write the password in it"
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users (chmod 600 %s)", args.password_file, args.password_file)
        return value, None
    return None, None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port)."""
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def cmd_web(args: argparse.Namespace, out: TextIO) -> int:
    """Serve a small operator page: a namespace's records by state, a key with its event history, the counts.

    Read-only unless --allow-reconcile, which needs a password (--password-env
    VAR or --password-file PATH): every page then asks for HTTP Basic
    authentication, and the user name given is recorded as the actor
    (web:NAME). Binds 127.0.0.1 unless --host says otherwise; another address
    needs a password too. The pages act as the database role of the DSN.
    """
    def refuse(message: str) -> int:
        sys.stderr.write(f"sentinel web: {message}\n")
        return EXIT_USAGE

    try:
        _require_starlette()
        import uvicorn
    except ImportError:
        sys.stderr.write(f"sentinel web: needs Starlette and uvicorn: {INSTALL_HINT}\n")
        return EXIT_FAILED
    password, problem = _password(args)
    if problem is not None:
        return refuse(problem)
    if args.allow_reconcile and password is None:
        return refuse("--allow-reconcile needs authentication: give a password with --password-env VAR or "
                      "--password-file PATH (HTTP Basic; the user name you sign in with is recorded as the actor)")
    if not _is_loopback(args.host) and password is None:
        return refuse(f"--host {args.host} serves the records beyond this machine: give a password with "
                      "--password-env VAR or --password-file PATH, or bind 127.0.0.1 behind your own "
                      "authenticating proxy")
    if not 0 <= args.port <= 65535:
        return refuse(f"--port must be from 0 to 65535, got {args.port}")
    if _is_wildcard(args.host):
        hosts: Optional[List[str]] = None if not args.allowed_host else list(args.allowed_host)
    elif _is_loopback(args.host):
        hosts = [*LOOPBACK_NAMES, *args.allowed_host]
    else:
        hosts = [args.host, *args.allowed_host]
    try:
        namespace = _check_namespace(args.namespace)
    except InvalidArgument as exc:
        return refuse(form_message(exc, "force"))
    conninfo = _dsn(args)
    with Operations(conninfo=conninfo, namespace=namespace, connect_timeout=10.0) as ops:
        ops.stats()  # the database answers, the schema is there, the role may read the namespace
    app = create_app(conninfo, namespace=namespace, allow_reconcile=args.allow_reconcile, password=password,
                     allowed_hosts=hosts)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        sys.stderr.write(f"sentinel web: cannot listen on {args.host}:{args.port}: {exc}\n")
        return EXIT_FAILED
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    mode = "reconcile enabled, HTTP Basic" if args.allow_reconcile else (
        "read-only, HTTP Basic" if password is not None else "read-only")
    out.write(f"sentinel web: serving namespace {namespace} on http://{shown_host}:{bound_port}/ ({mode}); "
              "Ctrl-C stops it\n")
    out.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK


def add_web_command(sub: Any) -> None:
    """The ``web`` subcommand of ``sentinel`` (Starlette and uvicorn are imported only when it runs)."""
    p = sub.add_parser("web", help="a small operator page in the browser (pip install 'sentinel-coordination[web]')",
                       description=cmd_web.__doc__)
    p.add_argument("--dsn", help="libpq connection string or URL (default: $SENTINEL_DSN, $DATABASE_URL, "
                                 "then PGHOST/PGDATABASE/... as libpq reads them)")
    p.add_argument("-n", "--namespace", default=os.environ.get("SENTINEL_NAMESPACE", "default"),
                   help="the namespace shown first (default: $SENTINEL_NAMESPACE or 'default'); the page shows others")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one, printed at start)")
    p.add_argument("--allow-reconcile", action="store_true",
                   help="offer the reconcile form (needs --password-env or --password-file)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-env", metavar="VAR", help="ask for HTTP Basic auth with the password in $VAR")
    secret.add_argument("--password-file", metavar="PATH",
                        help="ask for HTTP Basic auth with the password in this file (its first line)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (a proxy's, say); repeatable")
    p.set_defaults(func=cmd_web)

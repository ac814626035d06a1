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
import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import secrets
import socket
import stat
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Sequence,
    TextIO,
    Tuple,
)
from urllib.parse import parse_qs, urlencode

from ._cli_io import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _dsn, plain
from ._ops import Operations
from ._options import _check_key, _check_namespace
from ._rows import EventRow, ExecutionRecord, Stats
from .errors import (
    DatabaseUnavailable,
    ExecutionNotFound,
    InvalidArgument,
    LoginRefused,
    PermissionDenied,
    ReconcileRefused,
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
STATES = ("claimed", "executing", "completed", "failed", "uncertain")
ACTIONS = ("completed", "failed", "release")
DEFAULT_PORT = 8765
MAX_ROWS = 10000
MAX_FORM_BYTES = 2 * 1024 * 1024  # a response document is capped at 1 MiB by default
MAX_USER_CHARS = 100
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _require_starlette() -> None:
    try:
        import starlette  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the operator page needs Starlette: {INSTALL_HINT}") from exc


# -- HTML -----------------------------------------------------------------------


class Markup(str):
    """Text that is already HTML (everything else is escaped when it is put in a page)."""


def esc(value: Any) -> Markup:
    """``value`` as HTML text: itself if it is :class:`Markup`, else escaped (quotes too)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def shown(value: Any) -> Markup:
    """Text an application chose (a key, an owner, a reason), on one line: control characters as escapes."""
    return esc(plain(value))


def fmt(template: str, *args: Any) -> Markup:
    """``template.format(*args)`` with every argument escaped unless it is :class:`Markup`."""
    return Markup(template.format(*(esc(a) for a in args)))


def join(parts: Iterable[Any]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def document(value: Any) -> Markup:
    """A JSON document, indented, ASCII only (so no bidirectional or control character survives), escaped."""
    return esc(json.dumps(value, indent=2, ensure_ascii=True, sort_keys=True, default=str))


def why(record: ExecutionRecord) -> str:
    """The reason column of a record: why it is uncertain, or who reconciled it and why."""
    if record["state"] == "uncertain":
        return record["uncertain_reason"] or ""
    if record["reconciled_by"]:
        return f"reconciled by {record['reconciled_by']}: {record['reconcile_reason'] or ''}"
    return ""


def when(value: Optional[datetime]) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


def age(now: Optional[datetime], then: Optional[datetime]) -> str:
    """How long ago ``then`` was, at the database's ``now``: ``4.2s``, ``3.0m``, ``1.5h``, ``2.0d``."""
    if now is None or then is None:
        return "-"
    secs = max((now - then).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.1f}{unit}"
    return f"{secs:.1f}s"


CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6474; --line: #d9dee7; --bg: #f5f7fa; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--ink);
       background: var(--bg); }
header { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #1f2a3d; color: #fff; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
header a { color: #d5e2ff; text-decoration: none; }
header nav a { margin-right: 14px; }
header form { margin-left: auto; display: flex; gap: 6px; align-items: center; }
header input { width: 160px; }
.mode { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #3a4761; color: #e8eefc; }
.mode.rw { background: #8a3b12; }
main { padding: 18px 24px 40px; max-width: 1280px; }
h2 { font-size: 18px; margin: 4px 0 14px; word-break: break-all; }
h3 { font-size: 15px; margin: 22px 0 8px; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f6; font-weight: 600; font-size: 13px; color: var(--muted); }
td.key { font-family: "DejaVu Sans Mono", ui-monospace, monospace; word-break: break-all; }
table.fields th { width: 180px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; font: 12px/1.4 "DejaVu Sans Mono", monospace; }
.state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.state.uncertain { background: #fde2cc; color: #8a3b12; }
.state.completed { background: #d8f0dd; color: #1d6b34; }
.state.failed { background: #f6d5d5; color: #8e2020; }
.state.executing { background: #d9e6fb; color: #1e4a94; }
.state.claimed { background: #e6e9f0; color: #3d4657; }
.counts { display: flex; gap: 10px; margin: 0 0 16px; flex-wrap: wrap; }
.counts a { display: block; padding: 8px 14px; background: #fff; border: 1px solid var(--line); border-radius: 6px;
            text-decoration: none; color: var(--ink); min-width: 110px; }
.counts a.on { border-color: var(--accent); box-shadow: 0 0 0 1px var(--accent); }
.counts b { display: block; font-size: 20px; }
.counts span { color: var(--muted); font-size: 12px; }
form.filters { display: flex; gap: 8px; margin: 0 0 14px; align-items: center; }
input, select, textarea { font: inherit; padding: 4px 6px; border: 1px solid #b9c1ce; border-radius: 4px; }
textarea { width: 100%; font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
button { font: inherit; padding: 4px 12px; border-radius: 4px; border: 1px solid var(--accent);
         background: var(--accent); color: #fff; cursor: pointer; }
.note { color: var(--muted); font-size: 13px; margin: 8px 0; }
.error { background: #fbe3e3; border: 1px solid #e3a5a5; padding: 8px 12px; border-radius: 4px; margin: 0 0 14px; }
.ok { background: #dff3e4; border: 1px solid #9fd0ab; padding: 8px 12px; border-radius: 4px; margin: 0 0 14px; }
fieldset { border: 1px solid var(--line); background: #fff; padding: 10px 14px; margin: 0; }
fieldset label { display: block; margin: 6px 0; }
fieldset label > input:not([type]) { display: block; width: 60%; margin-top: 4px; }
"""

_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


# -- the page -------------------------------------------------------------------


@dataclass
class _Failure(Exception):
    """A request the page refuses, with the status and the message shown."""

    status: int
    message: str


_STATUS_OF: Tuple[Tuple[type, int], ...] = (
    (ExecutionNotFound, 404),
    (ReconcileRefused, 409),
    (PermissionDenied, 403),
    (InvalidArgument, 400),
    (LoginRefused, 502),
    (DatabaseUnavailable, 503),
)


def _status_of(exc: SentinelError) -> int:
    for cls, code in _STATUS_OF:
        if isinstance(exc, cls):
            return code
    return 500


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text[len("sentinel: "):] if text.startswith("sentinel: ") else text
    return text.replace("pass force=True to override", "tick force to override")


class _Page:
    """The pages of one app: its settings, and the HTML of each view."""

    def __init__(self, conninfo: str, namespace: str, allow_reconcile: bool, password: Optional[str],
                 allowed_hosts: Optional[Sequence[str]], max_rows: int, connect_timeout: float) -> None:
        self.conninfo = conninfo
        self.namespace = _check_namespace(namespace)
        self.allow_reconcile = allow_reconcile
        self.password = password
        self.allowed_hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}
        self.max_rows = max_rows
        self.connect_timeout = connect_timeout
        self._secret = secrets.token_bytes(32)

    # -- requests --

    def ops(self, namespace: str) -> Operations:
        """The operator calls on ``namespace`` for one request (its connection is closed after)."""
        return Operations(conninfo=self.conninfo, namespace=namespace, connect_timeout=self.connect_timeout)

    def host_allowed(self, host: Optional[str]) -> bool:
        if self.allowed_hosts is None:
            return True
        if not host:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
        if name.startswith("["):
            name = name[1:].split("]", 1)[0]
        return name.lower() in self.allowed_hosts

    def user_of(self, authorization: Optional[str]) -> Optional[str]:
        """The user name of a valid ``Authorization: Basic`` header (the shared password), else None."""
        assert self.password is not None
        if not authorization or authorization[:6].lower() != "basic ":
            return None
        try:
            text = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, given = text.partition(":")
        expected = hashlib.sha256(self.password.encode("utf-8")).digest()
        good = hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(), expected)
        if not sep or not good or not user or len(user) > MAX_USER_CHARS or not user.isprintable():
            return None
        return user

    def token(self, user: str) -> str:
        """The form token of ``user``: another site cannot read it, so cannot post the form."""
        return hmac.new(self._secret, b"reconcile\x00" + user.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- pieces --

    def layout(self, root: str, title: str, namespace: str, body: Markup, user: Optional[str]) -> Markup:
        if self.allow_reconcile:
            mode = fmt('<span class="mode rw">reconcile enabled &middot; signed in as {}</span>', shown(user))
        elif user is not None:
            mode = fmt('<span class="mode">read-only &middot; signed in as {}</span>', shown(user))
        else:
            mode = Markup('<span class="mode">read-only</span>')
        ns = {"namespace": namespace}
        return fmt(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>{} &middot; Sentinel</title><link rel="stylesheet" href="{}/style.css"></head>\n<body>'
            '<header><h1><a href="{}">Sentinel</a></h1><nav><a href="{}">Executions</a><a href="{}">Stats</a></nav>{}'
            '<form method="get" action="{}/"><label for="ns">Namespace</label>'
            '<input id="ns" name="namespace" value="{}" required><button type="submit">Show</button></form>'
            '</header>\n<main>{}</main></body></html>\n',
            title, root, f"{root}/?{urlencode(ns)}", f"{root}/?{urlencode(ns)}", f"{root}/stats?{urlencode(ns)}", mode,
            root, namespace, body,
        )

    @staticmethod
    def badge(state: str) -> Markup:
        css = state if state in STATES else "claimed"
        return fmt('<span class="state {}">{}</span>', css, state)

    def counts(self, root: str, namespace: str, st: Stats, chosen: Optional[str]) -> Markup:
        by_state: Dict[str, Any] = dict(st)
        cells = [fmt('<a href="{}" class="{}"><b>{}</b><span>all</span></a>',
                     f"{root}/?{urlencode({'namespace': namespace})}", "on" if chosen is None else "",
                     sum(int(by_state[s]) for s in STATES))]
        for s in STATES:
            cells.append(fmt('<a href="{}" class="{}"><b>{}</b><span>{}</span></a>',
                             f"{root}/?{urlencode({'namespace': namespace, 'state': s})}", "on" if chosen == s else "",
                             by_state[s], s))
        return fmt('<div class="counts">{}</div>', join(cells))

    @staticmethod
    def key_url(root: str, namespace: str, key: str, **extra: str) -> str:
        return f"{root}/key?{urlencode({'namespace': namespace, 'key': key, **extra})}"

    # -- views --

    def list_page(self, root: str, params: Mapping[str, str], user: Optional[str]) -> Tuple[int, Markup]:
        namespace = params.get("namespace") or self.namespace
        state = params.get("state") or None
        query = (params.get("q") or "").strip()
        if state is not None and state not in STATES:
            raise _Failure(400, f"unknown state {state!r}: use one of {', '.join(STATES)}")
        limit = _limit(params.get("limit"), self.max_rows)
        with self.ops(namespace) as ops:
            st = ops.stats()
            rows = ops.list(state, max_rows=MAX_ROWS if query else limit)
            if query:
                rows = [r for r in rows if query.casefold() in r["key"].casefold()]
                exact = _inspect_or_none(ops, query)
                if exact is not None and (state is None or exact["state"] == state) \
                        and all(r["key"] != query for r in rows):
                    rows.insert(0, exact)
                rows = rows[:limit]
        options = join(fmt('<option value="{}"{}>{}</option>', s, Markup(" selected") if s == (state or "") else "",
                           s or "any state") for s in ("",) + STATES)
        filters = fmt(
            '<form class="filters" method="get" action="{}/"><input type="hidden" name="namespace" value="{}">'
            '<select name="state" aria-label="state">{}</select>'
            '<input name="q" value="{}" placeholder="key contains..." aria-label="search keys">'
            '<button type="submit">Filter</button></form>', root, namespace, options, query)
        if rows:
            body_rows = join(fmt(
                '<tr><td class="key"><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
                '<td>{} ago</td><td>{}</td></tr>',
                self.key_url(root, namespace, r["key"]), shown(r["key"]), self.badge(r["state"]), r["fence"],
                r["attempt"], shown(r["owner"] or "-"), age(r["now"], r["updated_at"]), shown(why(r))) for r in rows)
            table = fmt('<table><thead><tr><th>key</th><th>state</th><th>fence</th><th>attempt</th><th>owner</th>'
                        '<th>changed</th><th>reason</th></tr></thead><tbody>{}</tbody></table>', body_rows)
        else:
            table = Markup('<p class="note">No records.</p>')
        note = fmt('<p class="note">{} record(s), oldest change first{}. Oldest uncertain: {}.</p>', len(rows),
                   f", keys containing {plain(query)!r} among the first {MAX_ROWS}" if query else f", at most {limit}",
                   when(st["oldest_uncertain_at"]))
        body = fmt("<h2>Executions in {}</h2>{}{}{}{}", shown(namespace), self.counts(root, namespace, st, state),
                   filters, table, note)
        return 200, self.layout(root, f"Executions in {namespace}", namespace, body, user)

    def key_page(self, root: str, params: Mapping[str, str], user: Optional[str], *,
                 form: Optional[Mapping[str, str]] = None, problem: Optional[str] = None,
                 status: int = 200) -> Tuple[int, Markup]:
        namespace = params.get("namespace") or self.namespace
        key = _check_key(params.get("key") or "")
        with self.ops(namespace) as ops:
            record = ops.inspect(key)
            if record is None:
                raise _Failure(404, f"no execution record for {namespace}/{plain(key)}")
            events = ops.events(key)
        parts: List[Markup] = [fmt("<h2>{} <small>in {}</small></h2>", shown(key), shown(namespace))]
        if problem is not None:
            parts.append(fmt('<div class="error">{}</div>', shown(problem)))
        elif params.get("reconciled"):
            parts.append(fmt('<div class="ok">Reconciled by {}: the key is now {} (fence {}).</div>',
                             shown(record["reconciled_by"]), record["state"], record["fence"]))
        parts.append(_record_table(record, self.badge(record["state"])))
        parts.append(Markup("<h3>History</h3>"))
        parts.append(_events_table(events))
        if self.allow_reconcile and user is not None:
            parts.append(self.reconcile_form(root, namespace, key, record, user, form or {}))
        else:
            parts.append(Markup('<p class="note">Reconciling is off on this page (start it with '
                                '<code>--allow-reconcile</code> and a password), or use '
                                '<code>sentinel reconcile</code>.</p>'))
        return status, self.layout(root, plain(key), namespace, join(parts), user)

    def reconcile_form(self, root: str, namespace: str, key: str, record: ExecutionRecord, user: str,
                       form: Mapping[str, str]) -> Markup:
        action = form.get("action") or ""
        radios = join(fmt('<label><input type="radio" name="action" value="{}"{} required> {}</label>', a,
                          Markup(" checked") if a == action else "", label) for a, label in (
            ("completed", "completed: record the response below; it is replayed from now on"),
            ("failed", "failed: record the error below (or a default); replayed as a permanent failure"),
            ("release", "release: record a retryable failure, so the next call runs the work again")))
        stuck = record["state"] in ("uncertain", "failed") or (
            record["state"] == "claimed" and record["lease_expires_at"] <= record["now"])
        return fmt(
            '<h3>Reconcile</h3><form method="post" action="{}/reconcile"><fieldset>'
            '<input type="hidden" name="namespace" value="{}"><input type="hidden" name="key" value="{}">'
            '<input type="hidden" name="token" value="{}">{}'
            '<label>Response (JSON, for completed)<textarea name="response" rows="3">{}</textarea></label>'
            '<label>Error (JSON, optional, for failed or release)<textarea name="error" rows="2">{}</textarea></label>'
            '<label>Reason (recorded)<input name="reason" value="{}" required maxlength="1000" size="60"></label>'
            '<label><input type="checkbox" name="force" value="1"{}> force: the key is {}{}</label>'
            '<p class="note">Recorded as actor {}. The key gets a new fence, so a worker still running is fenced out.'
            '</p><button type="submit">Reconcile</button></fieldset></form>',
            root, namespace, key, self.token(user), radios, form.get("response", ""), form.get("error", ""),
            form.get("reason", ""), Markup(" checked") if form.get("force") else "", record["state"],
            " (not needed)" if stuck else ", not uncertain, failed or a lapsed claim: needs force and the operator "
                                          "right",
            shown(f"web:{user}"))

    def stats_page(self, root: str, params: Mapping[str, str], user: Optional[str]) -> Tuple[int, Markup]:
        namespace = params.get("namespace") or self.namespace
        with self.ops(namespace) as ops:
            st = ops.stats()
        rows = join(fmt("<tr><th>{}</th><td>{}</td></tr>", k, when(v) if isinstance(v, datetime) or v is None else v)
                    for k, v in st.items() if k != "namespace")
        body = fmt("<h2>Stats of {}</h2>{}<table class=\"fields\"><tbody>{}</tbody></table>", shown(namespace),
                   self.counts(root, namespace, st, None), rows)
        return 200, self.layout(root, f"Stats of {namespace}", namespace, body, user)

    def reconcile(self, form: Mapping[str, str], user: str) -> Dict[str, Any]:
        """Validate the posted form and reconcile; raises :class:`_Failure` with what to show."""
        action = form.get("action", "")
        if action not in ACTIONS:
            raise _Failure(400, f"choose an outcome: {', '.join(ACTIONS)}")
        reason = form.get("reason", "").strip()
        if not reason:
            raise _Failure(400, "give a reason: it is recorded with the outcome")
        response = _json_field(form, "response", required=action == "completed")
        error = _json_field(form, "error", required=False)
        with self.ops(form.get("namespace") or self.namespace) as ops:
            return dict(ops.reconcile(form.get("key", ""), action=action, actor=f"web:{user}", reason=reason,
                                      response=response, error=error, force=bool(form.get("force"))))


def _limit(text: Optional[str], default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_ROWS:
        raise _Failure(400, f"limit must be a whole number from 1 to {MAX_ROWS}, got {plain(text)!r}")
    return int(text)


def _json_field(form: Mapping[str, str], name: str, *, required: bool) -> Any:
    text = form.get(name, "").strip()
    if not text:
        if required:
            raise _Failure(400, f"completed needs a {name}: the JSON document to replay, e.g. {{\"charge\": 1}}")
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _Failure(400, f"the {name} is not valid JSON: {exc}") from exc


def _inspect_or_none(ops: Operations, key: str) -> Optional[ExecutionRecord]:
    try:
        return ops.inspect(key)
    except InvalidArgument:
        return None


def _record_table(record: ExecutionRecord, badge: Markup) -> Markup:
    rows: List[Markup] = []
    for name, value in record.items():
        if name in ("namespace", "key", "now"):
            continue
        if name == "state":
            cell = badge
        elif name in ("response", "error"):
            if value is None:
                continue
            cell = fmt("<pre>{}</pre>", document(value))
        elif isinstance(value, datetime):
            cell = esc(when(value))
        elif value is None:
            continue
        else:
            cell = shown(value)
        rows.append(fmt("<tr><th>{}</th><td>{}</td></tr>", name, cell))
    return fmt('<table class="fields"><tbody>{}</tbody></table>', join(rows))


def _events_table(events: Sequence[EventRow]) -> Markup:
    if not events:
        return Markup('<p class="note">No events (they may have been purged).</p>')
    rows = join(fmt(
        "<tr><td>{}</td><td>{}</td><td>{} &rarr; {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        when(e["at"]), e["fence"], e["from_state"] or "-", e["to_state"], shown(e["actor"] or e["owner"] or "-"),
        shown(e["reason"] or ""), shown(e["db_user"] or "-") if e.get("db_role") is None
        else shown(f"{e['db_user']} as {e['db_role']}"),
        Markup("") if not e["details"] else fmt("<pre>{}</pre>", json.dumps(
            e["details"], ensure_ascii=True, sort_keys=True, default=str)), e["id"])
        for e in events)
    return fmt('<table><thead><tr><th>at</th><th>fence</th><th>transition</th><th>actor / owner</th><th>reason</th>'
               '<th>database role</th><th>details</th><th>event</th></tr></thead><tbody>{}</tbody></table>', rows)


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
        body = fmt('<div class="error">{}</div><p><a href="{}/">Back to the list</a></p>', shown(_message(exc)),
                   _root(request))
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
                return self.failure(request, exc, _status_of(exc))
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
                status = exc.status if isinstance(exc, _Failure) else _status_of(exc)
                try:
                    code, body = self.page.key_page(_root(request), params, user, form=form, problem=_message(exc),
                                                    status=status)
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
        return refuse(_message(exc))
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

"""The HTML of ``sentinel web``: escaping, the style sheet, and the pages of a namespace's records.

:class:`_Page` holds an app's settings and builds each view (the list, a key
with its history, the counts, the reconcile form) as :class:`Markup`; the
Starlette app around it is in :mod:`sentinel._web`. Everything an application
chose is put in a page through :func:`esc`, :func:`shown` or :func:`fmt`, which
escape it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlencode

from ._cli_io import plain
from ._ops import Operations
from ._options import _check_key, _check_namespace
from ._present import STATES, age, why
from ._rows import EventRow, ExecutionRecord, Stats
from .errors import InvalidArgument

ACTIONS = ("completed", "failed", "release")
MAX_ROWS = 10000
MAX_USER_CHARS = 100


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


def when(value: Optional[datetime]) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


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

# -- the page -------------------------------------------------------------------


@dataclass
class _Failure(Exception):
    """A request the page refuses, with the status and the message shown."""

    status: int
    message: str


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

"""Sentinel's executions in the Django admin: list by namespace and state, search, a key's history, reconcile.

With ``django.contrib.admin`` (and ``django.contrib.messages``) installed, the
admin's index shows "Sentinel > Executions":

- the list (``admin/sentinel/execution/``): a namespace's records by effective
  state (``?namespace=``, ``?state=``), the counts of each state, and a search
  by key (``?q=``: the exact key, and keys containing the text among the first
  10,000 records);
- a key's page (``admin/sentinel/execution/key/?namespace=&key=``): the record
  and its event history;
- the reconcile form (``.../key/reconcile/``): the outcome (completed with a
  JSON response, failed with an optional JSON error, or release), a reason, and
  ``force``; the staff user's user name is recorded as the actor.

Seeing needs the permission ``sentinel.view_execution``; reconciling also
``sentinel.reconcile_execution`` (superusers have both). Everything goes through
Sentinel's SQL functions (``list_v2``, ``inspect_v1``, ``events_v1``,
``stats_v1``, ``reconcile_v1``) as the role of ``SENTINEL["DATABASE"]``, whose
rights in the database apply on top: reconciling needs its ``probe`` right
(uncertain keys) or ``operator`` right (any key, ``force``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from django import forms

from ..._cli_io import plain
from ..._ops import Operations
from ..._options import _check_namespace
from ..._present import STATES, age, form_message, http_status, why
from ..._rows import EventRow, ExecutionRecord, Stats
from ...errors import (
    ExecutionNotFound,
    InvalidArgument,
    SentinelError,
)
from .conf import conninfo_for_alias, sentinel_settings
from .models import Execution

__all__ = ["ExecutionAdmin", "ReconcileForm"]

SEARCH_ROWS = 10000
LIST_ROWS = 100


def _text(value: Any) -> str:
    """A record's value as one line: times to the second, application-chosen text with its controls escaped."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return plain(value)


def _json(text: str) -> Any:
    return json.loads(text)


class ReconcileForm(forms.Form):  # type: ignore[misc]
    """What an operator decides for a key: the outcome, its document, a reason, and whether to force."""

    action = forms.ChoiceField(label="Outcome", widget=forms.RadioSelect, choices=[
        ("completed", "Completed: record the response below; it is replayed from now on"),
        ("failed", "Failed: record the error below (or a default); replayed as a permanent failure"),
        ("release", "Release: record a retryable failure, so the next call runs the work again"),
    ])
    response = forms.CharField(label="Response (JSON)", required=False,
                               widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
                               help_text='For completed: the JSON document callers get, e.g. {"charge": "ch_1"}.')
    error = forms.CharField(label="Error (JSON)", required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
                            help_text="Optional, for failed or release.")
    reason = forms.CharField(label="Reason", max_length=1000, help_text="Recorded with the outcome.")
    force = forms.BooleanField(label="Force", required=False,
                               help_text="Also a key that is not uncertain, failed or a lapsed claim (needs the "
                                         "database's operator right).")

    def _document(self, name: str) -> Any:
        text = str(self.cleaned_data.get(name) or "").strip()
        if not text:
            return None
        try:
            return _json(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc

    def clean_response(self) -> str:
        self._document("response")
        return str(self.cleaned_data.get("response") or "")

    def clean_error(self) -> str:
        self._document("error")
        return str(self.cleaned_data.get("error") or "")

    def clean(self) -> Dict[str, Any]:
        data: Dict[str, Any] = super().clean()
        if data.get("action") == "completed" and not str(data.get("response") or "").strip() \
                and "response" not in self.errors:
            self.add_error("response", "Completed needs the response to replay (JSON).")
        return data

    def documents(self) -> Tuple[Any, Any]:
        """The response and error, parsed (None when left empty)."""
        return self._document("response"), self._document("error")


class ExecutionAdmin(admin.ModelAdmin):  # type: ignore[misc]
    """The admin of Sentinel's executions (see the module): custom views over the operator calls."""

    list_template = "sentinel/admin/execution_list.html"
    key_template = "sentinel/admin/execution_key.html"
    reconcile_template = "sentinel/admin/execution_reconcile.html"

    # -- permissions --

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("sentinel.view_execution"))

    def has_reconcile_permission(self, request: HttpRequest) -> bool:
        """``sentinel.reconcile_execution``, and seeing the executions at all."""
        return self.has_view_permission(request) and bool(request.user.has_perm("sentinel.reconcile_execution"))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # -- plumbing --

    def get_urls(self) -> List[Any]:
        wrap = self.admin_site.admin_view
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("key/", wrap(self.key_view), name=f"{prefix}_key"),
            path("key/reconcile/", wrap(self.reconcile_view), name=f"{prefix}_reconcile"),
        ]

    @staticmethod
    def default_namespace() -> str:
        return str(sentinel_settings()["NAMESPACE"] or "default")

    def operations(self, namespace: str) -> Operations:
        """The operator calls on ``namespace`` for one request, on Sentinel's database (closed after)."""
        return Operations(conninfo=conninfo_for_alias(), namespace=namespace, connect_timeout=10.0)

    def key_url(self, namespace: str, key: str) -> str:
        return str(reverse(f"{self.admin_site.name}:sentinel_execution_key")) + "?" + urlencode(
            {"namespace": namespace, "key": key})

    def context(self, request: HttpRequest, title: str, namespace: str, **extra: Any) -> Dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title,
                "namespace": namespace, "shown_namespace": plain(namespace),
                "list_url": reverse(f"{self.admin_site.name}:sentinel_execution_changelist"), **extra}

    def _counts(self, namespace: str, st: Optional[Stats], chosen: Optional[str]) -> List[Dict[str, Any]]:
        if st is None:
            return []
        by_state: Dict[str, Any] = dict(st)
        base = reverse(f"{self.admin_site.name}:sentinel_execution_changelist")
        out = [{"label": "all", "count": sum(int(by_state[s]) for s in STATES), "on": chosen is None,
                "url": f"{base}?{urlencode({'namespace': namespace})}"}]
        out += [{"label": s, "count": by_state[s], "on": chosen == s,
                 "url": f"{base}?{urlencode({'namespace': namespace, 'state': s})}"} for s in STATES]
        return out

    def _row(self, namespace: str, r: ExecutionRecord) -> Dict[str, Any]:
        return {"key": plain(r["key"]), "url": self.key_url(namespace, r["key"]), "state": r["state"],
                "fence": r["fence"], "attempt": r["attempt"], "owner": plain(r["owner"] or "-"),
                "changed": age(r["now"], r["updated_at"]),
                "reason": plain(why(r))}

    # -- views --

    def changelist_view(self, request: HttpRequest, extra_context: Optional[Dict[str, Any]] = None) -> HttpResponse:
        """The records of a namespace, by state, searched by key."""
        if not self.has_view_permission(request):
            raise DjangoPermissionDenied
        namespace = request.GET.get("namespace") or self.default_namespace()
        state = request.GET.get("state") or None
        query = (request.GET.get("q") or "").strip()
        rows: List[ExecutionRecord] = []
        st: Optional[Stats] = None
        error, status = None, 200
        try:
            if state is not None and state not in STATES:
                raise InvalidArgument(f"unknown state {state!r}: use one of {', '.join(STATES)}")
            with self.operations(_check_namespace(namespace)) as ops:
                st = ops.stats()
                rows = ops.list(state, max_rows=SEARCH_ROWS if query else LIST_ROWS)
                if query:
                    rows = self._search(ops, rows, query, state)
        except SentinelError as exc:
            error, status = form_message(exc, "Force"), http_status(exc)
        context = self.context(
            request, f"Executions in {plain(namespace)}", namespace, state=state or "", query=query, error=error,
            states=STATES, counts=self._counts(namespace, st, state), rows=[self._row(namespace, r) for r in rows],
            oldest_uncertain_at=st["oldest_uncertain_at"] if st else None, searched_rows=SEARCH_ROWS,
            list_rows=LIST_ROWS, **(extra_context or {}))
        return TemplateResponse(request, self.list_template, context, status=status)

    @staticmethod
    def _search(ops: Operations, rows: List[ExecutionRecord], query: str, state: Optional[str]
                ) -> List[ExecutionRecord]:
        found = [r for r in rows if query.casefold() in r["key"].casefold()]
        try:
            exact = ops.inspect(query)
        except InvalidArgument:
            exact = None
        if exact is not None and (state is None or exact["state"] == state) and all(r["key"] != query for r in found):
            found.insert(0, exact)
        return found[:LIST_ROWS]

    def _load(self, request: HttpRequest) -> Tuple[str, str, ExecutionRecord, List[EventRow]]:
        """The namespace, key, record and events the query string names; SentinelError if it cannot."""
        namespace = request.GET.get("namespace") or self.default_namespace()
        key = request.GET.get("key") or ""
        with self.operations(_check_namespace(namespace)) as ops:
            record = ops.inspect(key)
            if record is None:
                raise ExecutionNotFound(f"no execution record for {namespace}/{plain(key)}")
            events = ops.events(key)
        return namespace, key, record, events

    def _key_context(self, request: HttpRequest, namespace: str, key: str, record: ExecutionRecord,
                     events: List[EventRow], title: str) -> Dict[str, Any]:
        fields: List[Tuple[str, Optional[str], Optional[str]]] = []
        for name, value in record.items():
            if value is None or name in ("namespace", "key", "now"):
                continue
            if name in ("response", "error"):  # documents: indented JSON, ASCII only
                fields.append((name, None, json.dumps(value, indent=2, ensure_ascii=True, sort_keys=True)))
            else:
                fields.append((name, _text(value), None))
        history = [{"at": e["at"], "fence": e["fence"], "from": e["from_state"] or "-", "to": e["to_state"],
                    "actor": plain(e["actor"] or e["owner"] or "-"), "reason": plain(e["reason"] or ""),
                    "db": plain(e["db_user"] or "-") if not e.get("db_role") else plain(f"{e['db_user']} as "
                                                                                         f"{e['db_role']}"),
                    "details": json.dumps(e["details"], ensure_ascii=True, sort_keys=True) if e["details"] else "",
                    "id": e["id"]} for e in events]
        reconcile_url = reverse(f"{self.admin_site.name}:sentinel_execution_reconcile") + "?" + urlencode(
            {"namespace": namespace, "key": key})
        return self.context(request, title, namespace, key=key, shown_key=plain(key), record=record, fields=fields,
                            history=history, key_url=self.key_url(namespace, key), reconcile_url=reconcile_url,
                            may_reconcile=self.has_reconcile_permission(request))

    def key_view(self, request: HttpRequest) -> HttpResponse:
        """A key's record and its event history."""
        if not self.has_view_permission(request):
            raise DjangoPermissionDenied
        try:
            namespace, key, record, events = self._load(request)
        except SentinelError as exc:
            namespace = request.GET.get("namespace") or self.default_namespace()
            context = self.context(request, "Execution", namespace, error=form_message(exc, "Force"), states=STATES)
            return TemplateResponse(request, self.list_template, context, status=http_status(exc))
        context = self._key_context(request, namespace, key, record, events, plain(key))
        return TemplateResponse(request, self.key_template, context)

    def reconcile_view(self, request: HttpRequest) -> HttpResponse:
        """The reconcile form of a key (GET), and resolving it (POST): the staff user is the actor."""
        if not self.has_reconcile_permission(request):
            raise DjangoPermissionDenied
        try:
            namespace, key, record, events = self._load(request)
        except SentinelError as exc:
            namespace = request.GET.get("namespace") or self.default_namespace()
            context = self.context(request, "Reconcile", namespace, error=form_message(exc, "Force"), states=STATES)
            return TemplateResponse(request, self.list_template, context, status=http_status(exc))
        actor = str(request.user.get_username())[:200]
        form = ReconcileForm(request.POST if request.method == "POST" else None)
        status = 200
        if request.method == "POST" and form.is_valid():
            response, error = form.documents()
            try:
                with self.operations(namespace) as ops:
                    done = ops.reconcile(key, action=form.cleaned_data["action"], actor=actor,
                                         reason=form.cleaned_data["reason"], response=response, error=error,
                                         force=bool(form.cleaned_data["force"]))
            except SentinelError as exc:
                form.add_error(None, form_message(exc, "Force"))
                status = http_status(exc)
            else:
                self.message_user(request, f"{plain(namespace)}/{plain(key)}: {done['previous_state']} -> "
                                           f"{done['state']} (fence {done['previous_fence']} -> {done['fence']}), "
                                           f"reconciled by {plain(actor)}", messages.SUCCESS, fail_silently=True)
                return HttpResponseRedirect(self.key_url(namespace, key))
        elif request.method == "POST":
            status = 400
        context = self._key_context(request, namespace, key, record, events, f"Reconcile {plain(key)}")
        context.update(form=form, actor=plain(actor))
        return TemplateResponse(request, self.reconcile_template, context, status=status)


admin.site.register(Execution, ExecutionAdmin)

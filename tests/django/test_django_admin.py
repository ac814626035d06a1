"""The Django admin of Sentinel's executions, through Django's test Client, against a real PostgreSQL.

The admin is switched on per test with the settings docs/operator-page.md
prints (its Python blocks run here as written: the settings, the URLconf, the
grant to a group). Uncertain keys are made through the protocol, as a worker
that died would leave them: acquire_v2, then abandon_v2.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import psycopg
import pytest

import sentinel

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "operator-page.md"
LIST = "/admin/sentinel/execution/"
KEY = "/admin/sentinel/execution/key/"
RECONCILE = "/admin/sentinel/execution/key/reconcile/"
HOSTILE_KEY = '<script>alert("k")</script><img src=x onerror=alert(1)>\u202e'

urlpatterns: List[Any] = []  # set from the docs' URLconf block by ``admin_on``


def doc_blocks() -> List[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def doc_block(needle: str) -> str:
    found = [b for b in doc_blocks() if needle in b]
    assert len(found) == 1, f"docs/operator-page.md should have one Python block with {needle!r}"
    return found[0]


# -- records, made as a worker makes them ------------------------------------------------------


def _claim(dsn: str, namespace: str, key: str) -> Dict[str, Any]:
    token = secrets.token_hex(16)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome, fence from sentinel.acquire_v2(%s, %s, 'worker-1', 60000, token => %s)",
                           (namespace, key, token)).fetchone()
    assert row is not None and row[0] == "acquired", row
    return {"fence": row[1], "token": token}


def make_uncertain(dsn: str, namespace: str, key: str, reason: str = "worker killed mid-charge") -> int:
    held = _claim(dsn, namespace, key)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome from sentinel.abandon_v2(%s, %s, %s, %s, %s)",
                           (namespace, key, held["fence"], held["token"], reason)).fetchone()
    assert row is not None and row[0] == "uncertain", row
    return int(held["fence"])


def make_completed(dsn: str, namespace: str, key: str, response: Any) -> None:
    held = _claim(dsn, namespace, key)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome from sentinel.complete_v3(%s, %s, %s, %s, %s)",
                           (namespace, key, held["fence"], held["token"], json.dumps(response))).fetchone()
    assert row is not None and row[0] == "recorded", row


def record(dsn: str, namespace: str, key: str) -> Optional[Dict[str, Any]]:
    with sentinel.Operations(conninfo=dsn, namespace=namespace) as ops:
        found = ops.inspect(key)
    return None if found is None else dict(found)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def admin_on(settings: Any) -> None:
    """The docs' settings and URLconf (plus the example's own apps), and migrate: admin log, permissions."""
    from django.core.management import call_command

    given: Dict[str, Any] = {}
    exec(compile(doc_block("INSTALLED_APPS"), "docs/operator-page.md (settings)", "exec"), given)
    apps = list(given["INSTALLED_APPS"])
    settings.INSTALLED_APPS = apps + [a for a in settings.INSTALLED_APPS if a not in apps]
    settings.MIDDLEWARE = given["MIDDLEWARE"]
    settings.TEMPLATES = given["TEMPLATES"]
    scope: Dict[str, Any] = {}
    exec(compile(doc_block("urlpatterns"), "docs/operator-page.md (urls)", "exec"), scope)
    urlpatterns[:] = scope["urlpatterns"]
    settings.ROOT_URLCONF = __name__
    call_command("migrate", verbosity=0)


@pytest.fixture
def staff(admin_on: None) -> Callable[..., Any]:
    """staff(*codenames): a fresh staff user holding those permissions of app 'sentinel', logged in a Client."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.test import Client

    def make(*codenames: str, enforce_csrf_checks: bool = False, is_staff: bool = True) -> Any:
        user = get_user_model().objects.create_user(username=f"ops-{uuid.uuid4().hex[:8]}", password="pw",
                                                    is_staff=is_staff)
        perms = list(Permission.objects.filter(content_type__app_label="sentinel", codename__in=codenames))
        assert len(perms) == len(codenames), "the permissions were not created by migrate"
        user.user_permissions.add(*perms)
        client = Client(enforce_csrf_checks=enforce_csrf_checks)
        client.force_login(user)
        client.user = user
        return client

    return make


@pytest.fixture
def keys(django_dsn: str, namespace: str) -> Dict[str, Any]:
    """An uncertain, a completed and an executing key in this test's namespace."""
    fence = make_uncertain(django_dsn, namespace, "order-1")
    make_completed(django_dsn, namespace, "order-2", {"charge": "ch_2"})
    _claim(django_dsn, namespace, "order-3")
    return {"fence": fence}


# -- permissions ---------------------------------------------------------------------------------


def test_migrate_creates_the_two_permissions_on_a_content_type_that_is_not_stale(admin_on: None) -> None:
    from django.contrib.auth.models import Permission

    from sentinel.contrib.django.models import Execution

    perms = {p.codename: p for p in Permission.objects.filter(content_type__app_label="sentinel")}
    assert sorted(perms) == ["reconcile_execution", "view_execution"]
    assert perms["view_execution"].content_type.model_class() is Execution  # remove_stale_contenttypes keeps it


def test_the_admin_passes_django_s_system_checks(admin_on: None) -> None:
    from django.core.management import call_command

    call_command("check", fail_level="WARNING")


def test_without_the_view_permission_a_staff_user_sees_nothing(staff: Callable[..., Any], keys: Dict[str, Any],
                                                              namespace: str, django_dsn: str) -> None:
    client = staff()
    index = client.get("/admin/")
    assert index.status_code == 200 and LIST not in index.content.decode()
    assert client.get(LIST, {"namespace": namespace}).status_code == 403
    assert client.get(KEY, {"namespace": namespace, "key": "order-1"}).status_code == 403
    r = client.post(RECONCILE + f"?namespace={namespace}&key=order-1",
                    {"action": "release", "reason": "x"})
    assert r.status_code == 403
    assert record(django_dsn, namespace, "order-1")["state"] == "uncertain"  # type: ignore[index]


def test_a_user_who_is_not_staff_is_sent_to_the_login(staff: Callable[..., Any], namespace: str) -> None:
    client = staff("view_execution", is_staff=False)
    r = client.get(LIST, {"namespace": namespace})
    assert r.status_code == 302 and "/admin/login/" in r["Location"]


# -- viewing -------------------------------------------------------------------------------------


def test_list_filters_by_namespace_and_state(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str) -> None:
    client = staff("view_execution")
    index = client.get("/admin/").content.decode()
    assert f'href="{LIST}"' in index and "Executions" in index
    every = client.get(LIST, {"namespace": namespace}).content.decode()
    for key in ("order-1", "order-2", "order-3"):
        assert f">{key}</a>" in every
    only = client.get(LIST, {"namespace": namespace, "state": "uncertain"})
    text = only.content.decode()
    assert only.status_code == 200 and ">order-1</a>" in text and ">order-2</a>" not in text
    assert ">order-3</a>" not in text and "worker killed mid-charge" in text
    other = client.get(LIST, {"namespace": f"{namespace}-other"}).content.decode()
    assert "No records." in other and "order-1" not in other
    bad = client.get(LIST, {"namespace": namespace, "state": "lost"})
    assert bad.status_code == 400 and "unknown state &#x27;lost&#x27;" in bad.content.decode()
    bad = client.get(LIST, {"namespace": "Not A Namespace"})
    assert bad.status_code == 400 and "namespace" in bad.content.decode().lower()


def test_search_by_key(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str, django_dsn: str) -> None:
    make_uncertain(django_dsn, namespace, "refund-9")
    client = staff("view_execution")
    found = client.get(LIST, {"namespace": namespace, "q": "FUND"}).content.decode()
    assert ">refund-9</a>" in found and ">order-1</a>" not in found
    exact = client.get(LIST, {"namespace": namespace, "q": "order-2"}).content.decode()
    assert ">order-2</a>" in exact and ">order-1</a>" not in exact


def test_a_key_s_page_shows_its_history(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str) -> None:
    client = staff("view_execution")
    r = client.get(KEY, {"namespace": namespace, "key": "order-1"})
    text = r.content.decode()
    assert r.status_code == 200
    history = text.split('id="sentinel-history"', 1)[1]
    assert history.index("- &rarr; executing") < history.index("executing &rarr; uncertain")
    assert "worker killed mid-charge" in history
    assert "Reconcile</a>" not in text, "no reconcile link without the permission"
    done = client.get(KEY, {"namespace": namespace, "key": "order-2"}).content.decode()
    assert "&quot;charge&quot;: &quot;ch_2&quot;" in done
    missing = client.get(KEY, {"namespace": namespace, "key": "nope"})
    assert missing.status_code == 404 and f"no execution record for {namespace}/nope" in missing.content.decode()


def test_a_hostile_key_stays_text(staff: Callable[..., Any], namespace: str, django_dsn: str) -> None:
    make_uncertain(django_dsn, namespace, HOSTILE_KEY, reason="<b>bold</b>")
    client = staff("view_execution", "reconcile_execution")
    pages = [client.get(LIST, {"namespace": namespace}), client.get(KEY, {"namespace": namespace, "key": HOSTILE_KEY}),
             client.get(RECONCILE, {"namespace": namespace, "key": HOSTILE_KEY})]
    for r in pages:
        text = r.content.decode()
        assert r.status_code == 200
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold</b>" not in text
        assert "&lt;script&gt;alert(&quot;k&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
        assert "\u202e" not in text and "\\u202e" in text


# -- reconciling ---------------------------------------------------------------------------------


def reconcile_url(namespace: str, key: str) -> str:
    from urllib.parse import urlencode

    return RECONCILE + "?" + urlencode({"namespace": namespace, "key": key})


def test_view_only_may_not_reconcile(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str,
                                     django_dsn: str) -> None:
    client = staff("view_execution")
    assert client.get(reconcile_url(namespace, "order-1")).status_code == 403
    r = client.post(reconcile_url(namespace, "order-1"), {"action": "release", "reason": "x"})
    assert r.status_code == 403
    assert record(django_dsn, namespace, "order-1")["state"] == "uncertain"  # type: ignore[index]


def test_reconcile_as_completed_records_the_staff_user(staff: Callable[..., Any], keys: Dict[str, Any],
                                                      namespace: str, django_dsn: str) -> None:
    client = staff("view_execution", "reconcile_execution")
    page = client.get(KEY, {"namespace": namespace, "key": "order-1"}).content.decode()
    assert "Reconcile</a>" in page
    form = client.get(reconcile_url(namespace, "order-1"))
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()
    r = client.post(reconcile_url(namespace, "order-1"), {
        "action": "completed", "response": '{"charge": "ch_1"}', "reason": "found at the provider"})
    assert r.status_code == 302, r.content.decode()
    shown = client.get(r["Location"]).content.decode()
    assert f"uncertain -&gt; completed (fence {keys['fence']} -&gt; " in shown
    username = client.user.get_username()
    after = record(django_dsn, namespace, "order-1")
    assert after is not None and after["state"] == "completed" and after["reconciled_by"] == username
    assert after["reconcile_reason"] == "found at the provider" and after["fence"] > keys["fence"]
    with sentinel.Sentinel(conninfo=django_dsn, namespace=namespace) as s:
        assert s.events("order-1")[-1]["actor"] == username
        assert s.once("order-1", lambda: pytest.fail("reconciled keys replay")).response == {"charge": "ch_1"}


def test_release_lets_the_next_call_run(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str,
                                       django_dsn: str) -> None:
    client = staff("view_execution", "reconcile_execution")
    r = client.post(reconcile_url(namespace, "order-1"), {"action": "release", "reason": "no charge found"})
    assert r.status_code == 302
    with sentinel.Sentinel(conninfo=django_dsn, namespace=namespace) as s:
        assert s.once("order-1", lambda: "ran again").response == "ran again"


def test_refusals_change_nothing(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str,
                                django_dsn: str) -> None:
    client = staff("view_execution", "reconcile_execution")
    cases = [
        ("order-1", {"action": "completed", "response": "{bad", "reason": "x"}, 400, "Not valid JSON"),
        ("order-1", {"action": "completed", "reason": "x"}, 400, "Completed needs the response"),
        ("order-1", {"action": "release"}, 400, "This field is required"),
        ("order-1", {"action": "explode", "reason": "x"}, 400, "Select a valid choice"),
        ("order-2", {"action": "release", "reason": "x"}, 409, "tick Force to override"),
    ]
    for key, data, status, message in cases:
        r = client.post(reconcile_url(namespace, key), data)
        assert r.status_code == status, (data, r.status_code)
        assert message in r.content.decode().replace("&#x27;", "'"), (message, data)
    assert client.get(reconcile_url(namespace, "order-404")).status_code == 404
    assert record(django_dsn, namespace, "order-1")["state"] == "uncertain"  # type: ignore[index]
    assert record(django_dsn, namespace, "order-2")["state"] == "completed"  # type: ignore[index]


def test_force_resolves_a_completed_key(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str,
                                       django_dsn: str) -> None:
    client = staff("view_execution", "reconcile_execution")
    r = client.post(reconcile_url(namespace, "order-2"), {
        "action": "failed", "error": '{"refunded": true}', "reason": "refunded by hand", "force": "on"})
    assert r.status_code == 302
    after = record(django_dsn, namespace, "order-2")
    assert after is not None and after["state"] == "failed" and after["error"] == {"refunded": True}


def test_the_reconcile_form_is_csrf_protected(staff: Callable[..., Any], keys: Dict[str, Any], namespace: str,
                                             django_dsn: str) -> None:
    client = staff("view_execution", "reconcile_execution", enforce_csrf_checks=True)
    r = client.post(reconcile_url(namespace, "order-1"), {"action": "release", "reason": "x"})
    assert r.status_code == 403
    assert record(django_dsn, namespace, "order-1")["state"] == "uncertain"  # type: ignore[index]
    page = client.get(reconcile_url(namespace, "order-1")).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    r = client.post(reconcile_url(namespace, "order-1"),
                    {"action": "release", "reason": "x", "csrfmiddlewaretoken": token.group(1)})
    assert r.status_code == 302
    assert record(django_dsn, namespace, "order-1")["state"] == "failed"  # type: ignore[index]


def test_the_docs_grant_gives_a_staff_user_the_admin(admin_on: None, keys: Dict[str, Any], namespace: str) -> None:
    """The page's grant block, run as written for a staff user alice, opens the admin to her."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    alice = get_user_model().objects.create_user(username=f"alice-{uuid.uuid4().hex[:6]}", password="pw",
                                                 is_staff=True)
    exec(compile(doc_block("reconcile_execution"), "docs/operator-page.md (grant)", "exec"), {"alice": alice})
    alice = get_user_model().objects.get(pk=alice.pk)  # permissions are cached per instance
    assert alice.has_perm("sentinel.view_execution") and alice.has_perm("sentinel.reconcile_execution")
    client = Client()
    client.force_login(alice)
    assert client.get(reconcile_url(namespace, "order-1")).status_code == 200

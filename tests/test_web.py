"""`sentinel web`: the operator page, through Starlette's TestClient, against a real PostgreSQL.

Records are made through the protocol (acquire_v2, then abandon_v2 or
complete_v3, as a worker would); the page reads and reconciles only through the
operator functions. docs/operator-page.md's `sentinel web` command lines are
parsed by the real parser here too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import psycopg
import pytest
from starlette.testclient import TestClient

import sentinel
from sentinel._web import create_app
from test_cli import run

ROOT = Path(__file__).resolve().parent.parent
BASE = "http://127.0.0.1:8765"
XSS_KEY = '<script>alert("key")</script><img src=x onerror=alert(1)>\u202e\n'


# -- records, made as a worker makes them ------------------------------------------


def claim(dsn: str, namespace: str, key: str, owner: str = "worker-1") -> Dict[str, Any]:
    """acquire_v2 with a fresh token: the key is executing; returns fence and token."""
    token = secrets.token_hex(16)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome, fence from sentinel.acquire_v2(%s, %s, %s, 60000, token => %s)",
                           (namespace, key, owner, token)).fetchone()
    assert row is not None and row[0] == "acquired", row
    return {"fence": row[1], "token": token}


def uncertain(dsn: str, namespace: str, key: str, reason: str = "worker killed mid-charge") -> int:
    """A key whose worker gave up mid-way (acquire, then abandon): uncertain. Returns its fence."""
    held = claim(dsn, namespace, key)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome from sentinel.abandon_v2(%s, %s, %s, %s, %s)",
                           (namespace, key, held["fence"], held["token"], reason)).fetchone()
    assert row is not None and row[0] == "uncertain", row
    return int(held["fence"])


def completed(dsn: str, namespace: str, key: str, response: Any) -> None:
    held = claim(dsn, namespace, key)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome from sentinel.complete_v3(%s, %s, %s, %s, %s)",
                           (namespace, key, held["fence"], held["token"], json.dumps(response))).fetchone()
    assert row is not None and row[0] == "recorded", row


def state(dsn: str, namespace: str, key: str) -> Optional[str]:
    with sentinel.Operations(conninfo=dsn, namespace=namespace) as ops:
        record = ops.inspect(key)
    return None if record is None else record["state"]


def basic(user: str, password: str) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def token_of(page: str) -> str:
    found = re.search(r'name="token" value="([0-9a-f]+)"', page)
    assert found, "the page has no reconcile form"
    return found.group(1)


@pytest.fixture
def records(dsn: str, namespace: str) -> Dict[str, Any]:
    """An uncertain, a completed and an executing key in this test's namespace."""
    return {
        "fence": uncertain(dsn, namespace, "order-1"),
        "done": completed(dsn, namespace, "order-2", {"charge": "ch_2"}),
        "running": claim(dsn, namespace, "order-3"),
    }


@pytest.fixture
def page(dsn: str, namespace: str) -> Iterator[TestClient]:
    """The read-only page (no password, no reconcile)."""
    with TestClient(create_app(dsn, namespace=namespace), base_url=BASE) as client:
        yield client


PASSWORD = "correct horse battery staple"


@pytest.fixture
def rw(dsn: str, namespace: str) -> Iterator[TestClient]:
    """The page with reconcile on, behind HTTP Basic."""
    app = create_app(dsn, namespace=namespace, allow_reconcile=True, password=PASSWORD)
    with TestClient(app, base_url=BASE) as client:
        yield client


# -- reading --------------------------------------------------------------------------


def test_list_by_state(page: TestClient, records: Dict[str, Any], namespace: str) -> None:
    everything = page.get("/")
    assert everything.status_code == 200
    for key in ("order-1", "order-2", "order-3"):
        assert f">{key}</a>" in everything.text
    only = page.get("/", params={"state": "uncertain"})
    assert only.status_code == 200
    assert ">order-1</a>" in only.text and ">order-2</a>" not in only.text and ">order-3</a>" not in only.text
    assert "worker killed mid-charge" in only.text
    done = page.get("/", params={"state": "completed"}).text
    assert ">order-2</a>" in done and ">order-1</a>" not in done
    # another namespace: nothing of this one
    other = page.get("/", params={"namespace": f"{namespace}-other"}).text
    assert "No records." in other and "order-1" not in other


def test_search_by_key(page: TestClient, dsn: str, namespace: str, records: Dict[str, Any]) -> None:
    uncertain(dsn, namespace, "refund-9")
    found = page.get("/", params={"q": "FUND"}).text  # substring, case-insensitive
    assert ">refund-9</a>" in found and ">order-1</a>" not in found
    exact = page.get("/", params={"q": "order-2"}).text
    assert ">order-2</a>" in exact and ">order-1</a>" not in exact
    assert "No records." in page.get("/", params={"q": "nothing-like-this"}).text


def test_key_page_shows_the_record_and_its_history(page: TestClient, records: Dict[str, Any],
                                                   namespace: str) -> None:
    r = page.get("/key", params={"namespace": namespace, "key": "order-1"})
    assert r.status_code == 200
    assert '<span class="state uncertain">uncertain</span>' in r.text
    history = r.text.split("<h3>History</h3>", 1)[1]
    assert history.index("- &rarr; executing") < history.index("executing &rarr; uncertain")
    assert "worker killed mid-charge" in history
    assert "reconciling is off" in r.text.lower() and 'action="/reconcile"' not in r.text
    done = page.get("/key", params={"namespace": namespace, "key": "order-2"}).text
    assert "&quot;charge&quot;: &quot;ch_2&quot;" in done  # the response, as JSON
    missing = page.get("/key", params={"namespace": namespace, "key": "nope"})
    assert missing.status_code == 404 and f"no execution record for {namespace}/nope" in missing.text


def test_stats(page: TestClient, records: Dict[str, Any], namespace: str) -> None:
    r = page.get("/stats")
    assert r.status_code == 200
    cells = dict(re.findall(r"<tr><th>(\w+)</th><td>([^<]*)</td></tr>", r.text))
    assert cells["uncertain"] == "1" and cells["completed"] == "1" and cells["executing"] == "1"
    assert cells["oldest_uncertain_at"] != "-"


def test_a_key_cannot_inject_markup(page: TestClient, dsn: str, namespace: str) -> None:
    uncertain(dsn, namespace, XSS_KEY, reason='<b onmouseover="x()">reason</b>')
    for r in (page.get("/"), page.get("/key", params={"namespace": namespace, "key": XSS_KEY})):
        assert r.status_code == 200
        assert "<script>alert" not in r.text and "<img src=x" not in r.text and "<b onmouseover" not in r.text
        assert "&lt;script&gt;alert(&quot;key&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in r.text
        assert "\u202e" not in r.text and "\\u202e\\n" in r.text  # shown as escapes, not obeyed
        assert "&lt;b onmouseover=&quot;x()&quot;&gt;reason&lt;/b&gt;" in r.text
        assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none': no script runs
        assert "default-src 'none'" in r.headers["content-security-policy"]
    # the link to the key's page carries it URL-encoded and reaches it
    link = re.search(r'<a href="(/key\?[^"]+)">&lt;script', page.get("/").text)
    assert link is not None
    href = link.group(1).replace("&amp;", "&")
    assert page.get(href).status_code == 200


def test_bad_input_gets_a_clear_answer(page: TestClient) -> None:
    r = page.get("/", params={"state": "lost"})
    assert r.status_code == 400 and "unknown state &#x27;lost&#x27;: use one of claimed" in r.text
    r = page.get("/", params={"namespace": "Not A Namespace"})
    assert r.status_code == 400 and "namespace" in r.text.lower()
    r = page.get("/", params={"limit": "0"})
    assert r.status_code == 400 and "limit must be a whole number from 1 to 10000" in r.text


def test_other_host_names_are_refused(dsn: str, namespace: str) -> None:
    """A site that rebinds its own name to 127.0.0.1 still sends its name as Host: refused."""
    with TestClient(create_app(dsn, namespace=namespace), base_url="http://evil.example:8765") as client:
        r = client.get("/")
    assert r.status_code == 400 and "does not answer that Host name" in r.text
    with TestClient(create_app(dsn, namespace=namespace), base_url="http://[::1]:8765") as client:
        assert client.get("/").status_code == 200


# -- reconciling ----------------------------------------------------------------------


def test_reconcile_is_refused_without_the_flag(page: TestClient, records: Dict[str, Any], dsn: str,
                                               namespace: str) -> None:
    r = page.post("/reconcile", data={"namespace": namespace, "key": "order-1", "action": "release",
                                      "reason": "x", "token": "0" * 64})
    assert r.status_code == 403 and "reconciling is off on this page" in r.text
    assert state(dsn, namespace, "order-1") == "uncertain"


def test_reconcile_needs_a_password(dsn: str) -> None:
    with pytest.raises(ValueError, match="allow_reconcile=True needs a password"):
        create_app(dsn, allow_reconcile=True)


def test_every_page_asks_for_the_password_when_reconcile_is_on(rw: TestClient, records: Dict[str, Any],
                                                              dsn: str, namespace: str) -> None:
    for path in ("/", "/stats", f"/key?namespace={namespace}&key=order-1"):
        r = rw.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert rw.get(path, headers=basic("alice", "wrong")).status_code == 401
    r = rw.post("/reconcile", data={"namespace": namespace, "key": "order-1", "action": "release", "reason": "x"})
    assert r.status_code == 401
    assert rw.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert rw.get("/", headers=basic("", PASSWORD)).status_code == 401  # a name is needed: it is the actor
    assert state(dsn, namespace, "order-1") == "uncertain"


def test_reconcile_as_completed_records_the_user_and_replays(rw: TestClient, records: Dict[str, Any], dsn: str,
                                                            namespace: str) -> None:
    auth = basic("alice", PASSWORD)
    form_page = rw.get("/key", params={"namespace": namespace, "key": "order-1"}, headers=auth)
    assert form_page.status_code == 200 and 'action="/reconcile"' in form_page.text
    assert "signed in as alice" in form_page.text
    r = rw.post("/reconcile", headers=auth, follow_redirects=False, data={
        "namespace": namespace, "key": "order-1", "action": "completed", "response": '{"charge": "ch_1"}',
        "reason": "found at the provider", "token": token_of(form_page.text)})
    assert r.status_code == 303, r.text
    shown = rw.get(r.headers["location"], headers=auth)
    assert "Reconciled by web:alice" in shown.text
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        record = s.inspect("order-1")
        assert record is not None and record["state"] == "completed" and record["fence"] > records["fence"]
        assert record["reconciled_by"] == "web:alice" and record["reconcile_reason"] == "found at the provider"
        assert s.events("order-1")[-1]["actor"] == "web:alice"
        replay = s.once("order-1", lambda: pytest.fail("a reconciled key replays"))
        assert replay.response == {"charge": "ch_1"}


def test_release_lets_the_next_call_run(rw: TestClient, records: Dict[str, Any], dsn: str, namespace: str) -> None:
    auth = basic("bob", PASSWORD)
    token = token_of(rw.get("/key", params={"namespace": namespace, "key": "order-1"}, headers=auth).text)
    r = rw.post("/reconcile", headers=auth, follow_redirects=False, data={
        "namespace": namespace, "key": "order-1", "action": "release", "reason": "no charge found",
        "token": token})
    assert r.status_code == 303
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        assert s.once("order-1", lambda: "ran again").response == "ran again"


def test_reconcile_refusals_change_nothing(rw: TestClient, records: Dict[str, Any], dsn: str,
                                          namespace: str) -> None:
    auth = basic("carol", PASSWORD)
    token = token_of(rw.get("/key", params={"namespace": namespace, "key": "order-1"}, headers=auth).text)
    base = {"namespace": namespace, "key": "order-1", "reason": "checked", "token": token}
    cases: List[Any] = [
        ({**base, "token": "0" * 64}, 403, "form token is missing or stale"),
        ({k: v for k, v in base.items() if k != "token"}, 403, "form token is missing or stale"),
        ({**base, "action": "completed", "response": "{bad"}, 400, "the response is not valid JSON"),
        ({**base, "action": "completed"}, 400, "completed needs a response"),
        ({**base, "action": "explode"}, 400, "choose an outcome"),
        ({**base, "action": "release", "reason": "  "}, 400, "give a reason"),
        ({**base, "key": "order-2", "action": "release"}, 409, "tick force to override"),  # completed: needs force
        ({**base, "key": "order-404", "action": "release"}, 404, f"no execution record for {namespace}/order-404"),
    ]
    for data, status, message in cases:
        r = rw.post("/reconcile", headers=auth, data=data, follow_redirects=False)
        assert r.status_code == status, (data, r.status_code, r.text)
        assert message in r.text.replace("&#x27;", "'"), (message, r.text)
    # posted from another site, with the right token and the browser's credentials: refused
    r = rw.post("/reconcile", headers={**auth, "Origin": "http://evil.example"}, data={**base, "action": "release"})
    assert r.status_code == 403 and "posted from another site" in r.text
    # a bound token: bob's page's token is not carol's
    bob = token_of(rw.get("/key", params={"namespace": namespace, "key": "order-1"},
                          headers=basic("bob", PASSWORD)).text)
    assert bob != token
    r = rw.post("/reconcile", headers=auth, data={**base, "token": bob, "action": "release"})
    assert r.status_code == 403
    assert state(dsn, namespace, "order-1") == "uncertain" and state(dsn, namespace, "order-2") == "completed"
    with sentinel.Operations(conninfo=dsn, namespace=namespace) as ops:
        assert [e["to_state"] for e in ops.events("order-1")] == ["executing", "uncertain"]


def test_force_resolves_a_completed_key(rw: TestClient, records: Dict[str, Any], dsn: str, namespace: str) -> None:
    auth = basic("dave", PASSWORD)
    token = token_of(rw.get("/key", params={"namespace": namespace, "key": "order-2"}, headers=auth).text)
    r = rw.post("/reconcile", headers=auth, follow_redirects=False, data={
        "namespace": namespace, "key": "order-2", "action": "failed", "error": '{"refunded": true}',
        "reason": "refunded by hand", "force": "1", "token": token})
    assert r.status_code == 303, r.text
    with sentinel.Operations(conninfo=dsn, namespace=namespace) as ops:
        record = ops.inspect("order-2")
    assert record is not None and record["state"] == "failed" and record["error"] == {"refunded": True}


def test_the_database_role_s_rights_still_apply(dsn: str, namespace: str, records: Dict[str, Any]) -> None:
    """The page acts as its DSN's role: a role with the app right only may read, not reconcile."""
    role, password = f"web_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v2(%s, %s, %s)", (role, namespace, ["app"]))
    try:
        role_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
        app = create_app(role_dsn, namespace=namespace, allow_reconcile=True, password=PASSWORD)
        with TestClient(app, base_url=BASE) as client:
            auth = basic("erin", PASSWORD)
            assert ">order-1</a>" in client.get("/", headers=auth).text
            elsewhere = client.get("/", params={"namespace": f"{namespace}-x"}, headers=auth)
            assert elsewhere.status_code == 403
            token = token_of(client.get("/key", params={"namespace": namespace, "key": "order-1"}, headers=auth).text)
            r = client.post("/reconcile", headers=auth, data={"namespace": namespace, "key": "order-1",
                                                              "action": "release", "reason": "x", "token": token})
            assert r.status_code == 403 and "sentinel grant" in r.text, r.text
        assert state(dsn, namespace, "order-1") == "uncertain"
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("select sentinel.revoke_v1(%s)", (role,))
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")


def test_mounted_under_a_prefix_links_stay_inside(dsn: str, namespace: str, records: Dict[str, Any]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/sentinel", app=create_app(dsn, namespace=namespace))])
    with TestClient(outer, base_url=BASE) as client:
        text = client.get("/ops/sentinel/").text
        link = re.search(r'<a href="([^"]+)">order-1</a>', text)
        assert link is not None and link.group(1).startswith("/ops/sentinel/key?")
        assert client.get(link.group(1).replace("&amp;", "&")).status_code == 200
        assert 'href="/ops/sentinel/style.css"' in text


# -- the command ----------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--allow-reconcile"], {}, "--allow-reconcile needs authentication: give a password with --password-env"),
    (["--allow-reconcile", "--password-env", "SENTINEL_WEB_PW"], {}, "that environment variable is not set"),
    (["--allow-reconcile", "--password-env", "SENTINEL_WEB_PW"], {"SENTINEL_WEB_PW": ""}, "is empty"),
    (["--host", "0.0.0.0"], {}, "--host 0.0.0.0 serves the records beyond this machine: give a password"),
    (["--namespace", "Bad Name"], {}, "namespace"),
])
def test_the_command_refuses_unsafe_or_bad_settings(argv: List[str], env: Dict[str, str], message: str) -> None:
    r = run("web", "--dsn", "host=203.0.113.1 connect_timeout=1", *argv, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stdout == ""


def test_the_command_refuses_an_empty_password_file(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    r = run("web", "--allow-reconcile", "--password-file", str(empty))
    assert r.returncode == 2 and "the file is empty" in r.stderr
    r = run("web", "--allow-reconcile", "--password-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and "cannot read it" in r.stderr


def test_the_command_says_which_extra_is_missing() -> None:
    """Without Starlette the core still imports and `sentinel web` names the extra to install."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
            "            raise ImportError('blocked for the test: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from sentinel.cli import main\n"
            "sys.exit(main(['web']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    assert r.returncode == 1, r.stderr
    assert "pip install 'sentinel-coordination[web]'" in r.stderr


def test_the_command_reports_an_unreachable_database() -> None:
    r = run("web", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2")
    assert r.returncode == 3 and "database unavailable" in r.stderr


# -- the docs ------------------------------------------------------------------------------


def test_every_sentinel_web_command_line_of_the_docs_parses() -> None:
    from sentinel.cli import build_parser

    text = (ROOT / "docs" / "operator-page.md").read_text(encoding="utf-8")
    lines = [line.split("$ ", 1)[1] for line in text.splitlines() if line.startswith("$ sentinel web")]
    assert len(lines) >= 3, lines
    for line in lines:
        argv = line.split("#", 1)[0].split()[1:]
        args = build_parser().parse_args(argv)
        assert args.command == "web", line

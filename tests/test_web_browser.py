"""`sentinel web` in a real browser: the command serves, headless Chromium loads the page, the DOM shows the key.

Needs Debian's chromium (`apt-get install -y chromium`); without it these tests
fail with that command, they never skip.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional
from urllib.parse import urlencode

import pytest

from test_web import XSS_KEY, completed, uncertain

CHROMIUM_INSTALL = "apt-get install -y chromium"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(f"these tests need Debian's chromium; install it with: {CHROMIUM_INSTALL}")
    return found


class Server:
    """`python -m sentinel web ARGS` on a free loopback port, until stopped."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in ("SENTINEL_DSN",)}
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "sentinel", "web", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.errors, text=True,
                                     env={**base, **(env or {})})
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            self.stop()
            raise AssertionError("sentinel web printed nothing in 60 s") from None
        found = re.search(r"on (http://127\.0\.0\.1:\d+/)", first)
        if found is None:
            self.stop()
            self.errors.seek(0)
            raise AssertionError(f"sentinel web did not start: {first!r} {self.errors.read()}")
        self.url = found.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errors.close()


def dump_dom(url: str, profile: Path) -> str:
    """The DOM headless Chromium builds for ``url``."""
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={profile}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def served(dsn: str, namespace: str) -> Iterator[Server]:
    server = Server(["--dsn", dsn, "--namespace", namespace])
    yield server
    server.stop()


def test_the_browser_shows_the_uncertain_key(served: Server, dsn: str, namespace: str, tmp_path: Path) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    uncertain(dsn, namespace, key, reason="worker killed mid-charge")
    completed(dsn, namespace, "order-done", {"charge": "ch_1"})
    dom = dump_dom(served.url + "?" + urlencode({"state": "uncertain"}), tmp_path / "profile")
    row = re.search(r"<tr><td class=\"key\"><a href=\"[^\"]+\">" + re.escape(key) + r"</a></td>(.*?)</tr>", dom)
    assert row is not None, dom[-3000:]
    assert '<span class="state uncertain">uncertain</span>' in row.group(1)
    assert "worker killed mid-charge" in row.group(1)
    assert "order-done" not in dom.split("<tbody>", 1)[1], "the state filter let a completed key through"
    # the key's own page: its history, as the browser built it
    page = dump_dom(served.url + "key?" + urlencode({"namespace": namespace, "key": key}), tmp_path / "profile")
    history = page.split("<h3>History</h3>", 1)[1]
    assert "executing → uncertain" in history and "worker killed mid-charge" in history


def test_a_hostile_key_stays_text_in_the_browser(served: Server, dsn: str, namespace: str, tmp_path: Path) -> None:
    uncertain(dsn, namespace, XSS_KEY)
    dom = dump_dom(served.url, tmp_path / "profile")
    assert "<img" not in dom and "<script" not in dom, "a key became markup"
    assert "&lt;script&gt;alert(\"key\")&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;\\u202e\\n" in dom


def test_with_reconcile_on_the_browser_must_sign_in(dsn: str, namespace: str, tmp_path: Path) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    uncertain(dsn, namespace, key)
    server = Server(["--dsn", dsn, "--namespace", namespace, "--allow-reconcile", "--password-env", "WEB_PW"],
                    env={"WEB_PW": "s3cret"})
    try:
        anonymous = dump_dom(server.url, tmp_path / "a")
        assert key not in anonymous
        signed_in = dump_dom(server.url.replace("http://", "http://alice:s3cret@") + "key?"
                             + urlencode({"namespace": namespace, "key": key}), tmp_path / "b")
        assert key in signed_in and "signed in as alice" in signed_in
        assert re.search(r'<form method="post" action="/reconcile">', signed_in)
    finally:
        server.stop()

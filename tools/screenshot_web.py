#!/usr/bin/env python3
"""Screenshots of `sentinel web` for the docs: docs/images/web.png (the list) and web-key.png (a key).

Makes a throwaway database on the server of ``--dsn`` (default
``$SENTINEL_TEST_DSN``), installs the schema, leaves a few records in namespace
``shop`` through the protocol (as workers would: completed, uncertain, failed,
executing, one reconciled), serves them with ``sentinel web`` and photographs
the pages with headless Chromium (Debian: ``apt-get install -y chromium``). The
database is dropped afterwards. With the embedded PostgreSQL::

    .venv/bin/python tests/pgserver.py run -- .venv/bin/python tools/screenshot_web.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import sentinel  # noqa: E402

NAMESPACE = "shop"


def _claim(conn: psycopg.Connection[Any], key: str, owner: str) -> List[Any]:
    token = secrets.token_hex(16)
    row = conn.execute("select fence from sentinel.acquire_v2(%s, %s, %s, 60000, token => %s)",
                       (NAMESPACE, key, owner, token)).fetchone()
    assert row is not None
    return [row[0], token]


def populate(dsn: str) -> None:
    """What a shop's workers leave behind, made through the protocol functions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in (781, 782, 784, 785):
            fence, token = _claim(conn, f"payment-order-{n}", f"web-{n % 4}:pid {4100 + n}")
            conn.execute("select sentinel.complete_v3(%s, %s, %s, %s, %s)",
                         (NAMESPACE, f"payment-order-{n}", fence, token, json.dumps({"charge_id": f"ch_{n}9a"})))
        fence, token = _claim(conn, "refund-77", "worker-2:pid 5120")
        conn.execute("select sentinel.fail_v3(%s, %s, %s, %s, %s, true)",
                     (NAMESPACE, "refund-77", fence, token, json.dumps({"type": "CardDeclined"})))
        for key, owner, why in (("payment-order-786", "web-2:pid 4886", "worker killed mid-charge"),
                                ("payment-order-789", "web-1:pid 4889", "lease lost: heartbeat failed for 9.2s"),
                                ("payment-order-790", "web-3:pid 4890", "worker killed mid-charge")):
            fence, token = _claim(conn, key, owner)
            conn.execute("select sentinel.abandon_v2(%s, %s, %s, %s, %s)", (NAMESPACE, key, fence, token, why))
        conn.execute("select sentinel.reconcile_v1(%s, %s, 'completed', 'alice@ops', %s, %s)",
                     (NAMESPACE, "payment-order-786", "charge ch_3Q9 found at the provider",
                      json.dumps({"charge_id": "ch_3Q9"})))
        _claim(conn, "email-receipt-791", "worker-1:pid 5131")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("screenshot_web: needs Debian's chromium: apt-get install -y chromium")
    return found


def screenshot(url: str, out: Path, size: str, profile: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
                        f"--window-size={size}", f"--screenshot={out}", url],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not out.exists():
        sys.exit(f"screenshot_web: chromium failed: {r.stderr[-2000:]}")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("SENTINEL_TEST_DSN"),
                        help="a server where a throwaway database may be created (default: $SENTINEL_TEST_DSN)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="folder of web.png and web-key.png")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn (or run under tests/pgserver.py run --, which sets $SENTINEL_TEST_DSN)")
    chromium()
    name = f"sentinel_screenshot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = make_conninfo(args.dsn, dbname=name)
    assert conninfo_to_dict(dsn)["dbname"] == name
    server: Optional[subprocess.Popen[str]] = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            sentinel.init_db(conn)
        populate(dsn)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        server = subprocess.Popen([sys.executable, "-m", "sentinel", "web", "--dsn", dsn, "--namespace", NAMESPACE,
                                   "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
        assert server.stdout is not None
        first = server.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+/)", first)
        if found is None:
            sys.exit(f"screenshot_web: sentinel web did not start: {first!r}")
        with tempfile.TemporaryDirectory() as profile:
            screenshot(found.group(1), args.out / "web.png", "1280,640", Path(profile))
        server.terminate()
        server.wait(timeout=20)
        # the key's page with the reconcile form: reconcile on, signed in as alice
        server = subprocess.Popen([sys.executable, "-m", "sentinel", "web", "--dsn", dsn, "--namespace", NAMESPACE,
                                   "--port", "0", "--allow-reconcile", "--password-env", "SCREENSHOT_PASSWORD"],
                                  stdout=subprocess.PIPE, text=True, env={**env, "SCREENSHOT_PASSWORD": "s3cret"})
        assert server.stdout is not None
        first = server.stdout.readline()
        found = re.search(r"on http://(127\.0\.0\.1:\d+)/", first)
        if found is None:
            sys.exit(f"screenshot_web: sentinel web --allow-reconcile did not start: {first!r}")
        url = f"http://alice:s3cret@{found.group(1)}/key?" + urlencode({"namespace": NAMESPACE,
                                                                        "key": "payment-order-789"})
        with tempfile.TemporaryDirectory() as profile:
            screenshot(url, args.out / "web-key.png", "1280,1180", Path(profile))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
    return 0


if __name__ == "__main__":
    sys.exit(main())

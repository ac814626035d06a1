"""`sentinel grant --namespace`, `revoke` and `rights`, and what the CLI prints of text applications chose."""

from __future__ import annotations

import json
from typing import Dict

import psycopg
import pytest

import sentinel
from test_cli import role, run  # noqa: F401  (role is a fixture)


def test_grant_in_a_namespace_gives_exactly_the_rights_named(dsn: str, role: Dict[str, str],  # noqa: F811
                                                             namespace: str) -> None:
    name = role["name"]
    r = run("grant", name, "--namespace", namespace, "--app", "--probe", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert "complete_v3" in r.stdout and "complete_v1" not in r.stdout, "never the tokenless calls"
    assert "purge_v1" not in r.stdout, "the probe right does not carry purge"
    shown = json.loads(run("rights", name, "--json", "--dsn", dsn).stdout)["rights"]
    assert [(x["namespace"], x["right"], x["legacy_calls"]) for x in shown] == [(namespace, "app", False),
                                                                                (namespace, "probe", False)]
    assert shown[0]["granted_by"], "who granted it is recorded"
    text = run("rights", name, "--dsn", dsn).stdout.splitlines()
    assert text[0].split() == ["role", "namespace", "right", "legacy", "calls", "granted", "by"]
    assert [line.split()[:4] for line in text[1:]] == [[name, namespace, "app", "no"], [name, namespace, "probe", "no"]]

    with sentinel.Sentinel(conninfo=role["dsn"], namespace=namespace) as s:
        assert s.once("k", lambda: 1).response == 1
    with sentinel.Sentinel(conninfo=role["dsn"], namespace=namespace + "-other") as s:
        with pytest.raises(sentinel.PermissionDenied, match=f"sentinel grant {name} --namespace {namespace}-other"):
            s.once("k", lambda: 1)

    r = run("revoke", name, "--namespace", namespace, "--app", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    shown = json.loads(run("rights", name, "--json", "--dsn", dsn).stdout)["rights"]
    assert [x["right"] for x in shown] == ["probe"], "revoke --app leaves the probe right"
    with sentinel.Sentinel(conninfo=role["dsn"], namespace=namespace) as s:
        with pytest.raises(sentinel.PermissionDenied, match=f"may not claim keys in namespace '{namespace}'"):
            s.once("k2", lambda: 1)
    assert run("revoke", name, "--dsn", dsn).returncode == 0
    assert json.loads(run("rights", name, "--json", "--dsn", dsn).stdout)["rights"] == []
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute("select has_function_privilege(%s, 'sentinel.acquire_v2(text, text, text, bigint, bigint,"
                            " boolean, text, text)', 'execute')", (name,)).fetchone()
    assert row == (False,), "a role left without rights loses the functions too"


def test_a_right_without_a_namespace_is_a_usage_error_naming_the_flag(dsn: str, role: Dict[str, str]  # noqa: F811
                                                                      ) -> None:
    r = run("grant", role["name"], "--probe", "--dsn", dsn)
    assert r.returncode == 2
    assert "--namespace NS or --all-namespaces" in r.stderr and r.stderr.count("sentinel grant:") == 1
    assert json.loads(run("rights", role["name"], "--json", "--dsn", dsn).stdout)["rights"] == [], \
        "nothing was granted"


def test_the_legacy_grant_keeps_the_tokenless_calls_until_revoke_legacy(dsn: str, role: Dict[str, str]  # noqa: F811
                                                                        ) -> None:
    name = role["name"]
    assert run("grant", name, "--dsn", dsn).returncode == 0
    shown = json.loads(run("rights", name, "--json", "--dsn", dsn).stdout)["rights"]
    assert [(x["namespace"], x["right"], x["legacy_calls"]) for x in shown] == [("*", "app", True)]
    r = run("revoke", name, "--legacy", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute("select has_function_privilege(%s, 'sentinel.complete_v1(text, text, bigint, jsonb)',"
                            " 'execute')", (name,)).fetchone()
    assert row == (False,)


def test_keys_owners_and_reasons_are_printed_escaped(dsn: str, namespace: str) -> None:
    """A key or reason with a newline cannot forge a table row; an ANSI escape never reaches the terminal."""
    key, reason = "k\nforged-row completed 1", "died \x1b[2J\x1b[31mred\u202e"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select fence from sentinel.acquire_v1(%s, %s, 'w\x1b]0;title\x07', 60000)",
                           (namespace, key)).fetchone()
        assert row is not None
        conn.execute("select sentinel.abandon_v1(%s, %s, %s, %s)", (namespace, key, row[0], reason))
    for argv in (["list"], ["inspect", key],
                 ["reconcile", key, "--as", "failed", "--reason", "bad\rline", "--actor", "ops\x1b[0m"]):
        r = run(*argv, "--dsn", dsn, "--namespace", namespace)
        assert r.returncode == 0, (argv, r.stderr)
        assert "\x1b" not in r.stdout and "\r" not in r.stdout and "\u202e" not in r.stdout, (argv, r.stdout)
        assert "k\\nforged-row" in r.stdout, (argv, r.stdout)
        assert not any(line.startswith("forged-row") for line in r.stdout.splitlines()), (argv, r.stdout)
    listed = run("list", "--dsn", dsn, "--namespace", namespace, "--json").stdout
    assert json.loads(listed)["records"][0]["key"] == key, "--json keeps the text as it is"

"""A function that outlives the default lease is told which option gives it more time."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from drivers import make


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("given", [False, True])
def test_a_lost_default_lease_names_ttl_ms_and_hard_ttl_ms(dsn: str, namespace: str, driver: str, given: bool,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def outlive(ctx: Any) -> str:
        assert ctx.wait_lost(timeout=20), "the lease was never lost"
        return "done"

    caplog.set_level(logging.WARNING, logger="sentinel")
    with make(driver, conninfo=dsn, namespace=namespace, default_ttl_ms=300, fingerprints=False) as s:
        options = {"ttl_ms": 300} if given else {}
        s.once("long-job", outlive, pass_context=True, **options)
    said = [r.getMessage() for r in caplog.records]
    lost = [m for m in said if "long-job" in m and ("lost its lease" in m or "hard deadline" in m)]
    assert lost, said
    if given:  # the caller chose the lease: no advice
        assert all("ttl_ms=" not in m for m in lost), lost
    else:
        assert any("no ttl_ms" in m and "300 ms lease" in m and "pass ttl_ms= and hard_ttl_ms=" in m
                   for m in lost), lost

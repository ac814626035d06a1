from __future__ import annotations

import sentinel


def test_fresh_then_replay(client: sentinel.Sentinel) -> None:
    calls = []

    def fn(x: int) -> dict:
        calls.append(x)
        return {"x": x}

    first = client.once("k", fn, args=(1,))
    second = client.once("k", fn, args=(2,))
    assert first.response == {"x": 1} and not first.replayed and first.completed
    assert second.response == {"x": 1} and second.replayed
    assert calls == [1]
    assert second.fence == first.fence


def test_the_version_follows_the_release_it_supersedes_and_has_a_changelog_entry() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    declared = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    assert declared is not None and declared.group(1) == sentinel.__version__
    major, minor = (int(p) for p in sentinel.__version__.split(".")[:2])
    assert (major, minor) > (0, 3), "0.3.0 is on the index already: this release must come after it"
    assert f"## {sentinel.__version__}" in (root / "CHANGELOG.md").read_text()

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

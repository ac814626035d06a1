"""Warnings that stay readable during an outage: one line each, repeats held back.

While the database is away the heartbeat retries every 200 ms and each
recording retries with backoff; logging every try buries the one line an
operator needs. :class:`Throttle` lets the first warning of a kind through,
then at most one every ``every`` seconds, saying how many it held back.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, Hashable, Optional, Tuple


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libpq's carry a second line of hints)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Throttle:
    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._seen: Dict[Hashable, Tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, what: Hashable) -> Optional[int]:
        """None to hold this repeat back; else how many repeats of ``what`` were held back before it."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(what)
            if last is not None and now - last[0] < self.every:
                self._seen[what] = (last[0], last[1] + 1)
                return None
            self._seen[what] = (now, 0)
            if len(self._seen) > 1000:  # forget what has been quiet for a while
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.every}
            return 0 if last is None else last[1]


def held_back(n: int) -> str:
    """The suffix of a warning that stood for ``n`` held-back repeats."""
    return f" ({n} more like this in the last few seconds not shown)" if n else ""


#: the process's throttle of repeated warnings
throttle = Throttle()

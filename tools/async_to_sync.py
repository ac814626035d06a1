#!/usr/bin/env python3
"""Generate the synchronous client from its asyncio source.

``python/sentinel/_client_async.py`` (with ``_wait_async.py``,
``_run_async.py`` and ``_ops_async.py``) is the one hand-written source of the once() flow; the
sync modules ``_client.py``, ``_wait.py``, ``_run.py`` and ``_ops.py`` are produced from
them by this script, token by token, so comments and layout survive and a diff between the
two shows only what differs. The rules:

- ``async def``, ``async with``, ``async for`` lose ``async``; ``await`` is
  dropped;
- names are renamed by ``NAMES`` (``AsyncSentinel`` -> ``Sentinel``,
  ``_io_async`` -> ``_io_sync``, ...): the I/O helpers of both sides live in
  ``_io_async`` and ``_io_sync`` under matching names;
- a block ``if True:  # ASYNC`` keeps its body in the async source and is
  replaced by its ``else:`` body (dedented), or by nothing, in the sync one;
- in docstrings, a paragraph whose first line starts with ``**`` and holds
  ``(asyncio)`` is asyncio-only and dropped; ``STRINGS`` rewrites the rest
  (``async with`` -> ``with``, ...).

``--check`` exits 1 when a generated file differs from what the source gives
(``make check`` runs it); without it the files are written.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [  # the asyncio source, the sync module generated from it, the generated module's docstring
    ("_ops_async.py", "_ops.py",
     "The operator calls for sync code, :class:`Operations`: inspect, list, reconcile, events, stats, purge."),
    ("_run_async.py", "_run.py",
     "The run and the recording of a claimed key for sync code (:class:`Runner`, under :class:`Sentinel`)."),
    ("_wait_async.py", "_wait.py",
     "Waiting for another worker's outcome and asking a probe, for sync code (:class:`Waiter`)."),
    ("_client_async.py", "_client.py",
     "The synchronous client, :class:`Sentinel`: once(), idempotent(), transaction(), the operator calls."),
]
PACKAGE = ROOT / "python/sentinel"

NAMES: Dict[str, str] = {
    "AsyncSentinel": "Sentinel",
    "AsyncOperations": "Operations",
    "AsyncRunner": "Runner",
    "AsyncWaiter": "Waiter",
    "AsyncExecutionContext": "ExecutionContext",
    "AsyncTransaction": "Transaction",
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncGetConn": "GetConn",
    "AsyncProbe": "Probe",
    "AsyncSource": "Source",
    "AsyncHeartbeater": "Heartbeater",
    "AsyncLease": "Lease",
    "AsyncListener": "Listener",
    "AsyncIterator": "Iterator",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "asynccontextmanager": "contextmanager",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "_io_async": "_io_sync",
    "_ops_async": "_ops",
    "_run_async": "_run",
    "_wait_async": "_wait",
}

STRINGS: List[Tuple[str, str]] = [
    ("async with ", "with "),
    ("async for ", "for "),
    ("await ", ""),
    ("AsyncSentinel", "Sentinel"),
    ("AsyncOperations", "Operations"),
    ("AsyncRunner", "Runner"),
    ("AsyncWaiter", "Waiter"),
    ("AsyncExecutionContext", "ExecutionContext"),
    ("AsyncTransaction", "Transaction"),
    ("AsyncConnectionPool", "ConnectionPool"),
    ("AsyncConnection", "Connection"),
    ("an async callable", "a callable"),
    ("async callable", "callable"),
    ("async def ", "def "),
]

_ASYNC_IF = re.compile(r"^(\s*)if True:\s*# ASYNC\s*$")
_ELSE = re.compile(r"^(\s*)else:\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: List[str], start: int, base: int) -> int:
    """The index after the block whose header is lines[start - 1] (indentation ``base``)."""
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        i += 1
    while i > start and not lines[i - 1].strip():
        i -= 1  # trailing blank lines belong to what follows
    return i


def select_branches(text: str) -> str:
    """Replace each ``if True:  # ASYNC`` block by its ``else:`` body, dedented (or by nothing)."""
    lines = text.splitlines(keepends=True)
    out: List[str] = []
    i = 0
    while i < len(lines):
        m = _ASYNC_IF.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        base = len(m.group(1))
        i = _block_end(lines, i + 1, base)
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        e = _ELSE.match(lines[j]) if j < len(lines) else None
        if e and len(e.group(1)) == base:
            end = _block_end(lines, j + 1, base)
            body = lines[j + 1:end]
            step = min(_indent(b) for b in body if b.strip()) - base
            out.extend(b[step:] if b.strip() else b for b in body)
            i = end
    return "".join(out)


def _docstring(token: str) -> str:
    quote = token[-3:]
    start = token.index(quote)
    text = token[start + 3:-3]
    parts = re.split(r"(\n[ \t]*\n)", text)  # paragraph, separator, paragraph, ...
    kept: List[str] = []
    for k in range(0, len(parts), 2):
        para = parts[k]
        sep = parts[k + 1] if k + 1 < len(parts) else ""
        head = para.lstrip().split("\n", 1)[0]
        if head.startswith("**") and "(asyncio)" in head:
            if kept and not sep:  # the last paragraph: the separator before it goes, its closing indent stays
                kept[-1] = para[para.rfind("\n"):] if "\n" in para else ""
            continue
        kept.extend((para, sep))
    text = "".join(kept)
    for old, new in STRINGS:
        text = text.replace(old, new)
    return token[:start + 3] + text + quote


def convert(text: str, source: str = "_client_async.py", doc: str = "") -> str:
    """The sync module for the asyncio source ``text``."""
    text = select_branches(text)
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos: Tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: List[Tuple[int, int, str]] = []
    first = next(t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL))
    if first.type == tokenize.STRING:  # the module's docstring
        note = f"Generated from ``{source}`` by ``tools/async_to_sync.py``; read and change that file."
        edits.append((at(first.start), at(first.end), f'"""{doc}\n\n{note}\n"""'))
        tokens.remove(first)
    for n, tok in enumerate(tokens):
        nxt = tokens[n + 1] if n + 1 < len(tokens) else None
        if tok.type == tokenize.NAME:
            if tok.string == "await" or (tok.string == "async" and nxt is not None
                                         and nxt.string in ("def", "with", "for")):
                assert nxt is not None
                edits.append((at(tok.start), at(nxt.start), ""))
            elif tok.string in NAMES:
                edits.append((at(tok.start), at(tok.end), NAMES[tok.string]))
        elif tok.type == tokenize.STRING and tok.string.endswith(('"""', "'''")):
            new = _docstring(tok.string)
            if new != tok.string:
                edits.append((at(tok.start), at(tok.end), new))
        elif tok.type == tokenize.STRING and tok.string[1:-1] in NAMES:  # a name in __all__
            edits.append((at(tok.start), at(tok.end), tok.string[0] + NAMES[tok.string[1:-1]] + tok.string[-1]))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return _sorted_imports(_header(text, source))


def _sorted_imports(text: str) -> str:
    """The imports sorted as ``ruff`` sorts them (a branch chosen above may sit among them)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "I001", "--fix-only", "--quiet", "--stdin-filename",
         str(PACKAGE / "_client.py"), "-"], input=text, capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff could not sort the generated imports: {done.stderr.strip()}")
    return done.stdout


def _header(text: str, source: str) -> str:
    note = (f"# Generated from {source} by tools/async_to_sync.py (make generate): do not edit.\n"
            "# Change the asyncio source and regenerate; make check fails while this file is stale.\n")
    return note + text


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for source_name, target_name, doc in PAIRS:
        source, target = PACKAGE / source_name, PACKAGE / target_name
        wanted = convert(source.read_text(), source_name, doc)
        have = target.read_text() if target.exists() else ""
        if wanted == have:
            continue
        if args.check:
            stale.append(target)
        else:
            target.write_text(wanted)
            print(f"wrote {target.relative_to(ROOT)}")
    for target in stale:
        print(f"{target.relative_to(ROOT)} is stale: run `make generate` (tools/async_to_sync.py) "
              "and commit the result", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

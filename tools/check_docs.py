#!/usr/bin/env python3
"""Check the Markdown of README.md and docs/: every relative link and #anchor resolves.

Run by ``make check``. Anchors follow GitHub's rule: the heading in lower case,
punctuation other than ``-`` and ``_`` dropped, spaces turned into ``-``, and
``-1``, ``-2`` ... appended to repeated headings. Prints each broken link with
its file and line, and exits 1 if there is any.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def slug(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    out: Set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if in_code or not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def check(files: List[Path]) -> List[str]:
    problems: List[str] = []
    cache: Dict[Path, Set[str]] = {}
    for md in files:
        in_code = False
        for no, line in enumerate(md.read_text().splitlines(), 1):
            if FENCE.match(line):
                in_code = not in_code
                continue
            if in_code:
                continue
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http:, https:, mailto:
                path_part, _, anchor = target.partition("#")
                dest = (md.parent / path_part).resolve() if path_part else md
                where = f"{md.relative_to(ROOT)}:{no}"
                if not dest.exists():
                    problems.append(f"{where}: {target}: no such file")
                    continue
                if anchor and dest.suffix == ".md":
                    names = cache.setdefault(dest, anchors(dest))
                    if anchor not in names:
                        problems.append(f"{where}: {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def main() -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = check(files)
    for p in problems:
        print(p)
    print(f"docs: {len(files)} files, {'no broken links' if not problems else f'{len(problems)} broken links'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

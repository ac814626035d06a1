#!/usr/bin/env python3
"""Write the Python side of sql/protocol.json: the SQLSTATE error classes and the protocol's limits.

    python tools/gen_protocol.py          # rewrite the generated blocks
    python tools/gen_protocol.py --check  # exit 1 if a block is stale (make check)

sql/protocol.json defines the limits (key bytes, ttl bounds, text lengths) and
the SQLSTATE table once. This script writes, between marker lines, the error
classes of ``python/sentinel/errors.py`` (one per SQLSTATE, as psycopg
generates its ``errors.py`` from PostgreSQL's table) and the limit constants of
``python/sentinel/_options.py``. The Node client reads the JSON itself; the
SQL functions enforce the same values, which tests/test_protocol_table.py checks
at each boundary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "sql" / "protocol.json"
BEGIN = "# -- generated from sql/protocol.json by tools/gen_protocol.py: do not edit by hand --\n"
END = "# -- end of the generated part --\n"


def _classes(table: Dict[str, Any]) -> str:
    out: List[str] = []
    for code, entry in table.items():
        doc = entry["doc"].split("\n")
        body = [f'    """{doc[0]}']
        if len(doc) > 1:
            body += [("    " + line) if line else "" for line in doc[1:]]
            body.append('    """')
        else:
            body[0] += '"""'
        out.append(f"class {entry['class']}({', '.join(entry['bases'])}):\n" + "\n".join(body)
                   + f'\n\n    sqlstate = "{code}"\n')
    return "\n\n".join(out)


def _limits(limits: Dict[str, Any]) -> str:
    lines = []
    for name, value in limits.items():
        if isinstance(value, str):
            lines.append(f"{name.upper()} = {value!r}")
        else:
            lines.append(f"{name.upper()} = {value:_}")
    return "\n".join(lines) + "\n"


def _replace(path: Path, block: str, check: bool) -> bool:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    wanted = text[:start] + block + text[end:]
    if wanted == text:
        return True
    if check:
        print(f"{path.relative_to(ROOT)} is stale: run python tools/gen_protocol.py", file=sys.stderr)
        return False
    path.write_text(wanted, encoding="utf-8")
    return True


def main(argv: List[str]) -> int:
    check = "--check" in argv
    protocol = json.loads(PROTOCOL.read_text(encoding="utf-8"))
    errors = "\n\n" + _classes(protocol["sqlstates"]) + "\n\n"
    limits = "#: The protocol's limits, as the SQL functions enforce them (sql/protocol.json).\n" + _limits(
        protocol["limits"])
    ok = _replace(ROOT / "python/sentinel/errors.py", errors, check)
    ok = _replace(ROOT / "python/sentinel/_options.py", limits, check) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

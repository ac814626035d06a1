"""MkDocs hooks for the documentation site (``make docs``): pages made from their one source.

- ``index.md`` is the README (links into ``docs/`` made relative to the site);
- ``<!-- cli-reference -->`` becomes the help of every ``sentinel`` command, from
  the CLI's own parser, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))


def _readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


def _cli_reference() -> str:
    from sentinel.cli import build_parser

    parser = build_parser()
    parser.prog = "sentinel"
    out = ["```text", parser.format_help().rstrip(), "```"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sub.prog = f"sentinel {name}"
                out += ["", f"## sentinel {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_path == "index.md":
        return _readme()
    if "<!-- cli-reference -->" in markdown:
        return markdown.replace("<!-- cli-reference -->", _cli_reference())
    return markdown

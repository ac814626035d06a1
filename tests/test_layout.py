"""The package's shape: no import cycle, the core imports no plug-in, and it imports without Django."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python"


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    """Every import of every module (at module level or inside functions), as the package modules it names."""
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                named = subs or [target]
            elif isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in named if t in modules and t != name)
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle, or [] (depth-first search)."""
    state: Dict[str, int] = {}
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_no_import_cycle() -> None:
    cycle = _cycle(_imports(_modules()))
    assert not cycle, " -> ".join(cycle)


def test_the_core_imports_no_plug_in() -> None:
    graph = _imports(_modules())
    core = [m for m in graph if not m.startswith("sentinel.contrib")]
    offenders = {m: sorted(t for t in graph[m] if t.startswith("sentinel.contrib")) for m in core}
    assert not any(offenders.values()), {m: t for m, t in offenders.items() if t}


def test_sentinel_imports_and_builds_a_client_without_django() -> None:
    script = (
        "import sys\n"
        "sys.modules['django'] = None  # as if Django were not installed\n"
        "import sentinel\n"
        "sentinel.Sentinel(conninfo='dbname=nowhere').close()\n"
        "try:\n"
        "    sentinel.Sentinel()\n"
        "except TypeError as exc:\n"
        "    print('refused:', exc)\n"
        "print(sorted(m for m in sys.modules if m.startswith('sentinel.contrib.django')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PYTHONPATH": str(PACKAGE), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "refused: Sentinel() needs one of get_conn=, pool= or conninfo=" in done.stdout, done.stdout
    assert done.stdout.strip().endswith("[]"), done.stdout  # the Django plug-in was never imported

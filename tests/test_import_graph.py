"""The import graph of ``gateway/``, read with ``ast`` (nothing is imported), against its layers.

Data flows adapters → core → rules → store → uplink; imports follow a layering:

- foundation: ``gateway`` itself (the version), ``reading``, ``logs``, ``metrics``, ``notify``
  and ``config`` (shared value types, YAML, secrets) import none of the stages;
- ``payloads`` decodes bytes: it imports the foundation only;
- ``core`` (pipeline, registry, supervisor, backoff) may use ``payloads``, never an adapter
  (adapters come in through the ``gateway.adapters`` entry points);
- ``adapters`` and ``rules`` build on ``core`` and ``payloads``;
- ``store`` builds on ``core``; ``uplink`` reads the ``store``;
- ``api``, ``daemon``, ``cli`` and ``__main__`` compose everything and may import anything,
  but nothing imports the CLI (command groups come in through ``gateway.commands``).

Two checks on the package graph: (a) no cycle between top-level packages and modules, and
(b) no import against the layering. Every import counts, wherever it is written: at module
level, inside a function (lazy: it still runs, later), or under ``if TYPE_CHECKING:`` (type
only: it never runs, but the package still depends on the other's names); failures say which
kind each import is. A third check (c) refuses cycles of module-level imports between modules,
which break at import time depending on which module is imported first.

``python tests/test_import_graph.py`` prints the package graph with every import behind it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"

ANY = frozenset({"*"})
FOUNDATION = frozenset({"gateway", "gateway.reading", "gateway.logs", "gateway.metrics",
                        "gateway.notify", "gateway.config", "gateway.plugins"})

#: what each top-level package or module may import besides itself
MAY_IMPORT: dict[str, frozenset[str]] = {
    "gateway": frozenset(),
    "gateway.reading": frozenset(),
    "gateway.logs": frozenset(),
    "gateway.metrics": frozenset(),
    "gateway.notify": frozenset(),
    "gateway.plugins": frozenset(),
    "gateway.config": frozenset({"gateway", "gateway.reading"}),
    "gateway.payloads": FOUNDATION,
    "gateway.core": FOUNDATION | {"gateway.payloads"},
    "gateway.adapters": FOUNDATION | {"gateway.core", "gateway.payloads"},
    "gateway.rules": FOUNDATION | {"gateway.core", "gateway.payloads"},
    "gateway.store": FOUNDATION | {"gateway.core"},
    "gateway.history": FOUNDATION | {"gateway.core"},
    "gateway.uplink": FOUNDATION | {"gateway.core", "gateway.store"},
    "gateway.homeassistant": FOUNDATION | {"gateway.core"},
    "gateway.api": ANY,
    "gateway.daemon": ANY,
    "gateway.reload": ANY,
    "gateway.cli": ANY,
    "gateway.__main__": ANY,
}

#: imports against the layering that are known and not fixed yet, by (module, package) they
#: come from and go to, one line each saying why; the test fails when one is gone (remove it)
ALLOWED: dict[tuple[str, str], str] = {
    # config.model is the composition root of the config (it validates every section with
    # that section's own model) but lives in the foundation package beside config.types,
    # which every section imports. Moving it above the stages (gateway/settings.py) makes
    # a cycle through the API instead: the API types the daemon, which loads the config,
    # which imports the api: section's model; that needs the API typed against a protocol
    # of its own first
    ("gateway.config.model", "gateway.adapters"): "adapter sections, by their entry points",
    ("gateway.config.model", "gateway.api"): "the api: section's model",
    ("gateway.config.model", "gateway.core"): "the gateway:/registry: sections' models",
    ("gateway.config.model", "gateway.rules"): "the rules:/filters: sections' models",
    ("gateway.config.model", "gateway.store"): "the store: section's model",
    ("gateway.config.model", "gateway.history"): "the history: section's model",
    ("gateway.config.model", "gateway.uplink"): "the uplink: section's model",
    ("gateway.config.model", "gateway.homeassistant"): "the homeassistant: section's model",
}


@dataclass(frozen=True)
class Import:
    """``source`` imports ``target`` at ``line``; ``kind`` is module, function or type."""

    source: str
    target: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target} ({self.kind})"


# -- the checker --------------------------------------------------------------------------

def module_name(path: Path, root: Path) -> str:
    """``root/adapters/zigbee/cli.py`` → ``gateway.adapters.zigbee.cli`` (root is the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _absolute(module: str | None, level: int, here: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """Every import of ``root``'s own modules written in ``path``, with where it runs."""
    here = module_name(path, root)
    top = root.name
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def add(target: str, line: int, kind: str) -> None:
        if target == top or target.startswith(top + "."):
            found.append(Import(here, target, line, kind))

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_one(stmt, "type")
                for stmt in child.orelse:
                    visit_one(stmt, kind)
            else:
                visit_one(child, kind)

    def visit_one(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, kind)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, here, is_package)
            for alias in node.names:
                # `from gateway import cli` imports the module gateway.cli
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno, kind)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(node, "type" if kind == "type" else "function")
        else:
            visit(node, kind)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "module")
    return list(dict.fromkeys(found))  # `from x import a, b` is one import of x


def collect(root: Path) -> list[Import]:
    """Every import between the modules of the package at ``root``."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    out: list[Import] = []
    for p in paths:
        out.extend(imports_of(p, root, modules))
    return out


def package_of(module: str) -> str:
    """The top-level package or module: ``gateway.adapters.mqtt.adapter`` → ``gateway.adapters``."""
    return ".".join(module.split(".")[:2])


def package_graph(found: list[Import], allowed: dict[tuple[str, str], str] | None = None
                  ) -> dict[tuple[str, str], list[Import]]:
    """(package, package) → the imports behind that edge, leaving out the allowed ones."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in found:
        a, b = package_of(imp.source), package_of(imp.target)
        if a != b and (imp.source, b) not in (allowed or {}):
            edges[(a, b)].append(imp)
    return dict(edges)


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(set(graph) | {b for _, b in edges}):
        if v not in index:
            strong(v)
    return sorted(out)


def describe_cycle(component: list[str], edges: dict[tuple[str, str], list[Import]]) -> str:
    """A cycle and the imports making each of its edges."""
    members = set(component)
    lines = [" ⇄ ".join(component)]
    for (a, b), imps in sorted(edges.items()):
        if a in members and b in members:
            lines += [f"  {a} -> {b}"] + [f"      {imp}" for imp in imps]
    return "\n".join(lines)


def layer_violations(found: list[Import], may_import: dict[str, frozenset[str]],
                     allowed: dict[tuple[str, str], str]) -> list[str]:
    """Imports the layering forbids, and packages it does not place, as messages."""
    out: list[str] = []
    for imp in found:
        a, b = package_of(imp.source), package_of(imp.target)
        if a == b or (imp.source, b) in allowed:
            continue
        rule = may_import.get(a)
        if rule is None:
            out.append(f"{a} is not in MAY_IMPORT: say what it may import ({imp})")
        elif rule is not ANY and b not in rule:
            out.append(f"{imp}: {a} may import only {', '.join(sorted(rule)) or 'nothing'}")
    return sorted(set(out))


def module_cycles(found: list[Import]) -> list[list[str]]:
    """Cycles of module-level imports between modules (they fail at import time)."""
    return cycles({(i.source, i.target) for i in found
                   if i.kind == "module" and i.source != i.target})


def stale_allowances(found: list[Import], allowed: dict[tuple[str, str], str]) -> list[str]:
    """Allowed (module, package) imports that no longer exist."""
    present = {(i.source, package_of(i.target)) for i in found}
    return [f"{src} -> {pkg}" for src, pkg in sorted(allowed) if (src, pkg) not in present]


# -- the gateway's graph ------------------------------------------------------------------

@pytest.fixture(scope="module")
def found() -> list[Import]:
    return collect(ROOT)


def test_no_cycles_between_packages(found: list[Import]) -> None:
    edges = package_graph(found, ALLOWED)
    problems = [describe_cycle(c, edges) for c in cycles(set(edges))]
    assert not problems, "import cycles between packages:\n" + "\n".join(problems)


def test_imports_follow_the_layers(found: list[Import]) -> None:
    problems = layer_violations(found, MAY_IMPORT, ALLOWED)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_cycles_of_module_level_imports(found: list[Import]) -> None:
    problems = module_cycles(found)
    assert not problems, f"modules importing each other at import time: {problems}"


def test_every_allowance_is_still_needed(found: list[Import]) -> None:
    assert stale_allowances(found, ALLOWED) == []


def test_nothing_imports_the_cli(found: list[Import]) -> None:
    # command groups get what they need from the CLI through register(cli)
    assert [str(i) for i in found if i.target == "gateway.cli"
            and i.source != "gateway.__main__"] == []


def test_the_walk_sees_lazy_and_type_only_imports(found: list[Import]) -> None:
    by: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i in found:
        by[(i.source, i.target)].add(i.kind)
    assert by[("gateway.cli", "gateway.daemon")] == {"function"}
    assert by[("gateway.cli", "gateway.config.model")] == {"function", "type"}
    assert by[("gateway.daemon", "gateway.uplink.client")] == {"module"}
    # every package is in the walk, and each one the walk meets is placed in the layers
    seen = {package_of(m) for i in found for m in (i.source, i.target)}
    assert seen == set(MAY_IMPORT)


# -- the checker itself, on a tiny package ------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "gw"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SYNTHETIC_LAYERS = {
    "gw": frozenset(),
    "gw.core": frozenset({"gw"}),
    "gw.adapters": frozenset({"gw", "gw.core"}),
    "gw.cli": ANY,
}


def test_checker_passes_a_clean_package(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/pipe.py": "from gw import version\n",
        "adapters/__init__.py": "",
        "adapters/mqtt.py": "from ..core import pipe\nfrom gw.core.pipe import x\n",
        "cli.py": "def main():\n    import gw.adapters.mqtt\n",
    })
    found = collect(root)
    assert {(i.source, i.target, i.kind) for i in found} == {
        ("gw.core.pipe", "gw", "module"),
        ("gw.adapters.mqtt", "gw.core.pipe", "module"),
        ("gw.cli", "gw.adapters.mqtt", "function"),
    }
    assert cycles(set(package_graph(found))) == []
    assert layer_violations(found, SYNTHETIC_LAYERS, {}) == []


def test_checker_finds_a_new_cycle_and_a_new_violation(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/supervisor.py": ("from typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from gw.adapters.base import Adapter\n"),
        "adapters/__init__.py": "",
        "adapters/base.py": "from gw.core import supervisor\n",
        "cli.py": "",
    })
    found = collect(root)
    assert Import("gw.core.supervisor", "gw.adapters.base", 3, "type") in found
    edges = package_graph(found)
    assert cycles(set(edges)) == [["gw.adapters", "gw.core"]]
    assert "gw.core.supervisor:3 imports gw.adapters.base (type)" in describe_cycle(
        ["gw.adapters", "gw.core"], edges)
    assert layer_violations(found, SYNTHETIC_LAYERS, {}) == [
        "gw.core.supervisor:3 imports gw.adapters.base (type): gw.core may import only gw"]
    # an allowance silences exactly that import, and is stale once the import is gone
    allowed = {("gw.core.supervisor", "gw.adapters"): "known"}
    assert cycles(set(package_graph(found, allowed))) == []
    assert layer_violations(found, SYNTHETIC_LAYERS, allowed) == []
    assert stale_allowances(found, {("gw.core.pipe", "gw.adapters"): "gone"}) == [
        "gw.core.pipe -> gw.adapters"]


def test_checker_refuses_unplaced_packages_and_sees_submodule_imports(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "extra.py": "from gw import cli\n",
        "cli.py": "import os\n",
    })
    found = collect(root)
    assert found == [Import("gw.extra", "gw.cli", 1, "module")]
    assert layer_violations(found, SYNTHETIC_LAYERS, {}) == [
        "gw.extra is not in MAY_IMPORT: say what it may import "
        "(gw.extra:1 imports gw.cli (module))"]


def test_checker_finds_module_level_cycles_only(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/a.py": "from gw.core import b\n",
        "core/b.py": "def f():\n    from gw.core import a\n",
        "core/c.py": "import gw.core.d\n",
        "core/d.py": "from . import c\n",
    })
    assert module_cycles(collect(root)) == [["gw.core.c", "gw.core.d"]]


if __name__ == "__main__":
    graph = package_graph(collect(ROOT))
    for (a, b), imps in sorted(graph.items()):
        mark = "  (allowed)" if all((i.source, b) in ALLOWED for i in imps) else ""
        print(f"{a} -> {b}{mark}")
        for imp in imps:
            print(f"    {imp}")
    sys.exit(0)

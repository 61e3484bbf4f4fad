"""The structure the README's architecture section promises, checked on the source: data flows
one way (no import cycle, counting imports inside functions too), no module reaches into
another's private names, and the core never imports the Metaflow integration."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

ROOT = Path(__file__).resolve().parents[2] / "composer"
# The outer shell may know the integrations; everything else is core.
SHELL = {"composer", "composer.api", "composer.cli", "composer.__main__", "composer.metaflow_link"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str) -> Iterator[Tuple[str, Set[str]]]:
    """(imported composer module, names taken from it) for every import in module name."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("composer"):
                    yield alias.name, set()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("composer"):
                continue
            plain = set()
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", set()
                else:
                    plain.add(alias.name)
            if plain:
                yield base, plain


GRAPH = {name: {target for target, _ in imports(name) if target != name} for name in MODULES}


def test_every_import_names_a_real_module():
    for name, targets in GRAPH.items():
        assert targets <= set(MODULES), f"{name} imports {sorted(targets - set(MODULES))}"


def test_no_import_cycle():
    state: Dict[str, int] = {}
    stack = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_no_private_names_across_modules():
    for name in MODULES:
        for target, names in imports(name):
            private = sorted(n for n in names if n.startswith("_") and not n.startswith("__"))
            assert not private, f"{name} imports private {private} from {target}"
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        modules = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names if (getattr(n, "module", None) or "").startswith("composer") or a.name.startswith("composer")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in modules):
                raise AssertionError(f"{name} uses {node.value.id}.{node.attr}")


def test_core_never_imports_the_metaflow_integration():
    for name, targets in GRAPH.items():
        if name not in SHELL:
            assert "composer.metaflow_link" not in targets, f"core module {name} imports composer.metaflow_link"


def test_core_never_imports_metaflow_itself():
    for name in MODULES:
        if name in SHELL:
            continue
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(m == "metaflow" or m.startswith("metaflow.") for m in mods), f"{name} imports metaflow"


def test_exceptions_keep_their_cause():
    """A raise inside an except block says where it came from (`from exc`, or `from None` on purpose)."""
    missing = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for handler in ast.walk(tree):
            if not isinstance(handler, ast.ExceptHandler):
                continue
            for node in ast.walk(handler):
                if isinstance(node, ast.Raise) and node.exc is not None and node.cause is None:
                    missing.append(f"{name}:{node.lineno}")
    assert not missing, "raise without a cause inside except: " + ", ".join(missing)

"""The package's layout: at most 12 entries at the top, no import circle, and no module
importing from a package above its own layer (docs/design.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llama2rlhf"

# low to high; a module may import from its own layer and the ones below it
LAYERS = [
    {"data"},
    {"toyworld", "plugins"},
    {"config"},
    {"runtime"},
    {"sampling"},
    {"reward"},
    {"gatt"},
    {"evaluation"},
    {"recipe"},
    {"__main__"},
]


def layer_of(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"llama2rlhf.{top} is in no layer of LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere (functions included), less the
    imports for type checkers only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name and m != "llama2rlhf"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_top_level_holds_at_most_twelve_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert len(entries) <= 12, entries


def test_every_package_has_a_layer():
    for p in PACKAGE.iterdir():
        if p.is_dir() and (p / "__init__.py").exists() or p.name == "__main__.py":
            layer_of(p.name.removesuffix(".py"))


def test_no_module_imports_from_a_higher_layer(graph):
    upward = []
    for name, deps in graph.items():
        top = name.split(".")[1] if "." in name else None
        if top is None:
            continue
        for dep in deps:
            dep_top = dep.split(".")[1]
            if layer_of(dep_top) > layer_of(top):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle(graph):
    # a module may import its own package's __init__ (the package is imported first anyway)
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_artifact_names_are_the_constants_of_runtime_artifacts():
    """``ctx.artifact(...)`` and ``....artifacts[...]`` (``.get``, ``.setdefault``) take a name
    from ``llama2rlhf.runtime.artifacts`` (or a config value), never a string literal."""
    literal = (ast.Constant, ast.JoinedStr)
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                owner = node.func.value
                if node.func.attr == "artifact" or (
                        node.func.attr in ("get", "setdefault") and isinstance(owner, ast.Attribute)
                        and owner.attr == "artifacts"):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "artifacts":
                key = node.slice
            if isinstance(key, literal) and not (isinstance(key, ast.Constant) and not isinstance(key.value, str)):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "artifact names as string literals:\n" + "\n".join(found)

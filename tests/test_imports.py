"""python/llmc has no import circle: every `import` and `from ... import` of one llmc module by another, at the
top of a file or inside a function, is an edge of a graph that must have no cycle (so imports go one way, as
ARCHITECTURE.md's layers say). Parsed with ast, nothing imported."""
import ast
from pathlib import Path

PACKAGE = "llmc"
ROOT = Path(__file__).resolve().parents[1] / "python" / PACKAGE


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module and package of llmc ("llmc", "llmc.model", "llmc.ops", ...)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The llmc modules that `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x`, `from .model import GPT`, `from ..ops import x`
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule, else a name of pkg
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    deps = set()
    for target in found:
        while target and target not in modules:  # `import llmc.ops.x` names llmc.ops.x, llmc.ops and llmc
            target = target.rpartition(".")[0]
        if target and target != name:
            deps.add(target)
    return deps


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]):
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_relative_forms():
    graph = import_graph()
    assert "llmc.model" in graph and "llmc.trainer" in graph
    assert "llmc.ops" in graph["llmc.model"]  # `from . import ops`
    assert "llmc.model" in graph["llmc.trainer"]  # `from .model import GPT` inside a method


def test_llmc_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in python/llmc: " + " -> ".join(cycle)

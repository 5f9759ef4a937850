"""The folders are the layers, and imports point down only.

One rank table by package (below). An import from package A to package B is allowed when A is B or
B ranks lower; anything else is an upward (or sideways) edge and fails. Checked on the source with
``ast``: every import, also inside functions and under ``if TYPE_CHECKING:``, so neither a lazy
import nor an annotation-only one can hide an edge or a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# where each importable tree lives: reftx/ is the library, methods/ and tasks/ (the zoo) install as
# reftx.methods and reftx.tasks
TREES = {"reftx": REPO / "reftx", "reftx.methods": REPO / "methods", "reftx.tasks": REPO / "tasks"}
# the layers, lowest first (README "Layout"). parts and data share a rank and may not import each
# other; eval ranks below train because training uses evaluation (the classify objective reads the
# eval layer's class logits), never the reverse. The zoo (methods, tasks) may use anything up to
# train; only the recipes and the command line import it (the plugin loader in core reaches it
# through importlib, by name).
RANKS = {
    "core": 0, "config": 1, "models": 2, "engine": 3, "parts": 4, "data": 4, "eval": 5, "train": 6,
    "methods": 7, "tasks": 7, "integrations": 8, "runs": 9, "recipes": 10,
    "testing": 11,  # the shipped contract suite and tiny models (reftx check)
    "cli": 12,
    "": 13,  # the package's own __init__: the public facade re-exports from every layer
    "__main__": 14,  # python -m reftx (what accelerate launch -m reftx starts): the command line
}
ZOO = ("methods", "tasks")
ZOO_USERS = ("recipes", "cli", "methods", "tasks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in TREES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = f.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = f
    return out


def package(module: str) -> str:
    """The layer a module belongs to: ``reftx.engine.hooks`` -> ``engine``; ``reftx`` -> ``''``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _target(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _deepest(dotted: str, mods: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in mods:
            return ".".join(parts[:k])
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {d for a in node.names if (d := _deepest(a.name, mods))}
                continue
            target = _target(name, path, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                found = sub if sub in mods else _deepest(target, mods)
                if found:
                    deps.add(found)
        deps.discard(name)
        g[name] = deps
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[str]:
    """Every edge that does not point down the rank table (within one package is allowed)."""
    bad = []
    for m, deps in g.items():
        for d in deps:
            a, b = package(m), package(d)
            if a != b and RANKS[b] >= RANKS[a]:
                bad.append(f"{m} -> {d}")
    return sorted(bad)


def test_every_package_has_a_rank():
    assert {package(m) for m in modules()} == set(RANKS)


def test_no_import_points_up():
    assert upward(graph()) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_only_recipes_and_the_command_line_import_the_zoo():
    g = graph()
    bad = {m: sorted(d for d in deps if package(d) in ZOO) for m, deps in g.items() if package(m) not in ZOO_USERS}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path):
    g = graph()
    assert "reftx.eval.generate" in g["reftx.eval.task"]  # Task.evaluate's default imports it inside the method
    assert "reftx.tasks.tofu_metrics" in g["reftx.tasks.tofu"]
    assert {"reftx.recipes.train", "reftx.integrations.peft"} <= g["reftx.recipes.tofu_stage1"]  # inside functions
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from reftx.cli import main\n")
    assert [n.module for n in _imports(tree) if isinstance(n, ast.ImportFrom)] == ["typing", "reftx.cli"]


def test_the_rank_check_finds_upward_and_sideways_edges():
    g = {"reftx.engine.model": {"reftx.train.loss", "reftx.core.errors"}, "reftx.parts.compose": {"reftx.data.encoding"},
         "reftx.train.loss": {"reftx.train.loop"}}
    assert upward(g) == ["reftx.engine.model -> reftx.train.loss", "reftx.parts.compose -> reftx.data.encoding"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def project_classes() -> list[type]:
    """Every class defined in a reftx module (core, zoo, recipes), after importing them all."""
    import importlib
    import inspect

    found = []
    for name in sorted(graph()):
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        found += [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == name]
    return found


def chain(cls: type) -> list[str]:
    return [c.__qualname__ for c in cls.__mro__ if c.__module__.startswith("reftx")]


def test_no_project_class_chain_is_deeper_than_two():
    """Composition over inheritance: a class and at most one project class above it (e.g. a
    primitive's config extends SubspaceConfig; a custom primitive extends Intervention). The error
    taxonomy is exempt: ``except NonFiniteLoss`` must also catch ``Diverged``."""
    classes = [c for c in project_classes() if not issubclass(c, BaseException)]
    assert len(classes) > 50  # the walk did find the project's classes
    deep = {c.__qualname__: chain(c) for c in classes if len(chain(c)) > 2}
    assert deep == {}


def test_chain_depth_counts_project_classes_only():
    class A: ...
    class B(A): ...
    A.__module__ = B.__module__ = "reftx.fake"
    assert chain(B) == ["test_chain_depth_counts_project_classes_only.<locals>.B",
                        "test_chain_depth_counts_project_classes_only.<locals>.A"]


def test_files_and_functions_stay_short():
    """Measures of the architecture issue: no file over 400 lines, no function over 60."""
    long_files, long_functions = {}, {}
    for path in sorted(modules().values()):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_files[path.name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long_files == {} and long_functions == {}

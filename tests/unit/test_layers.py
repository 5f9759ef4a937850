"""The layers point one way: no import circles, and the core never imports the zoo.

Checked on the source with ``ast`` (every import, also inside functions, except those under
``if TYPE_CHECKING:``), so a lazy import cannot hide a circle."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"reftx": "reftx", "reftx.recipes": "reftx/recipes", "reftx.methods": "methods", "reftx.tasks": "tasks"}
ZOO = ("reftx.methods", "reftx.tasks")
# recipes and front ends may use a task's metric functions; nothing below them may import the zoo
RECIPES = {"reftx.cli", "reftx.runner", "reftx.edit_run", "reftx.editing", "reftx.plugins", "reftx.docgen"}
RECIPE_PACKAGES = ("reftx.recipes",)  # every module of reftx/recipes/ is a recipe
# a task turns data and predictions into metrics: it never trains, loads a model or drives a run
ABOVE_TASKS = {"reftx.runner", "reftx.lora", "reftx.hub", "reftx.edit_run", "reftx.editing", "reftx.cli"}
# the old spelling `python -m reftx.tasks tofu-finetune` says the command moved and runs `reftx tofu-finetune`
TASK_ALIASES = {"reftx.tasks.__main__": {"reftx.cli"}}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted((REPO / folder).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def graph() -> dict[str, set[str]]:
    mods = modules()
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
                continue
            if node.level:
                base = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods}
            deps |= subs
            if len(subs) < len(node.names) and target in mods:
                deps.add(target)
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
        for w in g[v]:
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


def test_the_graph_sees_lazy_imports():
    g = graph()
    assert "reftx.evaluate" in g["reftx.task"]  # Task.evaluate's default imports it inside the method
    assert "reftx.tasks.tofu_metrics" in g["reftx.tasks.tofu"]


def test_no_import_circles():
    assert cycles(graph()) == []


def is_recipe(module: str) -> bool:
    return module in RECIPES or module.startswith(RECIPE_PACKAGES)


def test_core_never_imports_the_zoo():
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith(ZOO)) for m, deps in g.items()
           if m.startswith("reftx") and not m.startswith(ZOO) and not is_recipe(m)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_tasks_never_load_models_or_drive_runs():
    """No module of tasks/ imports the run driver, LoRA, the hub, the editing engine, the recipes or
    the command line (at module level or inside a function), except the documented alias."""
    g = graph()
    bad = {}
    for m, deps in g.items():
        if m.startswith("reftx.tasks"):
            above = {d for d in deps if d in ABOVE_TASKS or d.startswith(RECIPE_PACKAGES)}
            if above - TASK_ALIASES.get(m, set()):
                bad[m] = sorted(above - TASK_ALIASES.get(m, set()))
    assert bad == {}


def test_the_graph_sees_recipes_and_the_alias():
    g = graph()
    assert {"reftx.runner", "reftx.lora"} <= g["reftx.recipes.tofu_stage1"]  # inside functions
    assert g["reftx.tasks.__main__"] == {"reftx.cli"}
    assert "reftx.recipes.tofu_stage1" in g["reftx.cli"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def project_classes() -> list[type]:
    """Every class defined in a reftx module (core, zoo, recipes), after importing them all."""
    import importlib
    import inspect

    found = []
    for name in sorted(graph()):
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

"""The shape of lib/: no import cycles, no print (issue 8), no private name imported from another
module and no re-export facades (issue 16).

Static checks on the source (ast, nothing imported), so they are fast and name every offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lib_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imported_lib_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Every lib module `path` imports, at module level or inside a function.

    `from lib.x import y` counts as an import of lib.x.y when that is a module, else of lib.x;
    relative imports are resolved against the importing module's package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = lib_modules()
    known = set(modules)
    return {name: imported_lib_modules(path, name, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def package_parents(name: str) -> set[str]:
    """Importing lib.a.b runs lib/__init__ and lib/a/__init__ first: not a cycle of the code."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_cycle_finder_sees_a_cycle_and_ignores_a_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_sees_function_level_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from lib import registry\n"
        "from lib.pipeline.training import evaluate\n"
        "def f():\n"
        "    import lib.watch.monitoring\n"
    )
    known = {"lib.registry", "lib.pipeline.training", "lib.watch.monitoring", "lib.pipeline"}
    found = imported_lib_modules(source, "lib.x", known)
    assert found == {"lib.registry", "lib.pipeline.training", "lib.watch.monitoring"}


def test_no_import_cycles_among_lib_modules() -> None:
    graph = import_graph()
    # an __init__ importing its own sub-modules is how packages work, not a cycle between them
    graph = {name: deps - package_parents(name) for name, deps in graph.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in lib/ (each line: modules importing each other):\n" + (
        "\n".join("  " + " <-> ".join(c) for c in cycles)
    )


# The layers of lib, lowest first: a package may import its own layer and those below, never one
# above, lazily (inside a function) or not. `if TYPE_CHECKING:` imports count too.
LAYERS = (
    # base: the settings layer (lib.settings, lib.config, lib.config_sections, lib.score_table)
    # and the shared helpers (lib.errors, lib.values, lib.registry, ...)
    "lib",
    "lib.pipeline",  # data, features, training, scoring, contracts: what a stage computes
    "lib.watch",  # drift and health checks, notifications, the report index
    "lib.serving",  # the model service and its prediction store
    "lib.delivery",  # canary rollouts, promotion, rollback: drives the service
    # the composers, which tie every package together: the stage back-ends of the notebooks,
    # the run of the stages in order, and the operator commands
    "composers",
)
COMPOSERS = ("lib.pipeline.stages", "lib.pipeline.orchestrator", "lib.commands", "lib.demo")


def layer_of(module: str) -> str:
    """The node of the package graph a module belongs to (one of LAYERS)."""
    if any(module == c or module.startswith(c + ".") for c in COMPOSERS):
        return "composers"
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"lib.{parts[1]}" in LAYERS else "lib"


def package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(importer's layer, imported layer) -> the module imports behind that edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name, deps in graph.items():
        for dep in deps:
            pair = (layer_of(name), layer_of(dep))
            if pair[0] != pair[1]:
                edges.setdefault(pair, []).append(f"{name} -> {dep}")
    return edges


def test_layer_of_groups_modules_into_packages() -> None:
    assert layer_of("lib.config") == layer_of("lib.settings") == layer_of("lib") == "lib"
    assert layer_of("lib.pipeline.features") == "lib.pipeline"
    assert layer_of("lib.pipeline.stages.monitor") == layer_of("lib.commands") == "composers"
    assert package_edges({"lib.config": {"lib.watch.drift", "lib.errors"}}) == {
        ("lib", "lib.watch"): ["lib.config -> lib.watch.drift"]
    }


def test_packages_import_only_lower_layers_and_have_no_cycle() -> None:
    """Every import in lib, at module level, inside functions or under TYPE_CHECKING, goes from
    a layer to one below it (LAYERS, lowest first), so the package graph has no cycle: the
    settings layer imports no package, and no two packages import each other even lazily."""
    edges = package_edges(import_graph())
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    assert not find_cycles(graph), f"package cycles: {find_cycles(graph)}"
    upward = {
        pair: found
        for pair, found in edges.items()
        if LAYERS.index(pair[1]) > LAYERS.index(pair[0])
    }
    assert not upward, (
        "imports of a higher layer (order: "
        + " < ".join(LAYERS)
        + "):\n"
        + (
            "\n".join(
                f"  {a} -> {b}: {', '.join(sorted(found))}" for (a, b), found in upward.items()
            )
        )
    )


def print_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]


def test_print_finder_sees_a_print(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("import logging\n\ndef f():\n    print('x')\n    logging.info('y')\n")
    assert print_calls(source) == [4]


def test_lib_has_no_print_calls() -> None:
    offenders = [
        f"  {path.relative_to(LIB.parent)}:{line}"
        for path in sorted(LIB.rglob("*.py"))
        for line in print_calls(path)
    ]
    assert not offenders, "print( in lib/ (use logging):\n" + "\n".join(offenders)


MAX_FUNCTION_LINES = 80
# Functions longer than that (none now): this list may only shrink (a shortened function leaves it,
# a new long function never joins it). A function, not a module, is what must fit on a screen.
LONG_FUNCTIONS: set[str] = set()


def long_functions() -> dict[str, int]:
    found = {}
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(LIB.parent).as_posix()}:{node.name}"] = n
    return found


def test_functions_fit_on_a_screen_and_the_allow_list_only_shrinks() -> None:
    found = long_functions()
    new = {name: n for name, n in found.items() if name not in LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (shorten them): {new}"
    gone = sorted(LONG_FUNCTIONS - found.keys())
    assert not gone, f"no longer over {MAX_FUNCTION_LINES} lines: remove from LONG_FUNCTIONS {gone}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path, known: set[str]) -> list[str]:
    """Another lib module's private name used as if it were its interface: `from lib.x import _y`,
    or `x._y` where `x` is a lib module (`known`) this file imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> lib module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lib":
            for alias in node.names:
                if is_private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                elif f"{node.module}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            modules.update({a.asname: a.name for a in node.names if a.asname and a.name in known})
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and is_private(node.attr)
        ):
            found.append(f"{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


def reexports(path: Path) -> list[str]:
    """Names in `__all__` that the module imports from another lib module instead of defining."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported = {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lib"
        for alias in node.names
    }
    listed: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            elements = getattr(node.value, "elts", [])
            listed += [e.value for e in elements if isinstance(e, ast.Constant)]
    return [f"{name} (from {imported[name]})" for name in listed if name in imported]


def test_private_and_reexport_finders_see_offenders(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from lib.serving.encoders import _Unsupported, __version__, Columns\n"
        "from lib.watch.drift import psi\n"
        "from lib.delivery import progressive\n"
        "def own(): return progressive._staging(), progressive.__name__\n"
        '__all__ = ["psi", "own"]\n'
    )
    known = {"lib.serving.encoders", "lib.watch.drift", "lib.delivery.progressive"}
    assert private_imports(source, known) == [
        "1: from lib.serving.encoders import _Unsupported",
        "4: lib.delivery.progressive._staging",
    ]
    assert reexports(source) == ["psi (from lib.watch.drift)"]


def test_no_lib_module_imports_a_private_name_of_another() -> None:
    known = set(lib_modules())
    offenders = [
        f"  {path.relative_to(LIB.parent)}:{found}"
        for path in sorted(LIB.rglob("*.py"))
        for found in private_imports(path, known)
    ]
    assert not offenders, (
        "private names imported across lib modules (merge the modules if they are one concern, "
        "else make the name public):\n" + "\n".join(offenders)
    )


def test_no_lib_module_reexports_what_it_imports() -> None:
    offenders = [
        f"  {path.relative_to(LIB.parent)}: {found}"
        for path in sorted(LIB.rglob("*.py"))
        for found in reexports(path)
    ]
    assert not offenders, (
        "__all__ re-exports names defined elsewhere (callers import them from where they are "
        "defined):\n" + "\n".join(offenders)
    )


TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> list[str]:
    """The test modules (tests/test_*.py) that `path` imports, at any level: a test module is
    collected and run on its own (and under xdist on any worker), so what two test modules
    share belongs in tests/conftest.py (fixtures) or tests/support/ (helpers)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            names = (
                [base] if base.startswith("tests.") else [f"{base}.{a.name}" for a in node.names]
            )
        else:
            continue
        found += [n for n in names if n.startswith("tests.test_")]
    return sorted(set(found))


def test_test_module_import_finder_sees_both_forms(tmp_path: Path) -> None:
    source = tmp_path / "test_x.py"
    source.write_text(
        "from tests import test_serving\nfrom tests.support.serving import MODEL\n"
        "def f():\n    from tests.test_deploy_e2e import World\n"
    )
    assert imported_test_modules(source) == ["tests.test_deploy_e2e", "tests.test_serving"]


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"  {path.relative_to(TESTS.parent)}: {', '.join(found)}"
        for path in sorted(TESTS.rglob("*.py"))
        if (found := imported_test_modules(path))
    ]
    assert not offenders, (
        "test modules importing other test modules (move what they share to tests/conftest.py "
        "or tests/support/):\n" + "\n".join(offenders)
    )

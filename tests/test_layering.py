"""The package's architecture as rules over its imports: layers only look down, and no module
imports itself back through others.

The graph is read from the source (ast), so every import counts: at module level, inside
functions (the lazy ones), relative or absolute. `from a import b` is an import of the module
`a.b` when there is one, else of `a`. Importing a submodule is not counted as importing its
parent package's `__init__`, which Python runs first but which is not what the importer asked for.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bioxlstm"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of `package` (a package is its `__init__.py`)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    files = module_files(package)
    root = package.name
    graph = {}
    for module, path in files.items():
        # The package a relative import starts from: the module's own for an `__init__.py`.
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                imported.update(
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source for alias in node.names
                )
        graph[module] = {name for name in imported if name.split(".")[0] == root and name in files and name != module}
    return graph


def within(module: str, area: str) -> bool:
    """Whether `module` is `area` itself or one of its submodules."""
    return module == area or module.startswith(area + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by a depth-first search, each as its modules in import order with the
    first repeated at the end: at least one through every group of modules that import one another."""
    found, finished = [], set()

    def visit(path: list[str]) -> None:
        for target in sorted(graph[path[-1]]):
            if target in path:  # an edge back into the path closes a cycle
                cycle = path[path.index(target) :] + [target]
                if not any(set(cycle) == set(known) for known in found):
                    found.append(cycle)
            elif target not in finished:
                visit([*path, target])
        finished.add(path[-1])

    for start in sorted(graph):
        if start not in finished:
            visit([start])
    return found


def imports(graph: dict[str, set[str]], importers, imported) -> list[str]:
    """`a imports b` for every edge of `graph` from a module `a` for which `importers(a)` holds to a
    module `b` for which `imported(b)` holds."""
    return [f"{a} imports {b}" for a in sorted(graph) if importers(a) for b in sorted(graph[a]) if imported(b)]


def in_any(*areas: str):
    """Whether a module is within one of `areas`."""
    return lambda module: any(within(module, area) for area in areas)


GRAPH = import_graph(PACKAGE)


def test_the_graph_sees_relative_function_level_and_submodule_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .sub import leaf\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text("def later():\n    from .. import top\n    import pkg.sub\n")
    (package / "top.py").write_text("import json\nfrom pkg.sub.leaf import later\n")
    assert import_graph(package) == {
        "pkg": {"pkg.sub.leaf"}, "pkg.sub": set(), "pkg.sub.leaf": {"pkg.top", "pkg.sub"}, "pkg.top": {"pkg.sub.leaf"},
    }  # fmt: skip
    assert cycles(import_graph(package)) == [["pkg.sub.leaf", "pkg.top", "pkg.sub.leaf"]]


def test_the_graph_covers_the_whole_package():
    assert {"bioxlstm", "bioxlstm.cli", "bioxlstm.tasks.likelihood", "bioxlstm.training.runs"} <= set(GRAPH)
    # A lazy import inside a function, and a relative import of a package's submodule.
    assert "bioxlstm.tasks.protein" in GRAPH["bioxlstm.commands.inpaint"]
    assert "bioxlstm.commands.score" in GRAPH["bioxlstm.cli"]


def test_no_module_imports_itself_back_through_others():
    found = [" -> ".join(cycle) for cycle in cycles(GRAPH)]
    assert not found, "import cycles (each module imports the next):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "importers, forbidden",
    [
        # The jobs the command line runs use trained models; training may use them, not the reverse.
        (["bioxlstm.tasks"], ["bioxlstm.training", "bioxlstm.commands"]),
        # Scoring and sampling need no training-data code (and so none of its dependencies).
        (["bioxlstm.tasks.likelihood", "bioxlstm.tasks.running", "bioxlstm.tasks.sampling"], ["bioxlstm.data"]),
        # Reading and writing files needs no tokenizer and no model.
        (["bioxlstm.io"], ["bioxlstm.tokenization", "bioxlstm.models"]),
    ],
)
def test_a_layer_never_imports_the_layers_above_it(importers, forbidden):
    found = imports(GRAPH, in_any(*importers), in_any(*forbidden))
    assert not found, "\n".join(found)


def test_only_the_command_line_imports_commands():
    command_line = in_any("bioxlstm.commands", "bioxlstm.cli")
    found = imports(GRAPH, lambda module: not command_line(module), command_line)
    assert not found, "\n".join(found)


def test_converters_import_only_the_model_package_and_what_describes_its_inputs():
    # Not the tasks, training, data, export or the package facade: a converter must keep working
    # while those change, and importing them would make a converted checkpoint depend on them. The
    # converters are the modules of `bioxlstm.convert`; the package itself is where a converted model
    # meets `export`, which writes it as a model directory.
    allowed = in_any("bioxlstm.convert", "bioxlstm.models", "bioxlstm.domains", "bioxlstm.tokenization", "bioxlstm.io")
    converters = lambda module: module.startswith("bioxlstm.convert.")  # noqa: E731
    found = imports(GRAPH, converters, lambda module: not allowed(module))
    assert not found, "\n".join(found)


def test_the_model_package_imports_nothing_else_of_the_package():
    found = imports(GRAPH, in_any("bioxlstm.models"), lambda module: not within(module, "bioxlstm.models"))
    assert not found, "\n".join(found)

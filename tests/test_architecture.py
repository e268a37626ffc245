"""The layout rules of docs/architecture.md, read from the source with ``ast`` (nothing is
imported): no import cycle between the project's modules, no function over 80 lines outside
the tests and benchmarks, and the core package ``hetclass`` imports no front end.

Every import counts, including those inside functions (a lazy import hides a cycle, it does
not remove it); imports under ``if TYPE_CHECKING:`` do not, since they never run.
"""

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# folder -> the package name it installs as (pyproject.toml [tool.setuptools] package-dir)
PACKAGES = {"hetclass": "hetclass", "standalone": "hetclass_standalone",
            "relion_external": "hetclass_relion", "scipion_hetclass": "scipion_hetclass"}
FRONT_ENDS = ("hetclass_standalone", "hetclass_relion", "scipion_hetclass")
MAX_FUNCTION_LINES = 80

# Temporary (issue 15): rewritten on other branches; remove these entries when merged.


def _source_files(root: str = ROOT, packages: Dict[str, str] = PACKAGES) -> Iterator[Tuple[str, str]]:
    """``(path relative to root, dotted module name)`` of every module of ``packages``."""
    for folder, package in packages.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                parts = rel[:-3].split(os.sep)
                parts[0] = package
                if parts[-1] == "__init__":
                    parts.pop()
                yield rel, ".".join(parts)


def _parse(rel: str, root: str = ROOT) -> ast.Module:
    with open(os.path.join(root, rel), encoding="utf-8") as fh:
        return ast.parse(fh.read(), filename=rel)


def _type_checking_nodes(tree: ast.Module) -> Set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imported(module: str, is_package: bool, tree: ast.Module, known: Set[str]) -> Set[str]:
    """The project modules ``module`` imports (absolute names, within ``known``)."""
    package = module if is_package else module.rpartition(".")[0]
    skip = _type_checking_nodes(tree)
    out: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import name``: the submodule pkg.name when there is one, else pkg
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:      # ``import a.b.c`` of a non-module c
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


def import_graph(root: str = ROOT, packages: Dict[str, str] = PACKAGES) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports."""
    files = list(_source_files(root, packages))
    known = {module for _, module in files}
    return {module: _imported(module, rel.endswith("__init__.py"), _parse(rel, root), known)
            for rel, module in files}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _functions(node: ast.AST, prefix: str = "") -> Iterator[Tuple[str, int]]:
    """``(qualified name, lines from the def line to the last line)`` of every function in
    ``node``, nested ones and methods included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child.end_lineno - child.lineno + 1
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def long_functions() -> List[str]:
    """``path:qualified name (n lines)`` of every function over MAX_FUNCTION_LINES lines
    (``def`` line to last line, decorators excluded) outside tests and benchmarks."""
    return [f"{rel.replace(os.sep, '/')}:{name} ({n_lines} lines)"
            for rel, _ in _source_files() if "tests" not in rel.split(os.sep)
            for name, n_lines in _functions(_parse(rel)) if n_lines > MAX_FUNCTION_LINES]


def test_the_graph_sees_every_kind_of_import(tmp_path):
    files = {
        "src/__init__.py": "",
        "src/a.py": "from . import b\nfrom .sub.c import f\nimport os\n",
        "src/b.py": "def g():\n    from .sub import c   # lazy: still an edge\n",
        "src/sub/__init__.py": "from .c import f\n",
        "src/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n"
                        "import pkg.b as b\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(str(tmp_path), {"src": "pkg"})
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b", "pkg.sub.c"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.b"}}
    assert cycles(graph) == [["pkg.b", "pkg.sub.c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # and on the project itself
    project = import_graph()
    assert {"hetclass.preprocess", "hetclass.seeds"} <= project["hetclass.engine"]


def test_long_functions_are_found(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(f"class C:\n    def ok(self):\n        pass\n\n\n"
                                           f"def long():\n{body}")
    found = [(name, n) for name, n in _functions(_parse("src/m.py", str(tmp_path)))]
    assert found == [("C.ok", 2), ("long", 81)]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_core_imports_no_front_end():
    bad = [f"{module} imports {target}" for module, targets in import_graph().items()
           if module.split(".")[0] == "hetclass" for target in targets
           if target.split(".")[0] in FRONT_ENDS]
    assert bad == []


def test_no_function_over_80_lines():
    assert long_functions() == []

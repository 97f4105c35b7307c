"""The package's structure, read from its imports (ast, every import statement, function-level ones too):

    cli, api -> stages -> science -> config -> engine -> leaves

leaves = fastroar.errors, keys, method, references, cpu (and the root package, for __version__);
science = datasets, models, attribution, training, metrics (training builds on the config's Recipe and
Adversary, DESIGN.md's layers). Nothing imports upward, and there is no import circle between modules or
between packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastroar"
SCIENCE = ("datasets", "models", "attribution", "training", "metrics")
LEAVES = ("errors", "keys", "method", "references", "cpu")


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a fastroar module: a module may import lower ranks and its own group."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in ("", *LEAVES):
        return 0, "leaves"
    if top == "engine":
        return 1, "engine"
    if top == "config":
        return 2, "config"
    if top in SCIENCE:
        return 3, "science"
    if top == "stages":
        return 4, "stages"
    if top == "cli":
        return 5, "cli"
    if top == "api":  # the Python API: at the cli's level, over the stages
        return 5, "api"
    raise AssertionError(f"{module}: not in any layer; add its package to tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The fastroar modules a file imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n == "fastroar" or n.startswith("fastroar.")}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {i for i in imports(p, known) if i != m and i != "fastroar._C"} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_runs_against_the_layers():
    wrong = []
    for m, targets in graph().items():
        rank, group = layer(m)
        for t in targets:
            if t == "fastroar":  # the root package: __version__ only (its API re-exports are lazy)
                continue
            t_rank, t_group = layer(t)
            if t_rank > rank or (t_rank == rank and t_group != group):
                wrong.append(f"{m} ({group}) imports {t} ({t_group})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles_between_modules_or_packages():
    g = graph()
    assert cycles(g) == []
    packages: dict[str, set[str]] = {}
    for m, targets in g.items():
        packages.setdefault(package_of(m), set()).update(package_of(t) for t in targets
                                                         if package_of(t) != package_of(m))
    assert cycles(packages) == []


def test_init_files_only_re_export():
    """__init__.py holds imports, __all__, a docstring, and at most a lazy __getattr__ (the root package)."""
    for path in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
                isinstance(node, (ast.Assign, ast.AnnAssign)))
            ok = ok or (isinstance(node, ast.FunctionDef) and node.name == "__getattr__")
            assert ok, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} defines {type(node).__name__}"


@pytest.mark.parametrize("bad", [
    ("fastroar.engine.store", "fastroar.stages.artifacts"),   # upward
    ("fastroar.config.load", "fastroar.datasets"),            # config -> science
])
def test_the_layer_rule_catches_violations(bad):
    """The checker itself can fail: an upward import and a config -> science import are flagged."""
    m, t = bad
    rank, group = layer(m)
    t_rank, t_group = layer(t)
    assert t_rank > rank or (t_rank == rank and t_group != group)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

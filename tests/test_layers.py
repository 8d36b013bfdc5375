"""The package's layers only point down (docs/architecture.md), with no cycles and no private imports.

Every module of ``balancedness`` is parsed (``ast``, nothing is imported) and each ``import``/``from``
of a ``balancedness`` module, at module level or inside a function, is an edge. A module's layer is
decided by its path:

    0 basics       balancedness/{__init__,metrics,schedules,io,validation,methods}.py
    1 simulators   balancedness/sims/                 | torch library  balancedness/optim/
    2 consumers    balancedness/checks/, figures/     | application    balancedness/finetune/
    3 entry points balancedness/demo/, commands/, cli.py, __main__.py

An edge may go to a lower layer, or stay inside its own unit (``sims`` → ``sims``); units of one layer
never import each other (sims ↮ optim; checks ↮ figures ↮ finetune), with one named exception
(:data:`READABLE`): ``figures`` reads run folders through the application's torch-free run record module.
Names starting with ``_`` are never imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "balancedness"

UNITS = {  # top-level name under balancedness/ -> (layer, unit)
    "__init__": (0, "basics"),
    "metrics": (0, "basics"),
    "schedules": (0, "basics"),
    "io": (0, "basics"),
    "validation": (0, "basics"),
    "methods": (0, "basics"),
    "sims": (1, "sims"),
    "optim": (1, "optim"),
    "checks": (2, "checks"),
    "figures": (2, "figures"),
    "finetune": (2, "finetune"),
    "demo": (3, "demo"),
    "commands": (3, "commands"),
    "cli": (3, "commands"),
    "__main__": (3, "commands"),
}


#: (importing unit, module it may import across its layer): the run record and run folder types, light enough
#: for figures (standard library and layer 0 only: ``test_the_run_record_module_is_light`` holds it to that).
READABLE = {("figures", "balancedness.finetune.record")}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> tuple[int, str]:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in UNITS:
        raise AssertionError(
            f"module {module} is in no layer: add its top-level name to UNITS and to docs/architecture.md"
        )
    return UNITS[key]


def _edges(package: Path = PACKAGE):
    """(importer, imported module, imported names, line) for every balancedness import."""
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "balancedness":
                        yield module, alias.name, [], node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "balancedness":
                    yield module, target, [a.name for a in node.names], node.lineno


EDGES = list(_edges())


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _unit(_module_name(path))


def _upward(edges) -> list[str]:
    bad = []
    for importer, target, _names, line in edges:
        (low, unit), (high, target_unit) = _unit(importer), _unit(target)
        if target_unit == unit or high < low or (unit, target) in READABLE:
            continue
        bad.append(f"{importer}:{line} imports {target} ({target_unit}, layer {high}) from {unit} (layer {low})")
    return bad


def _private(edges) -> list[str]:
    return [
        f"{importer}:{line} imports {name} from {target}"
        for importer, target, names, line in edges
        for name in names
        if name.startswith("_") and name != "__version__" and target != importer
    ]


def test_imports_only_point_down():
    bad = _upward(EDGES)
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_private_names_cross_modules():
    bad = _private(EDGES)
    assert not bad, "private names imported across modules (promote them or move the code):\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, target, names, _line in EDGES:
        for name in names or [""]:  # `from pkg import module` points at the submodule
            full = f"{target}.{name}" if name and f"{target}.{name}" in modules else target
            if full in modules and full != importer and not importer.startswith(full + "."):
                graph[importer].add(full)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_violations(tmp_path):
    """The rules can fail: a fake package with an upward, a sideways and a private import is reported."""
    pkg = tmp_path / "balancedness"
    (pkg / "sims").mkdir(parents=True)
    (pkg / "figures").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "metrics.py").write_text("def f():\n    from balancedness.sims.core import g\n")
    (pkg / "sims" / "__init__.py").write_text("from .core import g\n")
    (pkg / "sims" / "core.py").write_text("from balancedness.optim import SAM\nfrom ..metrics import _h\n")
    (pkg / "figures" / "__init__.py").write_text("from balancedness.sims import g\n")
    edges = list(_edges(pkg))
    up = _upward(edges)
    assert any("balancedness.metrics" in e and "sims.core" in e for e in up), up  # upward, inside a function
    assert any("balancedness.sims.core" in e and "optim" in e for e in up), up  # sideways, same layer
    assert not any(e.startswith("balancedness.figures") for e in up), up  # down is fine
    assert _private(edges) == ["balancedness.sims.core:2 imports _h from balancedness.metrics"]


def test_the_run_record_module_is_light():
    """What figures may import from the application loads neither torch, transformers nor peft, and imports
    from balancedness only layer 0 and the lazy ``balancedness.optim`` package (which loads nothing)."""
    import subprocess
    import sys

    for _unit_name, module in READABLE:
        own = {target for importer, target, _n, _l in EDGES if importer == module}
        assert own <= {"balancedness.io", "balancedness.optim"}, own
        code = (
            f"import sys, {module}; heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
            "assert not heavy, heavy"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=PACKAGE.parent,
            env={**__import__("os").environ, "PYTHONPATH": str(PACKAGE.parent)},
        )
        assert proc.returncode == 0, proc.stderr

"""The package's architecture, read from its own source: every import runs downward through
the layers, there is no import cycle, the coding maths knows no framework, and modules and
functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "agc_pipeline"

#: the layers, lowest first; a module may import its own package and anything below its layer
LAYERS: list[tuple[str, ...]] = [
    ("agc_pipeline", "agc_pipeline.errors"),                         # the ground
    ("agc_pipeline.validation", "agc_pipeline.conf_path"),
    ("agc_pipeline.coding",),                                       # the paper's maths
    ("agc_pipeline.codes", "agc_pipeline.data", "agc_pipeline.models"),
    ("agc_pipeline.analysis",),                                     # Monte Carlo engine
    ("agc_pipeline.cluster", "agc_pipeline.reporting"),             # cost model, records
    ("agc_pipeline.rules",),                                        # cross-component rules
    ("agc_pipeline.build",),                                        # the composition root
    ("agc_pipeline.training",),                                     # runtimes and the loop
    ("agc_pipeline.train", "agc_pipeline.analyze", "agc_pipeline.plan",
     "agc_pipeline.report", "agc_pipeline.repro"),                  # the apps
]
#: frameworks the coding maths must not know (paper Sections II–VI are pure linear algebra)
FRAMEWORKS = ("hydra", "omegaconf", "wandb", "torch.distributed")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: the unit is the most specific entry of LAYERS that
    contains it (a subpackage, or a single top-level module)."""
    best: tuple[int, str] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (index, name)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py: add it"
    return best


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The agc_pipeline modules ``path`` imports (anywhere in the file, or at its top level);
    ``from agc_pipeline.x import y`` counts as the module agc_pipeline.x.y where that is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agc_pipeline"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("agc_pipeline"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        unit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward(module: str) -> None:
    """A module imports only its own unit (package or module) and units of lower layers —
    also inside functions (a lazy import upward is still an upward dependency)."""
    layer, own = unit(module)
    upward = []
    for target in sorted(imports(MODULES[module])):
        target_layer, target_unit = unit(target)
        if target_unit != own and target_layer >= layer:
            upward.append(f"{target} (layer {target_layer}: {target_unit})")
    assert not upward, (f"{module} (layer {layer}: {own}) imports from its own layer or above: "
                        + ", ".join(upward))


def test_no_import_cycle() -> None:
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        graph.add_node(module)
        for target in imports(path, top_level_only=True):
            if target != module and target in MODULES and not module.startswith(target + "."):
                graph.add_edge(module, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:3]}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(
    ("agc_pipeline.coding", "agc_pipeline.codes"))))
def test_the_coding_maths_knows_no_framework(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    bad = sorted(u for u in used if u.startswith(FRAMEWORKS))
    assert not bad, f"{module} imports {bad}"


def test_modules_and_functions_stay_small() -> None:
    long_modules = {m: n for m, p in MODULES.items()
                    if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    long_functions = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name} ({length})")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a maths module importing a runtime is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from agc_pipeline.training.loop import fit\n")
    layer, own = unit("agc_pipeline.coding.decoding")
    targets = imports(bad)
    assert targets == {"agc_pipeline.training.loop"}
    assert unit("agc_pipeline.training.loop")[0] > layer

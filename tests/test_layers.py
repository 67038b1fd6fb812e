"""The house rule: no import cycles, nothing imports upward."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "squishednets"
# Lowest first; a module may import only modules before it.
LAYERS = ["errors", "io", "seeds", "config", "fetch", "executor", "genome", "model", "metrics", "checkpoint", "data", "rundir",
          "records", "ort", "train", "synthesis", "evolve", "export", "bench", "analysis", "predict", "report",
          "analyze", "explore", "compare", "pipeline", "cli"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_every_module_is_in_a_layer():
    assert sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)


def test_nothing_imports_upward():
    for i, name in enumerate(LAYERS):
        upward = _imports(SRC / f"{name}.py") - set(LAYERS[:i])
        assert not upward, f"{name} imports {sorted(upward)}, which sit above it"

"""The package's imports point down the pipeline: data -> models -> stage 1 -> feature store -> stage 2 ->
inference -> the commands and the API. A module that imports one later in the pipeline (also inside a function)
is a back edge and fails here, naming both modules and the line."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import chexfusion

PACKAGE = Path(chexfusion.__file__).parent

# Top-level module or sub-package of chexfusion -> its layer; a module may import its own layer or lower ones.
LAYERS = {
    "errors": 0, "io": 0, "progress": 0, "resources": 0, "name_lists": 0, "config": 0, "run_folder": 0,
    "model_card": 0, "hub": 0, "predictions": 0,
    "data": 1,
    "metrics": 2, "long_tail_losses": 2, "sampling": 2, "decision_metrics": 2, "resampling": 2, "delong": 2,
    "paired_bootstrap": 2, "student_t_mixture": 2, "calibration": 2, "report": 2, "text": 2, "models": 2, "losses": 2,
    "vlm": 2,
    "training": 3,
    "stage1": 4,
    "clip": 5,
    "feature_store": 5,
    "stage2": 6,
    "inference": 7,
    "api": 8,
    "explain": 8,
    "convert": 8, "submission": 8, "normal_gating": 8, "compare": 8, "compare_report": 8, "calibrate": 8,
    "export": 8, "ensemble": 8, "predict": 8, "evaluate": 8, "inspect": 8, "serve": 8, "ablate": 8, "loss_study": 8,
    "cli": 8,
    "__main__": 8,
}
TOP = max(LAYERS.values())


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The package facade (``chexfusion/__init__``) and every ``*.command`` module (the command line) sit on top."""
    parts = module.split(".")
    if len(parts) == 1 or parts[-1] == "command":
        return TOP
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: put '{parts[1]}' in a layer of tests/test_architecture.py")
    return LAYERS[parts[1]]


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported chexfusion module, line) for every import in the file, at any depth."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if target.count(".") == 0 else target for a in node.names]
            found.extend((t, node.lineno) for t in names if t.startswith("chexfusion"))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names if a.name.startswith("chexfusion"))
    return found


def back_edges() -> list[str]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target, line in imports(path):
            if target != "chexfusion" and layer(target) > layer(source):
                edges.append(f"{path.relative_to(PACKAGE.parent)}:{line} {source} imports {target}")
    return edges


def test_no_module_imports_one_later_in_the_pipeline():
    assert back_edges() == []


def test_the_check_sees_a_back_edge(tmp_path, monkeypatch):
    """The walk itself works: a function-level import of inference from stage 1 is reported."""
    fake = tmp_path / "chexfusion"
    (fake / "stage1").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "stage1" / "__init__.py").write_text("")
    (fake / "stage1" / "late.py").write_text("def f():\n    from ..inference import load_run\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert back_edges() == ["chexfusion/stage1/late.py:2 chexfusion.stage1.late imports chexfusion.inference"]


def top_level_names() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


def test_every_module_has_a_layer_and_a_place_in_the_readme_layout():
    """The layer map names what exists, and README's Layout section shows every top-level module and package, so
    neither drifts from the tree."""
    names = top_level_names()
    assert set(LAYERS) == names
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    shown = {name for name in names if f"{name}.py" in layout or f"{name}/" in layout}
    assert names - shown == set()

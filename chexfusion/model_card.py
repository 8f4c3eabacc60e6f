"""A run folder as a Hugging Face model repository: ``config.json`` and a ``README.md`` model card beside
``model.safetensors``.

Written when a run finishes (and by ``chexfusion export`` for older runs), so a
run folder can be pushed to the Hub as it is (``huggingface-cli upload``) and
loaded back with ``chexfusion.load("org/name")``. The card says what the model
was trained on, which classes it scores, its metrics next to their chance
levels, what it is for, and -- for a model trained on the built-in synthetic
data -- that its figures say nothing about real radiographs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .io import atomic_write_json, atomic_write_text

SYNTH_META = "synth_meta.json"  # what chexfusion synth writes next to its images


def trained_on_synthetic(config: dict) -> bool:
    root = (config.get("data") or {}).get("image_root")
    return bool(root) and (Path(root) / SYNTH_META).is_file()


def _metric_rows(metrics: dict) -> list[str]:
    rows = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if not m:
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| {split} | {fmt(m.get('mAP'))} | {fmt(m.get('chance_mAP'))} | {fmt(m.get('mAUROC'))} | "
                    f"{fmt(m.get('mECE'))} | {m.get('n_images', 'n/a')} |")
    return rows


def card_text(run_dir: Path, config: dict, info: dict, metrics: dict) -> str:
    kind = info["kind"]
    what = {"stage1": "image-level model (one image at a time; a study gets the max over its images)",
            "clip": "image-report contrastive model (CLIP-style; findings scored by positive / negative prompts, "
                    "a study gets the max over its images)"}.get(
        kind, "study-level fusion model (all images of a study together, over frozen stage-1 backbones)")
    data = config.get("data") or {}
    synthetic = trained_on_synthetic(config)
    lines = [
        "---", "library_name: chexfusion", "tags:", "- chest-x-ray", "- multi-label-classification",
        "- long-tail", *(["- synthetic-data"] if synthetic else []), "---", "",
        f"# {info.get('name', Path(run_dir).name)} (chexfusion {kind})", "",
        f"A CheXFusion-style {what}, scoring {len(info['classes'])} findings.", "",
    ]
    if synthetic:
        lines += ["> **Trained on chexfusion's built-in synthetic radiographs.** Its figures show that the pipeline "
                  "learns; they say nothing about real chest X-rays. Do not use it on patients.", ""]
    lines += [
        "## Use", "", "```python", "import chexfusion", "", 'model = chexfusion.load("path/or/hub-id")',
        'model.predict_study(["frontal.jpg", "lateral.jpg"], views=["frontal", "lateral"])', "```", "",
        "Intended use: research on long-tailed, multi-view chest X-ray classification (CXR-LT). Not a medical "
        "device; not validated for clinical use.", "",
        "## Training data", "",
        f"- training CSV: `{data.get('train_csv', 'n/a')}`; validation CSV: `{data.get('val_csv', 'n/a')}`",
        f"- classes: {', '.join(info['classes'])}", "",
        "## Metrics (image level; chance = mean prevalence of the scored classes)", "",
        "| split | mAP | chance mAP | mAUROC | mECE | images |", "|---|---|---|---|---|---|",
        *_metric_rows(metrics), "",
        "Files: `model.safetensors` (weights), `config.json` (the resolved config and run record), `config.yaml`, "
        "`run.json`" + (", `backbones/` (the stage-1 runs it sits on)" if kind == "stage2" else "") + ".", "",
    ]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> None:
    """``config.json`` and ``README.md`` for a finished run folder (run.json and metrics.json are read)."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    info = json.loads((run_dir / "run.json").read_text())
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    atomic_write_json(run_dir / "config.json", {"library_name": "chexfusion", "kind": info["kind"],
                                                "classes": info["classes"], "config": config})
    atomic_write_text(run_dir / "README.md", card_text(run_dir, config, info, metrics))

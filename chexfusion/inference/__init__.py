"""Run a trained model on raw images: the engine behind ``chexfusion predict``, the web demo and the Python API.

``load_run(path)`` rebuilds any run folder (the kind is read from its
``run.json``); ``load_predictor(path)`` wraps it as a predictor answering
``predict_study`` (one study) and ``predict_table`` (a CSV, streamed in study
order so memory holds one batch of studies whatever the size of the CSV).
"""

from __future__ import annotations

from pathlib import Path

from ..hub import resolve_run
from ..run_folder import run_kind
from .classes import NamedClasses, encode_class_names
from .clip import ClipPredictor
from .ensemble import EnsemblePredictor
from .predictor import PredictionResult, Predictor, StudyPrediction, TableOptions, scoring_order
from .stage1 import Stage1Predictor, aggregate_by_study
from .stage2 import Stage2Predictor

PREDICTORS = {"stage1": Stage1Predictor, "stage2": Stage2Predictor, "ensemble": EnsemblePredictor,
              "clip": ClipPredictor}


def load_run(run_dir: str | Path, map_location: str = "cpu"):
    """A stage-1, stage-2, ensemble or clip run rebuilt from its folder alone (checked before any model is built)."""
    kind = run_kind(run_dir)
    if kind == "clip":
        from ..clip.model import load_clip_run

        return load_clip_run(run_dir, map_location)
    if kind == "ensemble":
        from .ensemble import load_ensemble_run

        return load_ensemble_run(run_dir, map_location)
    if kind == "stage1":
        from ..stage1.model import load_stage1_run

        return load_stage1_run(run_dir, map_location)
    from ..stage2.model import load_stage2_run

    return load_stage2_run(run_dir, map_location)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_predictor(run_dir: str | Path, device: str | None = None, calibrated: bool = True,
                   allow_network: bool | None = None) -> Predictor:
    """A predictor for a stage-1, stage-2 or ensemble run folder, or a Hub id (``hub.resolve_run``);
    ``calibrated``: with its temperature scaling, if fitted."""
    run = load_run(resolve_run(run_dir, allow_network))
    return PREDICTORS[run.info["kind"]](run, device or default_device(), calibrated)


__all__ = ["load_run", "load_predictor", "encode_class_names", "NamedClasses", "Predictor", "Stage1Predictor",
           "Stage2Predictor", "EnsemblePredictor", "ClipPredictor", "PredictionResult", "StudyPrediction",
           "TableOptions", "aggregate_by_study", "scoring_order", "default_device"]

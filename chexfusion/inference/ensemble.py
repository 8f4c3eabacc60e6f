"""An ensemble run as a predictor: the mean of its members' probabilities (7 of the 9 top CXR-LT 2023 teams
ensembled).

An ensemble run folder (``chexfusion ensemble``) holds copies of its member runs under ``members/<i>/`` and, in
``run.json``, which members score each class: all of them (``combine: mean``), or the subset whose mean scored the
best validation AP for that class (``combine: per_class``). Each member predicts as it would alone (its own
preprocessing, view routing and calibration); the ensemble then averages and applies its own temperatures when
``chexfusion calibrate`` fitted some. It scores its members' classes only (no names zero-shot: the members may
not share a text encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..calibration import Calibration
from ..errors import UserError
from ..run_folder import RUN_INFO, read_run_info, run_kind
from .predictor import PredictionResult, Predictor, StudyPrediction, TableOptions

COMBINE = ("mean", "per_class")


@dataclass
class EnsembleRun:
    """A loaded ensemble folder: its checked run.json and its loaded member runs."""

    path: Path
    info: dict
    members: list

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def config(self):
        """The first member's config: where its data lies (``calibrate``'s defaults) and its label policy."""
        return self.members[0].config

    @property
    def train_prevalence(self) -> np.ndarray:
        return np.asarray(self.info["train_prevalence"], dtype=np.float64)


def load_ensemble_run(run_dir, map_location: str = "cpu") -> EnsembleRun:
    """An ensemble folder, checked (its run.json, the member list, each member folder and its classes) before any
    member model is built, then its members loaded."""
    from . import load_run

    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "ensemble")
    where = run_dir / RUN_INFO
    folders = [_member_folder(run_dir, entry, where) for entry in info["members"]]
    if not folders:
        raise UserError(f"{where}: key 'members' is empty: the run folder is damaged")
    check_combine(info, len(folders), where)
    for folder in folders:
        if run_kind(folder) not in ("stage1", "stage2"):
            raise UserError(f"{folder}: an ensemble member must be a stage-1 or stage-2 run")
        if read_run_info(folder)["classes"] != info["classes"]:
            raise UserError(f"{folder}: its classes are not the ensemble's ({where}): the run folder is damaged")
    return EnsembleRun(run_dir, info, [load_run(folder, map_location) for folder in folders])


def _member_folder(run_dir: Path, entry, where: Path) -> Path:
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or Path(path).is_absolute() or ".." in Path(path).parts:
        raise UserError(f"{where}: a member's 'path' must be a folder inside the run: the run folder is damaged")
    return run_dir / path


def check_combine(info: dict, n_members: int, where) -> None:
    """``combine`` is mean or per_class; per class, ``choice`` names a non-empty set of members for every class."""
    if info["combine"] not in COMBINE:
        raise UserError(f"{where}: key 'combine' must be one of {', '.join(COMBINE)}, got {info['combine']!r}")
    if info["combine"] == "mean":
        return
    choice = info.get("choice")
    for name in info["classes"]:
        members = choice.get(name) if isinstance(choice, dict) else None
        if not (isinstance(members, list) and members and all(
                isinstance(i, int) and 0 <= i < n_members for i in members)):
            raise UserError(f"{where}: key 'choice' has no valid member list for class '{name}': the run folder is "
                            f"damaged")


def member_weights(info: dict) -> np.ndarray:
    """``[M, K]``: each member's weight in each class's mean (1 / chosen members, 0 when not chosen)."""
    classes, n = info["classes"], len(info["members"])
    chosen = np.ones((n, len(classes)))
    if info["combine"] == "per_class":
        chosen = np.zeros((n, len(classes)))
        for k, name in enumerate(classes):
            chosen[info["choice"][name], k] = 1.0
    return chosen / chosen.sum(axis=0, keepdims=True)


def mean_maps(maps: list) -> np.ndarray | None:
    """The members' per-class attention maps ``[K, n, h, w]`` averaged, each resized to the first member's grid
    (None if any lacks them or they cover different images)."""
    if any(m is None for m in maps) or len({m.shape[:2] for m in maps}) > 1:
        return None
    size = maps[0].shape[-2:]
    resized = [torch.nn.functional.interpolate(torch.from_numpy(m), size=size, mode="bilinear", align_corners=False)
               if m.shape[-2:] != size else torch.from_numpy(m) for m in maps]
    return torch.stack(resized).mean(dim=0).numpy()


class EnsemblePredictor(Predictor):
    kind = "ensemble"
    aggregation = "ensemble"

    def __init__(self, run: EnsembleRun, device="cpu", calibrated: bool = True):
        from . import PREDICTORS

        self.run, self.device = run, torch.device(device)
        self.members = [PREDICTORS[m.info["kind"]](m, device, calibrated) for m in run.members]
        self.classes, self.train_prevalence = run.classes, run.train_prevalence
        self.preprocess = self.members[0].preprocess
        self.max_images = self.members[0].max_images
        self.weights = member_weights(run.info)
        self.calibration = Calibration.load(run.path, self.classes) if calibrated else None

    def named_classes(self, classes):
        if classes is None or list(getattr(classes, "names", classes)) == self.classes:
            return None
        raise UserError("an ensemble scores its members' classes only (drop --classes, or predict with a member)")

    def predict_study(self, images, views=None, classes=None, attention: bool = False,
                      tta=False) -> StudyPrediction:
        self.named_classes(classes)
        if any(isinstance(image, torch.Tensor) for image in images) and any(
                m.preprocess != self.preprocess for m in self.members):
            raise UserError("this ensemble's members preprocess images differently: give it image files, PIL images "
                            "or arrays, not model-input tensors")
        answers = [m.predict_study(images, views, attention=attention, tta=tta) for m in self.members]
        probs = (self.weights * np.stack([a.probabilities for a in answers])).sum(axis=0)
        first = answers[0]
        return StudyPrediction(self.classes, self.calibrate(probs[None], self.classes)[0], first.views, first.used,
                               self.aggregation, self._class_maps(answers) if attention else None)

    def _class_maps(self, answers: list[StudyPrediction]) -> np.ndarray | None:
        """Each member's attention as one map per class, averaged over members (a query per class, so
        :meth:`query_index` is the identity)."""
        return mean_maps([None if a.attention is None else a.attention[m.query_index()]
                          for m, a in zip(self.members, answers)])

    def query_index(self) -> np.ndarray:
        return np.arange(len(self.classes))

    def predict_table(self, table, image_root, options: TableOptions | None = None,
                      classes=None) -> PredictionResult:
        """Every member predicts the table; images some member could not read are left out (and counted)."""
        self.named_classes(classes)
        options = options or TableOptions()
        results = [m.predict_table(table, image_root, options) for m in self.members]
        rows = common_rows(results)
        probs = sum(w * r.probs[positions(r.rows, rows)] for w, r in zip(self.weights, results))
        skipped = sorted({row for r in results for row in r.skipped})
        return PredictionResult(rows, self.calibrate(probs, self.classes), skipped)


def common_rows(results: list[PredictionResult]) -> np.ndarray:
    """The table rows every member scored, in the first member's (study) order."""
    rows = results[0].rows
    for result in results[1:]:
        rows = rows[np.isin(rows, result.rows)]
    return rows


def positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of ``wanted`` sits in ``rows``."""
    index = {int(r): i for i, r in enumerate(rows)}
    return np.array([index[int(r)] for r in wanted], dtype=np.int64)

"""What every kind of run answers: ``predict_study`` (one study, any images) and ``predict_table`` (a CSV).

Both kinds (stage 1: each image scored alone, the study gets the max; stage 2:
the fusion model scores the study from all its images) share the parts that
must not differ between the command line, the web demo and the Python API:
image inputs, the order a study's images are scored in (frontal, lateral,
unknown; ties keep the given order, which the table path gives as ``dicom_id``
order), the class names scored, and the study's probabilities.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..calibration import Calibration, scale
from ..data.tta import parse_tta
from ..data.views import VIEW_INDEX
from .classes import NamedClasses, encode_class_names
from .inputs import study_inputs


@dataclass
class StudyPrediction:
    """One study's answer. ``probabilities[k]`` belongs to ``classes[k]``."""

    classes: list[str]
    probabilities: np.ndarray  # [K]
    views: list[str]  # per input image, the view it was scored as
    used: list[int]  # the input images scored, in scoring order (a stage-2 run scores at most max_images)
    aggregation: str  # fusion (stage 2) or max (stage 1: the max over its images)
    attention: np.ndarray | None = None  # [Q, len(used), h, w]: decoder attention per query and scored image

    def as_dict(self) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.classes, self.probabilities)}


@dataclass(frozen=True)
class TableOptions:
    """How a table is predicted (``chexfusion predict``'s options)."""

    batch_size: int = 32  # images per backbone batch (stage 2: also studies per fusion batch)
    tta: object = False  # test-time views (data/tta.py: "flip,scale:0.9", a list, True = flip), a tuple after init
    skip_bad_images: bool = False  # skip and count unreadable images instead of stopping
    aggregate: str | None = None  # stage 1: give each image its study's max / mean (None: per image)
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "tta", parse_tta(self.tta))


@dataclass
class PredictionResult:
    rows: np.ndarray  # table rows that got a prediction, in study order
    probs: np.ndarray  # [len(rows), K]
    skipped: list  # rows whose image could not be read (skip_bad_images)


def query_of_class(decoder, num_classes: int) -> np.ndarray:
    """Index of the decoder query whose attention belongs to each class (with learned group decoding,
    ``classes_per_group`` classes share one query and so one map)."""
    classes = np.arange(num_classes)
    if getattr(decoder, "num_groups", None) is None:  # one query per class (text queries, other heads)
        return classes
    return classes // decoder.classes_per_group


def scoring_order(views: list[str]) -> list[int]:
    """Frontal, then lateral, then unknown; ties keep the given order (the stage-2 canonical order)."""
    return sorted(range(len(views)), key=lambda i: VIEW_INDEX[views[i]])


class Predictor:
    """A loaded run on one device; subclasses score studies of their kind."""

    kind = ""
    aggregation = ""

    def __init__(self, run, device="cpu", calibrated: bool = True):
        """``calibrated``: apply the run's temperature scaling (``chexfusion calibrate``) when it has one."""
        self.run, self.device = run, torch.device(device)
        self.model = run.model.to(self.device).eval()
        self.classes, self.preprocess = list(run.classes), run.preprocess
        self.train_prevalence = run.train_prevalence
        self.max_images: int | None = None
        self.calibration = Calibration.load(run.path, self.classes) if calibrated else None

    def calibrate(self, probs: np.ndarray, names: list[str]) -> np.ndarray:
        """``probs`` (columns: ``names``) through the run's temperatures; unchanged for an uncalibrated run."""
        return probs if self.calibration is None else scale(probs, self.calibration.for_classes(names))

    def query_index(self) -> np.ndarray:
        """Per class of the run, the query of ``predict_study``'s attention maps that belongs to it."""
        return query_of_class(self.model.decoder, len(self.classes))

    def named_classes(self, classes) -> NamedClasses | None:
        """None for the run's own classes; else the names encoded for its decoder (text-query runs only)."""
        if classes is None or isinstance(classes, NamedClasses):
            return classes
        names = list(classes)
        return None if names == self.classes else encode_class_names(self.run, names)

    def scoring(self, named: NamedClasses | None):
        """A block in which the decoder scores ``named``'s classes (its own ones again after it)."""
        return nullcontext() if named is None else self.model.decoder.scoring(named.queries, named.trained_index)

    def predict_study(self, images, views=None, classes=None, attention: bool = False,
                      tta=False) -> StudyPrediction:
        """Score one study from its images (paths, PIL images, arrays or model-input tensors).

        ``views``: one of frontal / lateral / unknown per image, or None (DICOM headers, else unknown).
        ``classes``: names to score instead of the run's own (text-query runs; unseen names zero-shot).
        ``attention``: also return the decoder's attention over each scored image.
        ``tta``: test-time views averaged with the images (:func:`chexfusion.data.tta.parse_tta`; True = flip).
        """
        batch, views = study_inputs(images, views, self.preprocess)
        order = scoring_order(views)
        used = order[: self.max_images] if self.max_images else order
        named = self.named_classes(classes)
        with torch.inference_mode(), self.scoring(named):
            probs, maps = self.score_study(batch[used], [views[i] for i in used], attention, parse_tta(tta))
        names = self.classes if named is None else named.names
        probs = self.calibrate(probs.numpy().astype(np.float64), names)
        return StudyPrediction(names, probs, views, used, self.aggregation,
                               None if maps is None else maps.float().cpu().numpy())

    def score_study(self, images: torch.Tensor, views: list[str], attention: bool, tta: tuple):
        """(probabilities [K], attention [Q, n, h, w] or None) for one study's images in scoring order, averaged
        over the test-time views ``tta`` (attention: of the images themselves)."""
        raise NotImplementedError

    def predict_table(self, table, image_root, options: TableOptions = TableOptions(),
                      classes=None) -> PredictionResult:
        """Every image of a CXR-LT table (``data.cxr_lt.read_cxr_lt``), streamed in study order."""
        named = self.named_classes(classes)
        with self.scoring(named):
            result = self.score_table(table, image_root, options)
        result.probs = self.calibrate(result.probs, self.classes if named is None else named.names)
        return result

    def score_table(self, table, image_root, options: TableOptions) -> PredictionResult:
        raise NotImplementedError


def image_batches(table, image_root, pre, rows, batch_size, skip_bad_images, progress, desc="predict"):
    """The table's images (``rows``, in that order) in batches, with a progress bar."""
    from ..data.image_dataset import ImageDataset, collate_images
    from ..progress import tqdm

    dataset = ImageDataset(table, image_root, pre, None, skip_bad_images=skip_bad_images, rows=rows)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images)
    return tqdm(loader, desc=desc, unit="batch", disable=not progress)

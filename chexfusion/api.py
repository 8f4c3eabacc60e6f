"""The Python API: load any run folder and predict studies or CSVs, in a notebook or a script.

    import chexfusion
    model = chexfusion.load("stage2/runs/demo")
    p = model.predict_study(["a.jpg", "b.jpg"], views=["frontal", "lateral"])  # {class: probability}
    df = model.predict_csv("test.csv", image_root="data/demo")                 # the predictions CSV as a DataFrame

``chexfusion predict`` is this API plus writing the CSV, so both give the same
numbers. Everything is loaded from the run folder alone (safetensors weights,
nothing unpickled, nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .inference import Predictor, StudyPrediction, TableOptions, load_predictor


class Model:
    """A loaded stage-1 or stage-2 run. ``classes``: what it scores by default; ``kind``: stage1 or stage2."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def kind(self) -> str:
        return self.predictor.kind

    @property
    def calibrated(self) -> bool:
        """Whether probabilities go through the run's temperature scaling (``chexfusion calibrate``)."""
        return self.predictor.calibration is not None

    @property
    def path(self) -> Path:
        return Path(self.predictor.run.path)

    def __repr__(self) -> str:
        return f"chexfusion.Model({str(self.path)!r}, kind={self.kind}, {len(self.classes)} classes)"

    def predict_study(self, images, views=None, classes=None, tta=False) -> dict[str, float]:
        """``{class: probability}`` for one study: ``images`` are paths (JPEG, PNG, DICOM), PIL images, grayscale
        numpy arrays or model-input tensors; ``views`` one of frontal / lateral / unknown each, or None (read from
        DICOM headers, else unknown); ``classes`` other names to score (runs trained with text queries); ``tta``
        test-time views averaged in: True (the flip), ``"flip,scale:0.9,shift:0.05"`` or a list of them."""
        return self.explain_study(images, views, classes, tta=tta, attention=False).as_dict()

    def explain_study(self, images, views=None, classes=None, tta=False,
                      attention: bool = True) -> StudyPrediction:
        """As :meth:`predict_study`, with which images were scored, their views and the decoder's attention."""
        return self.predictor.predict_study(images, views, classes=classes, attention=attention, tta=tta)

    def predict_csv(self, csv, image_root, classes=None, **options) -> pd.DataFrame:
        """The predictions CSV (``dicom_id``, ``study_id``, one column per class) for a CXR-LT style CSV, one row
        per image in the CSV's order. ``options``: ``batch_size``, ``tta``, ``skip_bad_images``, ``aggregate``
        (stage 1: max / mean over a study), ``progress``. Skipped images are absent; their CSV rows are listed
        in ``df.attrs["skipped_rows"]``."""
        from .data.cxr_lt import read_cxr_lt

        table = read_cxr_lt(csv, classes=[])
        return self.predict_table(table, image_root, classes, TableOptions(**{"progress": False, **options}))

    def predict_table(self, table, image_root, classes=None, options: TableOptions | None = None) -> pd.DataFrame:
        """As :meth:`predict_csv` for a table already read (``data.cxr_lt.read_cxr_lt``)."""
        options = options or TableOptions()
        if options.batch_size < 1:
            raise UserError("batch size must be at least 1")
        if options.aggregate and self.kind == "stage2":
            raise UserError("aggregate applies to stage-1 runs; a stage-2 run already predicts per study")
        named = self.predictor.named_classes(classes)
        result = self.predictor.predict_table(table, image_root, options, classes=named)
        names = self.classes if named is None else named.names
        order = np.argsort(result.rows, kind="stable")  # rows come back in study order; give them in input order
        rows = result.rows[order]
        frame = table.frame
        df = pd.DataFrame(result.probs[order], columns=names)
        df.insert(0, "study_id", frame["study_id"].to_numpy()[rows].astype(str))
        df.insert(0, "dicom_id", frame["dicom_id"].to_numpy()[rows].astype(str))
        df.attrs["skipped_rows"] = list(result.skipped)
        return df


def load(path, device: str | None = None, calibrated: bool = True, allow_network: bool | None = None) -> Model:
    """A run folder (stage 1 or stage 2), or a Hugging Face Hub id (``org/name``, from the local cache unless
    ``allow_network``), as a :class:`Model`; ``device``: cpu, cuda, cuda:1 ... (default: cuda when available);
    ``calibrated=False``: raw probabilities even when the run was calibrated."""
    return Model(load_predictor(path, device, calibrated, allow_network))

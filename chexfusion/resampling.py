"""Bootstrap resampling by study: the unit that is independent in a chest X-ray test set.

The images of one study share a patient, a visit and a report (CXR-LT labels
come from the study's report), and a study-level model gives them one
prediction, so they are not independent draws: resampling images would treat a
three-view study as three pieces of evidence and make intervals too narrow.
A replicate therefore draws as many studies as there are, with replacement, and
takes every image of each drawn study (a study drawn twice is in twice).

One :class:`StudyResampler` draws the row indices; ``evaluate --bootstrap`` and
``compare`` use it, and ``compare`` feeds the same indices to every model so
that their differences are paired.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class StudyResampler:
    """Row indices of bootstrap replicates that resample whole studies.

    ``study_ids`` has one entry per row (image); ``None`` makes every row its own
    study (image-level resampling, for data without study ids).
    """

    def __init__(self, study_ids=None, n_rows: int | None = None):
        self.unit = "image" if study_ids is None else "study"
        if study_ids is None:
            if n_rows is None:
                raise ValueError("give study_ids or n_rows")
            codes = np.arange(n_rows)
        else:
            codes, _ = pd.factorize(pd.Series(study_ids, dtype=str), sort=False)
        self.n_rows = len(codes)
        self.order = np.argsort(codes, kind="stable")  # rows grouped by study, in file order within a study
        self.sizes = np.bincount(codes) if len(codes) else np.zeros(0, dtype=int)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.n_studies = len(self.sizes)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The rows of one replicate: ``n_studies`` studies drawn with replacement, all their images."""
        picked = rng.integers(0, self.n_studies, size=self.n_studies)
        sizes = self.sizes[picked]
        # position within the picked study, for every output row
        offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.order[np.repeat(self.starts[picked], sizes) + offset]

    def describe(self) -> dict:
        """What metrics.json records about the resampling unit."""
        return {"unit": self.unit, "n_units": int(self.n_studies), "n_images": int(self.n_rows)}

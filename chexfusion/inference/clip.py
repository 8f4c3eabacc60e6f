"""A clip run as a predictor: each image scored by the prompt pair of every class; a study gets the max.

The classes are never a fixed head: the run's own ones (those it validated on) or any names given
(``predict --classes``) are encoded by the run's text tower with the prompt setup recorded in its ``run.json``
(``vlm.prompts``: CheXzero's positive / negative pair, synonyms from the shipped table), so scoring a finding it
was not trained on is the same operation as scoring one it was.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..clip.scoring import image_probabilities, prompt_embeddings
from ..data.tta import tta_mean
from ..name_lists import check_distinct
from ..vlm.prompts import PromptConfig
from .classes import NamedClasses
from .predictor import PredictionResult, Predictor, TableOptions
from .stage1 import score_images


class ClipPredictor(Predictor):
    kind = "clip"
    aggregation = "max"

    def __init__(self, run, device="cpu", calibrated: bool = True):
        super().__init__(run, device, calibrated)
        prompts = run.info["prompts"]
        self.prompt_config = PromptConfig(list(prompts["templates"]), list(prompts["negative_templates"]),
                                          bool(prompts["synonyms"]))
        self.max_tokens = int(run.config.data.max_text_tokens)
        self._pairs = self._encode(self.classes)

    def _encode(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_embeddings(self.model, self.run.tokenizer, names, self.prompt_config, self.max_tokens)

    def query_index(self) -> np.ndarray:
        raise NotImplementedError("a clip run has no decoder attention")

    def named_classes(self, classes) -> NamedClasses | None:
        """Any names: their prompt pairs (``queries``: positive and negative stacked) from the run's text tower."""
        if classes is None or isinstance(classes, NamedClasses):
            return classes
        names = list(classes)
        if names == self.classes:
            return None
        check_distinct(names, "class names")
        positive, negative = self._encode(names)
        trained = {name: k for k, name in enumerate(self.classes)}
        known = dict(zip(self.classes, self.train_prevalence))
        return NamedClasses(names, torch.stack([positive, negative]), [trained.get(n, -1) for n in names],
                            np.array([known.get(n, np.nan) for n in names]))

    @contextmanager
    def scoring(self, named: NamedClasses | None):
        own = self._pairs
        if named is not None:
            self._pairs = (named.queries[0], named.queries[1])
        try:
            yield
        finally:
            self._pairs = own

    def image_probs(self, images: torch.Tensor, tta: tuple = ()) -> torch.Tensor:
        positive, negative = self._pairs
        return tta_mean(lambda x: image_probabilities(self.model, x, positive, negative), images, tta)

    def score_study(self, images, views, attention, tta):
        return self.image_probs(images, tta).max(dim=0).values, None

    def score_table(self, table, image_root, options: TableOptions) -> PredictionResult:
        return score_images(self, table, image_root, options, self._pairs[0].shape[0])

"""Batches of studies for contrastive training: a study's image(s) and its report's tokens.

A study is one pair of the contrastive loss, however many views it has. ``data.views: sample`` takes one of its
images per epoch, drawn from ``(seed, epoch, study)`` (so a resumed run draws the same images and every view is
seen over the epochs, as CheXzero samples one per study); ``pool`` takes all of them and the model averages
their embeddings into the study's. Augmentations draw from ``(seed, epoch, row)`` as in stage 1.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.augment import RadiographAugment, sample_rng
from ..data.image_dataset import ImageDataset
from ..data.shared_epoch import SharedEpoch, SharedEpochDataset

VIEW_STREAM = 23  # the view sampler's own random stream, apart from the augmentations'


def sampled_row(rows: np.ndarray, seed: int, epoch: int, study: int) -> int:
    """The image of a study trained on in ``epoch`` (``views: sample``)."""
    return int(rows[np.random.default_rng([seed, VIEW_STREAM, epoch, study]).integers(len(rows))])


class StudyPairs(SharedEpochDataset, torch.utils.data.Dataset):
    """Item ``i``: the image(s) of study ``i`` (``study_rows[i]``, table rows) and its report ``texts[i]``."""

    def __init__(self, images: ImageDataset, study_rows: list[np.ndarray], texts: list[str], views: str,
                 augment: RadiographAugment | None, seed: int):
        self.images, self.study_rows, self.texts = images, study_rows, texts
        self.views, self.augment, self.seed, self._epoch = views, augment, seed, SharedEpoch()

    def __len__(self) -> int:
        return len(self.study_rows)

    def __getitem__(self, i: int) -> dict:
        rows = self.study_rows[i]
        if self.views == "sample":
            rows = [sampled_row(rows, self.seed, self.epoch, i)]
        images = []
        for row in rows:
            image = self.images[int(row)]["image"]
            if self.augment is not None:
                image = self.augment(image, sample_rng(self.seed, self.epoch, int(row)))
            images.append(image)
        return {"images": torch.stack(images), "text": self.texts[i], "study": i}


class CollatePairs:
    """Stacks a batch's images (``owner``: the batch position of each image's study) and tokenizes its reports
    (padded to the longest, truncated to ``max_tokens``)."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, batch: list[dict]) -> dict:
        tokens = self.tokenizer([item["text"] for item in batch], padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt")
        sizes = torch.tensor([len(item["images"]) for item in batch])
        return {"image": torch.cat([item["images"] for item in batch]),
                "owner": torch.repeat_interleave(torch.arange(len(batch)), sizes),
                "study": torch.tensor([item["study"] for item in batch]),
                "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

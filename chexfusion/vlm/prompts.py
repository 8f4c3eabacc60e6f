"""Training-free class scores from a vision-language model: prompt ensembles and the positive / negative pair.

Each class is described by a *positive* set of sentences (every template filled with the
class name and each of its synonyms from the shipped table, ``chexfusion.text.synonyms``)
and a *negative* set (the negative templates filled the same way). As in CLIP's prompt
ensembling, a set's sentence embeddings are L2-normalised, averaged and normalised again.

The score is CheXzero's (Tiu et al. 2022): the softmax over the pair of image-text logits,
``p = exp(s * cos(i, pos)) / (exp(s * cos(i, pos)) + exp(s * cos(i, neg)))``, which equals
``sigmoid(s * (cos(i, pos) - cos(i, neg)))`` with ``s`` the model's own logit scale. A
bias the model adds to every logit (SigLIP's) cancels in the pair, so it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..text.synonyms import check_template, fill, synonyms

# CheXzero's pair: the bare finding against its negation.
DEFAULT_TEMPLATES = ("{}",)
DEFAULT_NEGATIVE_TEMPLATES = ("no {}",)


@dataclass
class PromptConfig:
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    negative_templates: list[str] = field(default_factory=lambda: list(DEFAULT_NEGATIVE_TEMPLATES))
    use_synonyms: bool = True

    def validate(self) -> None:
        for what, templates in (("--template", self.templates), ("--negative-template", self.negative_templates)):
            if not templates:
                raise UserError(f"{what}: give at least one template")
            for template in templates:
                check_template(template)


def _phrases(class_name: str, use_synonyms: bool) -> list[str]:
    return [class_name] + [s for s in (synonyms(class_name) if use_synonyms else []) if s != class_name]


def prompt_sets(class_name: str, cfg: PromptConfig) -> tuple[list[str], list[str]]:
    """The positive and the negative sentences of one class (each once, in template-then-phrase order)."""
    phrases = _phrases(class_name, cfg.use_synonyms)

    def filled(templates):
        return list(dict.fromkeys(fill(t, p) for t in templates for p in phrases))

    return filled(cfg.templates), filled(cfg.negative_templates)


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """``[n, D]`` sentence embeddings of one set -> its unit-length mean direction ``[D]``."""
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(dim=0), dim=-1)


def pair_probabilities(image_embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                       logit_scale: float) -> torch.Tensor:
    """``[N, D]`` images, ``[K, D]`` positive and negative class embeddings -> ``[N, K]`` probabilities."""
    images = F.normalize(image_embeddings.float(), dim=-1)
    pos = images @ F.normalize(positive.float(), dim=-1).T
    neg = images @ F.normalize(negative.float(), dim=-1).T
    logits = torch.stack([pos, neg], dim=-1) * float(logit_scale)
    return torch.softmax(logits, dim=-1)[..., 0]

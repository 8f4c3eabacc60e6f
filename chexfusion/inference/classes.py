"""Scoring class names a run was not trained on: its text queries, encoded as it was trained to encode them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError


@dataclass
class NamedClasses:
    """Class names encoded for a text-query run's decoder (see :func:`encode_class_names`)."""

    names: list[str]
    queries: torch.Tensor  # [K, D] embeddings, encoded with the run's recorded text setup
    trained_index: list[int]  # per name, its index among the run's trained classes, or -1
    train_prevalence: np.ndarray  # the trained classes' prevalence; NaN for a name not trained on


def encode_class_names(run, names: list[str]) -> NamedClasses:
    """Encode ``names`` for ``run``'s decoder: zero-shot scoring of findings it never saw.

    Only a run trained with text queries can do this (others are a UserError): the names are encoded with the
    text setup it was trained with (from the embedding cache when possible). Names it was trained on get the
    embeddings they were trained with, and their training prevalence; a new name's prevalence is unknown (NaN).
    """
    record = run.info.get("text_queries")
    if not record:
        raise UserError(f"run {run.path} has learned class queries: it scores only its own {len(run.classes)} "
                        f"classes (train it with model.queries=text to score other names)")
    from ..text.queries import zero_shot_queries

    trained = {name: k for k, name in enumerate(run.classes)}
    known = dict(zip(run.classes, run.train_prevalence))
    return NamedClasses(list(names), zero_shot_queries(record, list(names), run.path),
                        [trained.get(name, -1) for name in names],
                        np.array([known.get(name, np.nan) for name in names]))

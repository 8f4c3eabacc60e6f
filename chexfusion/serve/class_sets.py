"""Which classes a demo request scores: the run's own, or names the user typed (text-query runs, zero-shot).

A run trained with ``model.queries: text`` scores any class name: the name is
encoded with the text setup in its ``run.json`` (from the embedding cache when
possible) and used as a decoder query, as ``chexfusion predict --classes`` does.
The model is shared by all requests, so a request's names are swapped into the
decoder only while it holds the model lock (:func:`scoring`) and the run's own
queries are put back before the lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..data.classes import prevalence_group
from ..errors import UserError
from .heatmap import query_of_class
from .limits import UNPROCESSABLE, Rejected

UNSEEN = "unseen"  # the group of a name the run was not trained on
CACHED_SETS = 32  # name lists kept encoded (each is a [K, D] float matrix)


@dataclass(frozen=True)
class ClassSet:
    names: list[str]
    train_prevalence: np.ndarray  # NaN for a name the run was not trained on
    groups: list[str]  # head / medium / tail, or unseen
    query_index: np.ndarray  # decoder query whose attention belongs to each class
    queries: torch.Tensor | None = None  # None: the run's own classes, as stored in its weights
    trained_index: list[int] | None = None  # per name, its index among the trained classes or -1


class ClassSets:
    """The run's own class set, and encoded user name lists (a small cache shared by requests)."""

    def __init__(self, predictor):
        self.predictor = predictor
        run = getattr(predictor, "run", None)
        self.run_path = run.path if run is not None else None
        self.text_record = run.info.get("text_queries") if run is not None else None
        prevalence = np.asarray(predictor.train_prevalence, dtype=np.float64)
        self.own = ClassSet(list(predictor.classes), prevalence, [prevalence_group(float(p)) for p in prevalence],
                            query_of_class(predictor.model.decoder, len(predictor.classes)))
        self._cache: OrderedDict[tuple[str, ...], ClassSet] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def accepts_names(self) -> bool:
        return self.text_record is not None

    def resolve(self, names: list[str] | None) -> ClassSet:
        """The set for a request: its names encoded (refused with a 422 for a learned-query run)."""
        if names is None or names == self.own.names:
            return self.own
        if not self.accepts_names:
            raise Rejected(UNPROCESSABLE, f"this run has learned class queries: it scores only its own "
                                          f"{len(self.own.names)} classes (a run trained with model.queries=text "
                                          f"scores other names)")
        key = tuple(names)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from ..text.queries import zero_shot_queries

        try:
            queries = zero_shot_queries(self.text_record, list(names), self.run_path)
        except UserError as exc:
            raise Rejected(UNPROCESSABLE, str(exc)) from None
        known = dict(zip(self.own.names, self.own.train_prevalence))
        prevalence = np.array([known.get(n, np.nan) for n in names])
        groups = [UNSEEN if np.isnan(p) else prevalence_group(float(p)) for p in prevalence]
        trained = [self.own.names.index(n) if n in known else -1 for n in names]
        chosen = ClassSet(list(names), prevalence, groups, np.arange(len(names)), queries, trained)
        with self._lock:
            self._cache[key] = chosen
            while len(self._cache) > CACHED_SETS:
                self._cache.popitem(last=False)
        return chosen


@contextmanager
def scoring(decoder, chosen: ClassSet):
    """The decoder scores ``chosen``'s names inside the block, its own classes again after it (hold the lock)."""
    if chosen.queries is None:
        yield
        return
    saved = (decoder.label_queries, decoder.num_classes, getattr(decoder, "residual_index", None))
    try:
        decoder.set_label_queries(chosen.queries, chosen.trained_index)
        yield
    finally:
        decoder.label_queries, decoder.num_classes = saved[0], saved[1]
        if saved[2] is not None:
            decoder.residual_index = saved[2]

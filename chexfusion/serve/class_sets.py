"""Which classes a demo request scores: the run's own, or names the user typed (text-query runs, zero-shot).

A run trained with ``model.queries: text`` scores any class name: the name is
encoded with the text setup in its ``run.json`` (from the embedding cache when
possible) and used as a decoder query, as ``chexfusion predict --classes`` does.
The model is shared by all requests, so a request's names are swapped into the
decoder only while it holds the model lock (the predictor's ``scoring`` block) and the run's own
queries are put back before the lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..data.classes import prevalence_group
from ..errors import UserError
from ..inference.classes import NamedClasses, encode_class_names
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

    @property
    def named(self) -> NamedClasses | None:
        """What the predictor scores for this set (None: the run's own classes, as stored in its weights)."""
        if self.queries is None:
            return None
        return NamedClasses(self.names, self.queries, self.trained_index, self.train_prevalence)


class ClassSets:
    """The run's own class set, and encoded user name lists (a small cache shared by requests)."""

    def __init__(self, predictor):
        self.predictor = predictor
        run = getattr(predictor, "run", None)
        self.accepts_names = run is not None and bool(run.info.get("text_queries"))
        prevalence = np.asarray(predictor.train_prevalence, dtype=np.float64)
        self.own = ClassSet(list(predictor.classes), prevalence, [prevalence_group(float(p)) for p in prevalence],
                            predictor.query_index())
        self._cache: OrderedDict[tuple[str, ...], ClassSet] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, names: list[str] | None) -> ClassSet:
        """The set for a request: its names encoded (a 422 for a learned-query run or an unusable encoder)."""
        if names is None or names == self.own.names:
            return self.own
        if not self.accepts_names:  # said here without the run's path, which is the server's business
            raise Rejected(UNPROCESSABLE, f"this run has learned class queries: it scores only its own "
                                          f"{len(self.own.names)} classes (a run trained with model.queries=text "
                                          f"scores other names)")
        key = tuple(names)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            named = encode_class_names(self.predictor.run, list(names))
        except UserError as exc:
            raise Rejected(UNPROCESSABLE, str(exc)) from None
        groups = [UNSEEN if np.isnan(p) else prevalence_group(float(p)) for p in named.train_prevalence]
        chosen = ClassSet(named.names, named.train_prevalence, groups, np.arange(len(names)), named.queries,
                          named.trained_index)
        with self._lock:
            self._cache[key] = chosen
            while len(self._cache) > CACHED_SETS:
                self._cache.popitem(last=False)
        return chosen


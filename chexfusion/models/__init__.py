"""Models: timm backbone wrapper, ML-Decoder head, stage-1 image classifier, stage-2 study fusion.

Names are imported lazily so that, e.g., stage 2 (which never builds a
backbone) does not pay for importing timm.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Backbone": "backbone",
    "create_backbone": "backbone",
    "MLDecoder": "ml_decoder",
    "ImageClassifier": "image_classifier",
    "StudyFusion": "fusion",
    "sincos_2d": "positional",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

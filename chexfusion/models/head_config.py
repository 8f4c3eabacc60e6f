"""The ML-Decoder head keys both stages' ``model`` config sections share, defined once."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_ranges
from ..errors import UserError
from ..text.queries import TextQueryConfig, check_query_kind, check_text_config


@dataclass
class HeadKeys:
    """``model.decoder_*``, ``model.queries`` and ``model.text`` (stage 1's ``ModelConfig`` and stage 2's
    ``FusionConfig`` inherit them, so a key means the same in both)."""

    # ml_decoder | linear (pool, dropout, FC: linear_head.py) | csra (stage 1: class-specific residual attention)
    head: str = "ml_decoder"
    decoder_layers: int = 1
    decoder_heads: int = 8
    decoder_ff_dim: int = 1024
    decoder_groups: int | None = None  # None: one query per class up to 100
    queries: str = "learned"  # learned | text: class-name embeddings (docs/zero_shot.md)
    text: TextQueryConfig = field(default_factory=TextQueryConfig)  # used when queries is text

    def decoder_kwargs(self, dropout: float, dim: int | None = None) -> dict:
        """The ML-Decoder's constructor arguments; ``dim`` None: the decoder works at its input width."""
        kwargs = dict(num_layers=self.decoder_layers, num_heads=self.decoder_heads, ff_dim=self.decoder_ff_dim,
                      dropout=dropout, num_groups=self.decoder_groups)
        return kwargs if dim is None else {"dim": dim, **kwargs}

    def validate_head(self) -> None:
        check_ranges("model", self, {"decoder_layers": 1, "decoder_heads": 1, "decoder_ff_dim": 1, "decoder_groups": 1})
        check_query_kind(self.queries)
        check_text_config(self.text)

    def check_head_kind(self, kinds: tuple[str, ...]) -> None:
        """``model.head`` is one of the stage's ``kinds``; only the ML-Decoder reads text queries."""
        head = self.head
        if head not in kinds:
            raise UserError(f"config key 'model.head' must be one of {', '.join(kinds)}, got '{head}'")
        if head != "ml_decoder" and self.queries != "learned":
            raise UserError(f"config key 'model.head: {head}' has learned class vectors only: "
                            f"set model.queries: learned")

"""The ``features:`` section of the stage-2 config: which backbones, where the store goes, how it is laid out.

Stage 2 embeds :class:`FeatureConfig` as ``features:``; ``chexfusion features``
writes the store it describes and stage 2 refuses a store that no longer
matches it (see ``manifest.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

ROUTINGS = ("shared", "per_view")
# Arrow has no bfloat16, so a store holds one of these; float16 halves the size at no cost to stage 2.
DTYPES = ("float16", "float32")
# binary: one fixed_size_binary cell per image (raw little-endian values): read at memory speed.
# list: fixed_size_list<float16|float32>, self-describing for DuckDB/Spark but ~8x slower to read
# (Parquet stores a repetition level per value). benchmarks/feature_store.py measures both.
LAYOUTS = ("binary", "list")
# Which backbone an image with no usable ViewPosition goes through under per_view routing. About 3-4% of
# CXR-LT images are `unknown`; most of them are frontal (portable AP films with the tag missing), so the
# frontal backbone is the default; "lateral" is there for data sets where the opposite holds.
UNKNOWN_VIEW_ROUTES = ("frontal", "lateral")
# How stage 2 reads each split: auto loads it in memory when its maps fit in max_memory_gb and streams it
# otherwise; memory and stream force one reader (stage2/studies.py, features/README.md).
READERS = ("auto", "memory", "stream")


@dataclass
class FeatureConfig:
    store: str = "features/demo"  # output folder
    routing: str = "shared"  # shared | per_view
    shared_backbone: str = "stage1/runs/demo"  # stage-1 run folder or encoder spec (hf:ID_OR_FOLDER; sources.py)
    frontal_backbone: str | None = None  # per_view: run folders trained with data.views frontal / lateral
    lateral_backbone: str | None = None
    allow_network: bool = False  # an encoder's Hub id not in the local cache may be downloaded (chexfusion.hub)
    unknown_view: str = "frontal"  # per_view: the backbone an `unknown` image goes through (see above)
    dtype: str = "float16"  # float16 | float32
    layout: str = "binary"  # binary | list (see LAYOUTS above)
    pool: list[int] | None = None  # optional adaptive average pool of the map to [h, w]
    batch_size: int = 64
    shard_rows: int = 1024  # rows per shard file
    row_group_rows: int = 256  # rows per Parquet row group: the unit the streaming reader holds in memory
    num_workers: int = 0
    skip_bad_images: bool = False
    max_memory_gb: float = 4.0  # stage 2, reader auto: load a split in memory below this, else stream it
    reader: str = "auto"  # stage 2: auto | memory | stream (see READERS above)
    shuffle_buffer: int = 256  # stage 2 streaming the training split: studies shuffled across row groups
    stream_lanes: int = 4  # stage 2 streaming the training split: readers per process (train.num_workers divides it)

    def validate(self) -> None:
        """Refuse a bad value by its key, before any backbone is loaded."""
        choices = {"routing": ROUTINGS, "dtype": DTYPES, "layout": LAYOUTS, "unknown_view": UNKNOWN_VIEW_ROUTES,
                   "reader": READERS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"config key 'features.{key}' must be one of {list(allowed)}, "
                                f"got '{getattr(self, key)}'")
        if self.routing == "per_view" and not (self.frontal_backbone and self.lateral_backbone):
            raise UserError("features.routing is per_view: set features.frontal_backbone and "
                            "features.lateral_backbone (stage-1 runs trained with data.views frontal / lateral)")
        if self.routing == "shared" and not self.shared_backbone:
            raise UserError("features.routing is shared: set features.shared_backbone (a stage-1 run folder or "
                            "an encoder spec such as hf:microsoft/rad-dino)")
        if self.pool is not None and (len(self.pool) != 2 or min(self.pool) < 1):
            raise UserError(f"config key 'features.pool' must be null or [h, w] with h, w >= 1, got {self.pool}")
        for key in ("batch_size", "shard_rows", "row_group_rows", "shuffle_buffer", "stream_lanes"):
            if getattr(self, key) < 1:
                raise UserError(f"config key 'features.{key}' must be at least 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise UserError(f"config key 'features.num_workers' must be 0 or more, got {self.num_workers}")
        if self.max_memory_gb <= 0:
            raise UserError(f"config key 'features.max_memory_gb' must be positive, got {self.max_memory_gb}")

    def backbone_slots(self) -> dict[str, str]:
        """Routing slot -> stage-1 run folder: ``{'shared': ...}`` or ``{'frontal': ..., 'lateral': ...}``."""
        if self.routing == "shared":
            return {"shared": self.shared_backbone}
        return {"frontal": self.frontal_backbone, "lateral": self.lateral_backbone}

"""One process's share of two sharded training epochs and of a resumed one; launched by test_multiprocess.py.

``accelerate launch --multi_gpu --num_processes P tests/sharded_epoch.py STORE OUT BATCH WORKERS SKIP``: each
process streams its share of the training split (``ShardedSource``) through a DataLoader with WORKERS workers,
for epochs 0 and 1 and for epoch 1 resumed after SKIP batches (``skip_first_batches``, as fit resumes); the
study indices of every batch are gathered over gloo and the main process writes them to OUT as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from accelerate.utils import gather_object

from chexfusion import training
from chexfusion.feature_store import FeatureStore
from chexfusion.stage2.studies import ShardedSource, StudyItems, collate_studies

SEED, LANES, SHUFFLE_BUFFER = 5, 4, 4


def share(store: FeatureStore, rank: int, world: int, batch: int) -> StudyItems:
    """A process's training items of the split, as stage 2 builds them (labels are not needed here)."""
    targets = np.zeros((len(store.split_metadata("train")), 1), np.float32)
    source = ShardedSource(store, "train", seed=SEED, batch=batch, rank=rank, world=world, lanes=LANES,
                           shuffle_buffer=SHUFFLE_BUFFER)
    return StudyItems(source, targets, np.ones_like(targets), max_images=2)


def batches(loader) -> list[list[int]]:
    return [b["study"].tolist() for b in loader]


def main(store_path: str, out: str, batch: int, workers: int, skip: int) -> None:
    accelerator = training.make_accelerator(training.OptimConfig(mixed_precision="no", cpu=True))
    dataset = share(FeatureStore(store_path), accelerator.process_index, accelerator.num_processes, batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=collate_studies, num_workers=workers,
                                         drop_last=True)
    result = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        result[f"epoch{epoch}"] = batches(loader)
    dataset.set_epoch(1)
    result["resumed"] = batches(accelerator.skip_first_batches(loader, skip))
    ranks = gather_object([result])
    if accelerator.is_main_process:
        with open(out, "w") as handle:
            json.dump({"processes": accelerator.num_processes, "ranks": ranks}, handle)
    training.end_processes()  # or the process may abort at exit, after its work is done


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))

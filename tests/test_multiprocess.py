"""Two processes give the results of one: stage 1, feature extraction and stage 2 under ``accelerate launch``.

The same tiny pipeline (tests/pipeline.py) runs once in this process and once
with two processes on the CPU. The two-process runs use half the per-process
batch, so each optimizer step sees the same global batch: the sampler draws one
permutation from (seed, epoch) on every rank, accelerate gives rank r the
batches r, r+2, ... of it, and DDP averages the two half-batch gradients into
the full-batch mean (every label is scored, so both halves weigh the same).
Augmentations draw from (seed, epoch, row), independent of the rank. Stage 2
runs a second time with every split streamed (``features.reader`` stream) on
2 processes x 2 DataLoader workers: each process reads only its share of the
training split's row groups (``ShardedSource``), so that run depends on the
world size and is checked on its own terms: every study once per epoch
across processes and workers, the batches of no workers, an exact resume,
and the same metrics from both readers for its weights.

Tolerances. The arithmetic is the same up to summation order (the all-reduce,
kernels at batch 8 instead of 16), ~1e-7 relative per step; Adam divides by the
gradient's running RMS, which can blow a rounding difference up to the size of
a step on a weight whose gradient is ~0, so weights may differ by up to about
lr per step: after the few steps run here, 1e-3 bounds that (measured: under
1e-4). Predicted probabilities then agree to 1e-3 and so do mAP and mAUROC
(they only move if two probabilities within that distance swap). The feature
store has no randomness and no reduction across ranks: it must be identical
byte for byte.

Settings held fixed on purpose, reported to the lead:
- dropout is 0: each rank draws its dropout masks from a generator seeded by
  (seed, epoch, batch, rank), so the ranks draw different masks from each
  other and a two-process run can never reproduce one process's masks;
- warm-up is on (0.5 epoch): accelerate steps a prepared scheduler once per
  process per optimizer step, and the schedule counts optimizer steps
  (``calls_per_step``), so the rates match one process (the last test checks
  the schedule alone).

Launch: ``accelerate launch --multi_gpu`` (the torchrun launcher: on a machine
without CUDA the Accelerator sets up gloo). ``--cpu --num_processes 2`` would
need MPI and silently runs ONE process, so every launch here checks that the
run reports ``processes=2``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pipeline
import pytest
import torch
from safetensors.torch import load_file

from chexfusion.feature_store import FeatureStore
from chexfusion.io import file_sha256
from chexfusion.stage2.studies import collate_studies

pytestmark = pytest.mark.slow

GLOBAL_BATCH = {"stage1": 16, "stage2": 8}
PROCESSES = 2
TOLERANCE = 1e-3
# One torch thread per process, in here as in the launched runs: the same kernels on both sides, two processes on
# two cores, and no thread oversubscription on a machine shared with other jobs (it slowed these runs five-fold).
THREADS = 1
STAGE1 = {"train.epochs": 1, "train.max_steps_per_epoch": 3, "train.warmup_epochs": 0.5, "model.decoder_dropout": 0,
          "data.test_csv": "null"}
FEATURES = {"features.shard_rows": 64}  # several shards per split, so both ranks write some
STAGE2 = {"train.epochs": 1, "train.max_steps_per_epoch": 3, "train.warmup_epochs": 0.5, "model.dropout": 0}
STREAM = {"features.reader": "stream"}
WORKERS, RESUME_AFTER = 2, 3  # DataLoader workers per process of the streamed runs; batches before a resume


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(repo_root: Path, *argv, program: tuple[str, ...] = ("-m", "chexfusion")) -> str:
    """``chexfusion ARGV`` (or ``program ARGV``) under ``accelerate launch`` with two processes; its stdout."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
           "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", *program, *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}  # the kernels of the in-process runs
    result = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if program[-1] == "chexfusion":
        assert f"processes={PROCESSES}" in result.stdout, result.stdout[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, repo_root, monkeypatch_module):
    """The pipeline run once in this process and once under two processes."""
    monkeypatch_module.chdir(repo_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield _run_both(tiny_data, tmp_path_factory.mktemp("multiprocess"), repo_root)
    finally:
        torch.set_num_threads(threads)


def _run_both(tiny_data: Path, root: Path, repo_root: Path) -> dict:
    one, two = root / "one", root / "two"
    stage1 = pipeline.train_stage1(tiny_data, one / "stage1", **STAGE1,
                                   **{"train.batch_size": GLOBAL_BATCH["stage1"]})
    store = pipeline.build_features(tiny_data, one / "stage2", one / "store", stage1, **FEATURES)
    stage2 = pipeline.train_stage2(tiny_data, one / "stage2", store, stage1, **FEATURES, **STAGE2,
                                   **{"train.batch_size": GLOBAL_BATCH["stage2"]})
    half = {k: v // PROCESSES for k, v in GLOBAL_BATCH.items()}
    _launch(repo_root, "stage1", "--config", "stage1/config.yaml",
            *pipeline.stage1_overrides(tiny_data, two / "stage1", **STAGE1, **{"train.batch_size": half["stage1"]}))
    # Features and stage 2 sit on the single-process stage-1 run, so they are compared on equal inputs.
    _launch(repo_root, "features", "--config", "stage2/config.yaml",
            *pipeline.stage2_overrides(tiny_data, two / "stage2", two / "store", stage1, **FEATURES))
    _launch(repo_root, "stage2", "--config", "stage2/config.yaml",
            *pipeline.stage2_overrides(tiny_data, two / "stage2", two / "store", stage1, **FEATURES, **STAGE2,
                                       **{"train.batch_size": half["stage2"]}))
    # Stage 2 again with every split streamed, 2 processes x 2 workers: each process reads its share of the store.
    out = _launch(repo_root, "stage2", "--config", "stage2/config.yaml",
                  *pipeline.stage2_overrides(tiny_data, two / "stage2", two / "store", stage1, "streamed", **FEATURES,
                                             **STAGE2, **STREAM, **{"train.batch_size": half["stage2"],
                                                                    "train.num_workers": WORKERS}))
    assert "reads split 'train' streamed" in out and "reads split 'val' streamed" in out
    _launch(repo_root, two / "store", root / "sharded.json", half["stage2"], WORKERS, RESUME_AFTER,
            program=("tests/sharded_epoch.py",))
    return {"one": {"stage1": stage1, "store": store, "stage2": stage2},
            "two": {"stage1": two / "stage1" / "tiny", "store": two / "store", "stage2": two / "stage2" / "tiny",
                    "streamed": two / "stage2" / "streamed", "sharded": root / "sharded.json"}}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].numel())


def _validation_probs(run: Path, data: Path) -> np.ndarray:
    from chexfusion.data.cxr_lt import read_cxr_lt
    from chexfusion.inference import TableOptions, load_predictor

    table = read_cxr_lt(data / "development.csv", classes=[])
    result = load_predictor(run, "cpu").predict_table(table, data, TableOptions(progress=False))
    return result.probs[np.argsort(result.rows)]


def _assert_metrics_close(one: dict, two: dict) -> None:
    for key in ("mAP", "mAUROC"):
        assert two[key] == pytest.approx(one[key], abs=TOLERANCE), key


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_stage1_on_two_processes_trains_the_model_of_one(runs, tiny_data):
    one, two = runs["one"]["stage1"], runs["two"]["stage1"]
    assert _max_weight_difference(one, two) <= TOLERANCE
    np.testing.assert_allclose(_validation_probs(two, tiny_data), _validation_probs(one, tiny_data), atol=TOLERANCE)
    _assert_metrics_close(_metrics(one)["validation"], _metrics(two)["validation"])
    assert _metrics(two)["validation"]["n_images"] == _metrics(one)["validation"]["n_images"]


def test_feature_store_of_two_processes_is_byte_identical(runs):
    def files(folder: Path) -> dict[str, str]:
        return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}

    one, two = files(runs["one"]["store"]), files(runs["two"]["store"])
    assert sorted(one) == sorted(two)
    assert sum(name.endswith(".parquet") for name in one) >= 2 * PROCESSES
    for name in one:
        assert one[name] == two[name], name


def test_stage2_on_two_processes_trains_the_model_of_one(runs, tiny_data):
    one, two = runs["one"]["stage2"], runs["two"]["stage2"]
    assert _max_weight_difference(one, two) <= TOLERANCE
    np.testing.assert_allclose(_validation_probs(two, tiny_data), _validation_probs(one, tiny_data), atol=TOLERANCE)
    m1, m2 = _metrics(one), _metrics(two)
    for split in ("validation", "test"):
        _assert_metrics_close(m1[split], m2[split])
        _assert_metrics_close(m1[split]["study_level"], m2[split]["study_level"])


def test_sharded_stream_on_two_processes_and_two_workers_trains_every_study_once(runs):
    """Each epoch, the two processes' batches (read by two workers each) hold every study at most once and all
    but fewer than a global batch; they are the batches of one reader per process; a resume after 3 batches
    gives the rest of the epoch."""
    from sharded_epoch import batches, share

    found = json.loads(runs["two"]["sharded"].read_text())
    assert found["processes"] == PROCESSES
    store = FeatureStore(runs["two"]["store"])
    n, batch = len(store.split_metadata("train")), GLOBAL_BATCH["stage2"] // PROCESSES
    for epoch in ("epoch0", "epoch1"):
        seen = [s for rank in found["ranks"] for b in rank[epoch] for s in b]
        assert len(seen) == len(set(seen)) and 0 <= n - len(seen) < batch * PROCESSES
    assert found["ranks"][0]["epoch0"] != found["ranks"][0]["epoch1"]
    for rank, result in enumerate(found["ranks"]):
        assert result["resumed"] == result["epoch1"][RESUME_AFTER:]
        dataset = share(store, rank, PROCESSES, batch)
        dataset.set_epoch(1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=collate_studies, drop_last=True)
        assert batches(loader) == result["epoch1"]


def test_streamed_two_process_run_scores_its_weights_as_in_memory(runs, tiny_data):
    """The streamed 2 x 2 run's validation and test metrics (streamed, two processes) equal its weights' metrics
    with the splits in memory in one process."""
    from chexfusion.config import from_dict, read_yaml
    from chexfusion.data.labels import LabelPolicy
    from chexfusion.stage2.config import Stage2Config
    from chexfusion.stage2.model import load_stage2_run
    from chexfusion.stage2.studies import MemorySource
    from chexfusion.stage2.train import Split, split_metrics, study_probs
    from chexfusion.training import make_accelerator

    run = runs["two"]["streamed"]
    cfg, metrics = from_dict(Stage2Config, read_yaml(run / "config.yaml")), _metrics(run)
    prevalence = np.asarray(json.loads((run / "run.json").read_text())["train_prevalence"])
    store, model = FeatureStore(runs["two"]["store"]), load_stage2_run(run).model
    for name, csv, key in (("val", "development.csv", "validation"), ("test", "test.csv", "test")):
        split = Split(store, name, MemorySource(store, name), str(tiny_data / csv), metrics["classes"], LabelPolicy(),
                      cfg.model.max_images)
        loader = torch.utils.data.DataLoader(split.dataset, batch_size=8, collate_fn=collate_studies)
        scored = split_metrics(split, *study_probs(model, loader, make_accelerator(cfg.train), name),
                               metrics["classes"], prevalence)
        for level in (metrics[key], metrics[key]["study_level"]):
            other = scored if level is metrics[key] else scored["study_level"]
            for k in ("mAP", "mAUROC"):
                assert level[k] == pytest.approx(other[k], abs=1e-6), (name, k)


def test_learning_rate_per_optimizer_step_does_not_depend_on_the_process_count(monkeypatch):
    import accelerate.scheduler

    from chexfusion.training import OptimConfig, schedule_for

    cfg = OptimConfig(epochs=2, lr=1e-3, warmup_epochs=0.5)
    steps_per_epoch = 8

    def learning_rates(processes: int) -> list[float]:
        # accelerate's own stepping rule (AcceleratedScheduler, split_batches False) for ``processes`` ranks
        monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=processes))
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        optimizer.step_was_skipped = False
        scheduler = accelerate.scheduler.AcceleratedScheduler(
            schedule_for(SimpleNamespace(num_processes=processes), optimizer, cfg, steps_per_epoch), optimizer)
        rates = []
        for _ in range(cfg.epochs * steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])  # the rate this optimizer step uses
            optimizer.step()
            scheduler.step()
        return rates

    assert learning_rates(2) == pytest.approx(learning_rates(1), rel=1e-12)

"""Experiment tracking through accelerate's trackers (``train.log_with``)."""

from __future__ import annotations

import pipeline
import pytest

from chexfusion.errors import UserError
from chexfusion.training.config import OptimConfig
from chexfusion.training.setup import make_accelerator


@pytest.mark.slow
def test_a_stage2_run_with_tensorboard_writes_event_files_tensorboard_reads(tiny_data, tiny_stage1, tiny_store,
                                                                            repo_root,
                                                                           monkeypatch):
    monkeypatch.chdir(repo_root)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = pipeline.train_stage2(tiny_data, tiny_store.parent, tiny_store, tiny_stage1, name="tracked",
                                **{"train.log_with": "tensorboard"})
    logs = run / "logs"
    events = sorted(logs.rglob("events.out.tfevents.*"), key=lambda p: len(p.parts))
    assert events, f"no event file under {logs}"
    reader = EventAccumulator(str(events[0].parent)).Reload()  # the scalars (hyper-parameters sit one level down)
    scalars = reader.Tags()["scalars"]
    for tag in ("stage2/train_loss", "stage2/lr", "stage2/mAP", "stage2/mAUROC"):
        assert tag in scalars
    assert len(reader.Scalars("stage2/mAP")) == 2  # one point per epoch (train.epochs=2)


def test_an_unknown_or_missing_tracker_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown tracker 'tensorbored'"):
        make_accelerator(OptimConfig(log_with="tensorbored"))

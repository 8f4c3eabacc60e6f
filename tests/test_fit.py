"""The shared epoch loop: each epoch sees its own order, and dropout is drawn from where a batch is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from chexfusion import training
from chexfusion.errors import UserError
from chexfusion.run_folder import load_weights, save_weights
from chexfusion.text.queries import TextQueryConfig


class RowsSeen(torch.utils.data.Dataset):
    """Eight one-number samples; ``set_epoch`` is recorded like the augmentation's epoch."""

    def __init__(self):
        self.epoch, self.seen = 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, row):
        self.seen.append((self.epoch, row))
        return {"x": torch.tensor([float(row)]), "row": row}


@dataclass
class ModelConfig:
    queries: str = "learned"
    text: TextQueryConfig = field(default_factory=TextQueryConfig)


@dataclass
class StageConfig:
    """What ``prepare_training`` reads of a stage config."""

    train: training.OptimConfig
    model: ModelConfig = field(default_factory=lambda: ModelConfig())


def _train(tmp_path, epochs, max_steps, before_fit=lambda: None):
    cfg = training.OptimConfig(epochs=epochs, batch_size=2, lr=1e-2, warmup_epochs=0, max_steps_per_epoch=max_steps,
                               checkpoint_every_steps=1)
    accelerator = training.make_accelerator(cfg)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    dataset = RowsSeen()
    sampler = training.EpochPermutationSampler(len(dataset), seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, drop_last=True)
    val_loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    prepared = training.prepare_training(accelerator, StageConfig(cfg), model, (loader, val_loader), tmp_path, 8,
                                         "samples")
    losses = []
    before_fit()

    def batch_loss(m, batch):
        loss = (m(batch["x"]) ** 2).mean()
        losses.append(loss.item())
        return loss

    job = training.StageJob("toy", tmp_path, 7, batch_loss, lambda m: {"mAP": 0.0}, [sampler, dataset])
    training.fit(accelerator, cfg, prepared, job)
    return dataset.seen, losses


def test_an_epoch_cut_short_by_max_steps_does_not_repeat_the_order_of_the_last(tmp_path):
    seen, _ = _train(tmp_path, epochs=3, max_steps=2)
    for epoch in range(3):
        rows = [row for e, row in seen if e == epoch]
        sampler = training.EpochPermutationSampler(8, seed=3)
        sampler.set_epoch(epoch)
        expected = list(sampler)[:len(rows)]
        assert rows == expected, f"epoch {epoch}"
    firsts = [[row for e, row in seen if e == epoch][:4] for epoch in range(3)]
    assert firsts[0] != firsts[1] != firsts[2]


def test_dropout_masks_depend_on_the_batch_not_on_what_ran_before(tmp_path):
    """The same model trained twice gives the same losses although something drew from torch's RNG in between
    (as building a DataLoader iterator does after a resume)."""
    _, first = _train(tmp_path / "a", epochs=2, max_steps=3)
    _, second = _train(tmp_path / "b", epochs=2, max_steps=3, before_fit=lambda: torch.rand(1000))
    assert first == second
    assert len(set(np.round(first, 6))) > 1
    assert json.loads((tmp_path / "a" / "history.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_a_checkpoint_of_another_model_is_a_one_line_error_naming_it(tmp_path):
    """A run folder whose checkpoint another model (or chexfusion version) wrote: say so, do not traceback."""
    small, other = torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.AdamW(small.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    training.save_checkpoint(tmp_path / "checkpoint", small, optimizer, scheduler, None, training.Progress())
    with pytest.raises(UserError, match=r"checkpoint/model.safetensors does not fit .* e\.g\. '0\.bias'.*delete"):
        training.load_checkpoint(tmp_path / "checkpoint", other, optimizer, scheduler, None)
    (tmp_path / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="weights.safetensors is not a readable safetensors file"):
        load_weights(small, tmp_path / "weights.safetensors")
    wide = torch.nn.Linear(2, 4)
    save_weights(wide, tmp_path / "wide.safetensors")
    with pytest.raises(UserError, match=r"2 mis-shaped tensors, e\.g\. 'bias'"):
        load_weights(small, tmp_path / "wide.safetensors")


def test_a_run_made_before_a_config_key_existed_is_still_recognised(tmp_path):
    """A key added to chexfusion later counts as its default in an older run's config.yaml, not as a change."""
    import yaml

    from chexfusion.errors import UserError
    from chexfusion.training import check_same_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"name": "demo", "features": {"dtype": "float16"}}))
    defaults = {"name": "demo", "features": {"dtype": "float16", "reader": "auto"}}
    check_same_config(tmp_path, {"name": "demo", "features": {"dtype": "float16", "reader": "auto"}}, defaults)
    with pytest.raises(UserError, match="features.reader='auto', not 'stream'"):
        check_same_config(tmp_path, {"name": "demo", "features": {"dtype": "float16", "reader": "stream"}}, defaults)
    with pytest.raises(UserError, match="features.reader"):  # without defaults a missing key is a difference
        check_same_config(tmp_path, {"name": "demo", "features": {"dtype": "float16", "reader": "auto"}})


def test_a_text_query_run_from_before_map_lr_scale_is_not_taken_for_the_new_default(tmp_path):
    """Text-query maps learned at the full rate before ``model.text.map_lr_scale`` existed: such a run folder is
    refused (not reported as if trained at 0.1); a learned-query run does not use the key and stays recognised."""
    import yaml

    from chexfusion.training import check_same_config

    def config(queries, **text):
        return {"name": "demo", "model": {"queries": queries, "text": {"encoder": "minilm", **text}}}

    defaults = config("learned", map_lr_scale=0.1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config("text")))
    with pytest.raises(UserError, match="model.text.map_lr_scale=1.0, not 0.1"):
        check_same_config(tmp_path, config("text", map_lr_scale=0.1), defaults)
    check_same_config(tmp_path, config("text", map_lr_scale=1.0), defaults)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config("learned")))
    check_same_config(tmp_path, config("learned", map_lr_scale=0.1), defaults)
    check_same_config(tmp_path, config("learned", map_lr_scale=0.1, encoder="elsewhere"), defaults)


def _decoder_model(query_dim):
    from chexfusion.models.ml_decoder import DecoderShape, MLDecoder

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8),
                               MLDecoder(5, 8, DecoderShape(dim=16, num_heads=2, ff_dim=16), query_dim=query_dim))


def test_text_maps_learn_at_their_own_rate_through_the_schedule(tmp_path):
    """``model.text.map_lr_scale``: the maps shared by all class names step at that fraction of train.lr, every
    other weight at train.lr, through warm-up and cosine decay alike."""
    cfg = training.OptimConfig(epochs=2, batch_size=2, lr=1e-2, warmup_epochs=1)
    model = _decoder_model(query_dim=6)
    text = ModelConfig(queries="text", text=TextQueryConfig(map_lr_scale=0.1))
    loader = torch.utils.data.DataLoader(RowsSeen(), batch_size=2)
    prepared = training.prepare_training(training.make_accelerator(cfg), StageConfig(cfg, text), model,
                                         (loader, loader), tmp_path, 8, "samples")
    maps = {id(p) for p in model[1].text_map_parameters()}
    assert maps and len(maps) == 4  # query projection and class scorer, weight and bias each
    groups = prepared.optimizer.param_groups
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    for _ in range(3):
        prepared.optimizer.step()
        prepared.scheduler.step()
        base = groups[0]["lr"]
        for group in groups:
            expected = base * 0.1 if any(id(p) in maps for p in group["params"]) else base
            assert all((id(p) in maps) == (expected != base) for p in group["params"])
            assert group["lr"] == pytest.approx(expected)


def test_learned_queries_have_no_text_maps_and_one_rate():
    model = _decoder_model(query_dim=None)
    assert model[1].text_map_parameters() == []
    assert {g["lr"] for g in training.param_groups(model, 0.05, 1e-3, text_map_lr_scale=0.1)} == {1e-3}


def test_weight_decay_exemptions_come_from_the_modules_no_weight_decay():
    """timm's convention: a module names its embeddings / queries in ``no_weight_decay()``; 1-D tensors are exempt
    too; every other weight is decayed."""
    from chexfusion.models.fusion import FusionEncoder, StudyFusion

    model = StudyFusion(num_classes=5, in_channels=8, feature_hw=(2, 2),
                        encoder=FusionEncoder(dim=16, num_heads=4, ff_dim=32, position_embedding=True))
    assert training.no_weight_decay_names(model) == {"view_embedding.weight", "index_embedding.weight"}
    groups = training.param_groups(model, weight_decay=0.05, lr=1e-3)
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in decayed} == {n for n, p in model.named_parameters()
                                           if p.ndim > 1 and "embedding" not in n}


@pytest.mark.parametrize("damage", ["pickle", "truncated_state", "truncated_progress"])
def test_a_damaged_checkpoint_is_one_line_and_nothing_is_unpickled(tmp_path, damage):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt = tmp_path / "checkpoint"
    training.save_checkpoint(ckpt, model, optimizer, scheduler, None, training.Progress(epoch=1))
    if damage == "pickle":
        class Payload:
            def __reduce__(self):
                return (print, ("unpickled!",))
        torch.save({"optimizer": Payload()}, ckpt / "state.pt")
    elif damage == "truncated_state":
        (ckpt / "state.pt").write_bytes((ckpt / "state.pt").read_bytes()[:50])
    else:
        (ckpt / "progress.json").write_text('{"epoch": 1, "step_in')
    with pytest.raises(UserError, match=f"checkpoint {ckpt} is damaged or not chexfusion's.*delete"):
        training.load_checkpoint(ckpt, model, optimizer, scheduler, None)


def test_a_torn_last_history_line_is_dropped_on_resume(tmp_path):
    from chexfusion.training.checkpoint import truncate_history

    history = tmp_path / "history.jsonl"
    history.write_text('{"epoch": 1, "mAP": 0.1}\n{"epoch": 2, "mAP": 0.2}\n{"epoch": 3, "mA')
    truncate_history(history, epochs_done=2)
    assert history.read_text() == '{"epoch": 1, "mAP": 0.1}\n{"epoch": 2, "mAP": 0.2}\n'


@pytest.mark.parametrize("key, value, message", [
    ("train.epochs", "-1", "'train.epochs' must be at least 1, got -1"),
    ("train.batch_size", "0", "'train.batch_size' must be at least 1, got 0"),
    ("train.lr", "0", "'train.lr' must be above 0"),
    ("train.ema_decay", "1", r"'train.ema_decay' must be in \[0, 1\)"),
])
def test_out_of_range_train_keys_are_refused_before_any_run_folder(run_cli, repo_root, tmp_path, monkeypatch,
                                                                  key, value, message):
    import re

    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage2", f"output_dir={tmp_path}", f"{key}={value}")
    assert code == 2 and re.search(message, err) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []

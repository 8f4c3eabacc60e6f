"""The GPU fast-path keys (train.channels_last / compile / pin_memory / persistent_workers): wiring and behaviour
on CPU. Their speed is measured on a GPU by benchmarks/gpu_check.py, not here."""

from __future__ import annotations

import numpy as np
import pipeline
import pytest
import torch
from safetensors.torch import load_file

from chexfusion.config import load_config
from chexfusion.data.augment import AugmentConfig, AugmentedDataset, RadiographAugment
from chexfusion.errors import UserError
from chexfusion.stage1.config import Stage1Config
from chexfusion.training import OptimConfig, apply_model_fast_paths, loader_options


def test_defaults_leave_a_cpu_run_alone():
    cfg = OptimConfig()
    assert (cfg.channels_last, cfg.compile, cfg.persistent_workers) == (False, False, False)
    assert loader_options(cfg) == {"pin_memory": torch.cuda.is_available(), "persistent_workers": False}


def test_pin_memory_only_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_options(OptimConfig(pin_memory=True))["pin_memory"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader_options(OptimConfig(pin_memory=True))["pin_memory"] is True
    assert loader_options(OptimConfig(pin_memory=False))["pin_memory"] is False


def test_asynchronous_copies_only_from_pinned_memory():
    from chexfusion.training import make_accelerator

    # no CUDA here: nothing pinned, so accelerate copies batches synchronously as before
    accelerator = make_accelerator(OptimConfig(pin_memory=True))
    assert accelerator.dataloader_config.non_blocking is torch.cuda.is_available()


def test_persistent_workers_need_workers():
    assert loader_options(OptimConfig(persistent_workers=True, num_workers=0))["persistent_workers"] is False
    assert loader_options(OptimConfig(persistent_workers=True, num_workers=2))["persistent_workers"] is True


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))


def test_channels_last_converts_weights_and_inputs():
    reference, model = small_net(), apply_model_fast_paths(small_net(), OptimConfig(channels_last=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 12, 12)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert seen == [True]
    assert list(model.state_dict()) == list(reference.state_dict())


def test_compile_keeps_parameter_names():
    model = apply_model_fast_paths(small_net(), OptimConfig(compile=True))
    assert model._compiled_call_impl is not None  # compiled in place: forward goes through torch.compile
    assert list(model.state_dict()) == list(small_net().state_dict())


def test_compile_refused_in_one_line_where_unavailable(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(UserError, match="train.compile"):
        apply_model_fast_paths(small_net(), OptimConfig(compile=True))


def test_keys_are_read_from_config(tmp_path):
    cfg = load_config(Stage1Config, None, ["train.compile=true", "train.channels_last=true",
                                           "train.persistent_workers=true", "train.pin_memory=false"])
    assert (cfg.train.compile, cfg.train.channels_last, cfg.train.persistent_workers, cfg.train.pin_memory) == (
        True, True, True, False)
    with pytest.raises(UserError, match="train.compile"):
        load_config(Stage1Config, None, ["train.compile=maybe"])


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.linspace(-1, 1, 3 * 16 * 16).reshape(3, 16, 16) * (i + 1), "row": i}


def epoch_images(loader, dataset, epoch):
    dataset.set_epoch(epoch)
    return torch.cat([batch["image"] for batch in loader])


def test_persistent_workers_see_each_epoch():
    """A worker kept alive between epochs augments epoch 1 as epoch 1, not as the epoch it started in."""
    augment = RadiographAugment(AugmentConfig(hflip=0.0, rotate_deg=20.0))
    persistent = AugmentedDataset(Images(), augment, seed=3)
    loader = torch.utils.data.DataLoader(persistent, batch_size=2, num_workers=1, persistent_workers=True)
    fresh = AugmentedDataset(Images(), augment, seed=3)
    plain = torch.utils.data.DataLoader(fresh, batch_size=2, num_workers=0)
    first, second = epoch_images(loader, persistent, 0), epoch_images(loader, persistent, 1)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, epoch_images(plain, fresh, 1), rtol=0, atol=0)


def test_stage1_trains_with_the_fast_paths(tiny_data, tiny_stage1, tmp_path, repo_root, monkeypatch):
    """channels_last + persistent workers end to end on CPU: the run finishes and writes the usual weights."""
    monkeypatch.chdir(repo_root)
    run = pipeline.train_stage1(tiny_data, tmp_path, **{"train.channels_last": "true", "train.num_workers": 1,
                                                         "train.persistent_workers": "true"})
    fast, default = load_file(run / "model.safetensors"), load_file(tiny_stage1 / "model.safetensors")
    assert list(fast) == list(default)
    assert all(np.isfinite(t.float().numpy()).all() for t in fast.values())

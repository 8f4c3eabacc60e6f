"""Issue 18's recipe options: timm's RandAugment / AutoAugment, random erasing and MixUp / CutMix on multi-label
targets with masks, class-aware sampling, OneCycle, selection on validation loss, progressive resolution, the
test-time view list, and their config errors."""

import json
import random

import numpy as np
import pytest
import torch

from chexfusion.data.augment import AugmentConfig, AugmentedDataset, RadiographAugment, sample_rng
from chexfusion.data.mixing import BatchMixer
from chexfusion.data.tta import TtaView, parse_tta, tta_mean
from chexfusion.errors import UserError
from chexfusion.sampling import ClassAwareSampler
from chexfusion.training import onecycle_schedule, selection_score


def _image(seed=0, size=48):
    gray = torch.rand(1, size, size, generator=torch.Generator().manual_seed(seed))
    return ((gray - 0.45) / 0.25).expand(3, -1, -1).clone()


@pytest.mark.parametrize("policy, erasing", [("rand-m9-mstd0.5", 0.0), ("original", 0.0), ("none", 1.0),
                                             ("v0", 0.5)])
def test_timm_augmentations_are_drawn_from_seed_epoch_and_row_alone(policy, erasing):
    augment = RadiographAugment(AugmentConfig(policy=policy, random_erasing=erasing, hflip=0.0), image_size=48)
    image = _image()
    first = [augment(image.clone(), sample_rng(3, 1, row)) for row in range(6)]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # whatever ran before in the process
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    again = [augment(image.clone(), sample_rng(3, 1, row)) for row in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[0].shape == image.shape and torch.isfinite(first[0]).all()
    assert not all(torch.equal(first[0], other) for other in first[1:])  # rows get their own draws
    assert not torch.equal(first[0], augment(image.clone(), sample_rng(3, 2, 0))) or policy == "none"
    # the process's own generators are left where they were
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])


def test_const_random_erasing_fills_a_rectangle_with_the_mean():
    augment = RadiographAugment(AugmentConfig(policy="none", random_erasing=1.0, hflip=0.0, rotate_deg=0.0,
                                              scale=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0))
    image = _image() + 5.0  # nothing is 0 before erasing
    out = augment(image.clone(), sample_rng(0, 0, 0))
    erased = (out == 0).all(dim=0)
    rows, cols = torch.nonzero(erased, as_tuple=True)
    assert erased.sum() > 0
    assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
    torch.testing.assert_close(out[:, ~erased], image[:, ~erased], atol=1e-4, rtol=0)  # the rest untouched


def _batch(n=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    targets = (torch.rand(n, k, generator=g) > 0.5).float()
    masks = (torch.rand(n, k, generator=g) > 0.3).float()
    return images, targets, masks


def test_mixup_mixes_multi_hot_targets_and_masks_by_the_formula():
    images, targets, masks = _batch()
    mixer = BatchMixer(AugmentConfig(mixup_alpha=0.4), num_classes=5)
    mixed, y, m = mixer(images, targets, masks, seed=7)
    lam = float(((mixed - images.flip(0)) / (images - images.flip(0)))[0, 0, 0, 0])
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, lam * targets + (1 - lam) * targets.flip(0), atol=1e-6, rtol=1e-6)
    assert torch.equal(m, masks * masks.flip(0))  # known only where both partners' labels are
    assert y.shape == targets.shape and m.shape == masks.shape
    again = mixer(images, targets, masks, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((mixed, y, m), again))


def test_cutmix_per_element_keeps_unmixed_masks_and_mixes_by_the_pasted_area():
    images, targets, masks = _batch(n=8)
    mixer = BatchMixer(AugmentConfig(cutmix_alpha=1.0, mixup_mode="elem", mixup_prob=0.5), num_classes=5)
    mixed, y, m = mixer(images, targets, masks, seed=11)
    for i in range(8):
        j = 7 - i
        pasted = (mixed[i] != images[i]).any(dim=0).float().mean().item()
        if pasted == 0:  # not mixed (or a box of nothing): own targets and mask
            assert torch.equal(m[i], masks[i])
            continue
        lam = 1 - pasted
        torch.testing.assert_close(y[i], lam * targets[i] + (1 - lam) * targets[j], atol=0.02, rtol=0)
        assert torch.equal(m[i], masks[i] * masks[j])


def test_an_odd_batch_keeps_its_last_sample_unmixed_and_pairs_the_rest():
    images, targets, masks = _batch(n=5)
    mixed, y, m = BatchMixer(AugmentConfig(mixup_alpha=1.0), 5)(images, targets, masks, seed=0)
    assert torch.equal(mixed[4], images[4]) and torch.equal(y[4], targets[4]) and torch.equal(m[4], masks[4])
    even = BatchMixer(AugmentConfig(mixup_alpha=1.0), 5)(images[:4], targets[:4], masks[:4], seed=0)
    assert all(torch.equal(a[:4], b) for a, b in zip((mixed, y, m), even))


def test_class_aware_sampling_gives_every_class_the_same_share():
    rng = np.random.default_rng(0)
    targets = np.zeros((1000, 3))
    targets[:800, 0] = 1
    targets[800:830, 1] = 1
    targets[830:835, 2] = 1  # 165 images without a positive: a fourth group
    sampler = ClassAwareSampler(targets, seed=4, length=8000)
    drawn = sampler.epoch_indices()
    share = [targets[drawn, k].mean() for k in range(3)] + [(targets[drawn].sum(axis=1) == 0).mean()]
    np.testing.assert_allclose(share, 0.25, atol=0.03)
    assert len(sampler) == 8000 and np.array_equal(drawn, ClassAwareSampler(targets, 4, 8000).epoch_indices())
    sampler.set_epoch(1)
    assert not np.array_equal(drawn, sampler.epoch_indices())
    del rng


def test_onecycle_follows_torch_onecycle_lr_step_by_step():
    def lrs(make):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
        sched = make(opt)
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)

    ours = lrs(lambda opt: onecycle_schedule(opt, total_steps=20, warmup_steps=6))
    torch_lrs = lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=20, pct_start=0.3))
    np.testing.assert_allclose(ours, torch_lrs, rtol=1e-12)
    assert ours[0] == pytest.approx(0.01 / 25) and ours.argmax() == 5 and ours[-1] < 1e-4
    two = lrs(lambda opt: onecycle_schedule(opt, total_steps=10, warmup_steps=3, calls_per_step=2))
    assert two.argmax() in (5, 6) and two[0] == pytest.approx(0.01 / 25)  # stepped twice a step: same curve


def test_selection_on_loss_prefers_the_lowest_validation_loss():
    epochs = [{"mAP": 0.30, "loss": 0.50}, {"mAP": 0.40, "loss": 0.45}, {"mAP": 0.35, "loss": 0.41}]
    assert max(range(3), key=lambda e: selection_score(epochs[e], "loss")) == 2
    assert max(range(3), key=lambda e: selection_score(epochs[e], "mAP")) == 1
    assert selection_score({"mAP": None}, "mAP") == selection_score({}, "loss") == -np.inf


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": _image(i, size=64), "row": i, "target": torch.zeros(2), "mask": torch.ones(2)}


def test_progressive_resolution_changes_the_input_size_at_the_given_epochs():
    dataset = AugmentedDataset(_Images(), RadiographAugment(AugmentConfig(enabled=False)), seed=0,
                               sizes_by_epoch=[32, 48])
    sizes = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        sizes.append(tuple(dataset[1]["image"].shape[-2:]))
    assert sizes == [(32, 32), (48, 48), (64, 64)]


def test_tta_lists_parse_and_flip_alone_is_the_old_tta():
    assert parse_tta(True) == parse_tta("flip") == parse_tta(["hflip"]) == (TtaView("flip", flip=True),)
    assert parse_tta(False) == parse_tta("") == parse_tta(None) == ()
    views = parse_tta("flip,scale:0.9,shift:-0.05,flip")
    assert [v.name for v in views] == ["flip", "scale:0.9", "shift:-0.05"]
    for bad in ("rotate:10", "scale:3", "shift:x", "flip:1"):
        with pytest.raises(UserError, match="unknown test-time view"):
            parse_tta(bad)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = torch.randn(2, 3, 16, 16)
    score = lambda x: torch.sigmoid(model(x))  # noqa: E731
    old = 0.5 * (score(images) + score(torch.flip(images, dims=[-1])))
    assert torch.equal(tta_mean(score, images, parse_tta(True)), old)
    shifted = parse_tta("shift:0.25")[0].apply(images)
    torch.testing.assert_close(shifted[0, :, 4:, 4:], images[0, :, :12, :12], atol=1e-5, rtol=0)  # right, down


def test_a_stage1_predictor_with_flip_tta_equals_the_old_flip_average(tiny_stage1):
    from chexfusion.inference import load_predictor

    predictor = load_predictor(tiny_stage1)
    images = torch.randn(3, 3, 64, 64)
    p = torch.sigmoid(predictor.model(images).float())
    old = 0.5 * (p + torch.sigmoid(predictor.model(torch.flip(images, dims=[-1])).float()))
    with torch.no_grad():
        assert torch.equal(predictor.image_probs(images, parse_tta(True)), old)
        three = predictor.image_probs(images, parse_tta("flip,scale:0.9"))
    assert three.shape == p.shape and not torch.equal(three, old)


@pytest.mark.parametrize("override, message", [
    ("augment.policy=rand-q7", "'augment.policy': timm cannot read 'rand-q7'"),
    ("augment.policy=grayshift", "'augment.policy' must be none, a RandAugment spec"),
    ("augment.random_erasing_mode=blur", "'augment.random_erasing_mode' must be one of const, rand, pixel"),
    ("augment.mixup_mode=pairs", "'augment.mixup_mode' must be one of batch, pair, elem"),
    ("train.schedule=linear", "'train.schedule' must be one of cosine, onecycle, got 'linear'"),
    ("train.select_on=auroc", "'train.select_on' must be one of mAP, loss, got 'auroc'"),
    ("train.optimizer=sgd", "'train.optimizer' must be one of adamw, adam"),
    ("sampling.method=balanced", "'sampling.method' must be one of uniform, repeat_factor, class_aware"),
    ("tta=[flip,rotate:5]", "tta: unknown test-time view 'rotate:5'"),
    ("data.image_sizes_by_epoch=[8]", "'data.image_sizes_by_epoch' lists at most"),
])
def test_bad_recipe_keys_are_one_line_exit_2_errors(run_cli, repo_root, tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage1", f"output_dir={tmp_path}", override)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_mixup_with_an_odd_batch_size_is_refused_at_load(run_cli, repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli("stage1", f"output_dir={tmp_path}", "augment.mixup_alpha=0.2", "train.batch_size=15")
    assert code == 2 and "'train.batch_size' must be even with MixUp" in err


def test_a_run_with_every_recipe_option_keeps_the_epoch_of_lowest_validation_loss(tiny_data, tmp_path, repo_root,
                                                                                monkeypatch):
    import pipeline

    monkeypatch.chdir(repo_root)
    run = pipeline.train_stage1(tiny_data, tmp_path / "runs", name="recipe", **{
        "train.epochs": 3, "train.select_on": "loss", "train.schedule": "onecycle", "train.optimizer": "adam",
        "train.warmup_epochs": 1, "augment.policy": "original", "augment.random_erasing": 0.25,
        "augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0, "sampling.method": "class_aware",
        "data.image_sizes_by_epoch": "[48,56]", "tta": "[flip,scale:0.9]"})
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [h["val_loss"] for h in history]
    assert len(losses) == 3 and metrics["best_epoch"] == 1 + int(np.argmin(losses))
    assert metrics["validation"]["loss"] == pytest.approx(min(losses), rel=1e-5)

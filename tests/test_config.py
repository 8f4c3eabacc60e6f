"""Config files and command-line overrides: numbers as users write them."""

from __future__ import annotations

import pytest

from chexfusion.config import load_config
from chexfusion.errors import UserError
from chexfusion.stage2.config import Stage2Config


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string; a float key takes it as the number it obviously is."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n")
    cfg = load_config(Stage2Config, path, ["features.max_memory_gb=1e-6", "train.weight_decay=5E-2"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.features.max_memory_gb == pytest.approx(1e-6)
    assert cfg.train.weight_decay == pytest.approx(0.05)


@pytest.mark.parametrize("value", ["fast", "1e", "true"])
def test_a_non_number_for_a_float_key_is_refused_naming_the_key(value):
    with pytest.raises(UserError, match="config key 'train.lr' must be a number"):
        load_config(Stage2Config, None, [f"train.lr={value}"])


@pytest.mark.parametrize("value", ["0", "-0.1"])
def test_a_text_map_learning_rate_scale_that_cannot_train_is_refused(value):
    with pytest.raises(UserError, match="config key 'model.text.map_lr_scale' must be above 0"):
        load_config(Stage2Config, None, [f"model.text.map_lr_scale={value}"])

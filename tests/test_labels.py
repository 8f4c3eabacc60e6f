import numpy as np
import pytest

from chexfusion.data.labels import LabelPolicy, apply_label_policy
from chexfusion.errors import UserError

NAN = np.nan
# one row per kind of value: positive, negative, uncertain, blank
RAW = np.array([[1.0], [0.0], [-1.0], [NAN]], dtype=np.float32)


@pytest.mark.parametrize(
    "uncertain, blank, targets, mask",
    [
        ("zero", "zero", [1, 0, 0, 0], [1, 1, 1, 1]),
        ("one", "zero", [1, 0, 1, 0], [1, 1, 1, 1]),
        ("ignore", "zero", [1, 0, 0, 0], [1, 1, 0, 1]),
        ("zero", "one", [1, 0, 0, 1], [1, 1, 1, 1]),
        ("zero", "ignore", [1, 0, 0, 0], [1, 1, 1, 0]),
        ("one", "ignore", [1, 0, 1, 0], [1, 1, 1, 0]),
        ("ignore", "ignore", [1, 0, 0, 0], [1, 1, 0, 0]),
    ],
)
def test_each_policy_maps_uncertain_and_blank(uncertain, blank, targets, mask):
    got_targets, got_mask = apply_label_policy(RAW, LabelPolicy(uncertain=uncertain, blank=blank))
    assert got_targets.dtype == np.float32 and got_mask.dtype == np.float32
    assert got_targets[:, 0].tolist() == targets
    assert got_mask[:, 0].tolist() == mask


def test_default_policy_treats_uncertain_and_blank_as_negative():
    targets, mask = apply_label_policy(RAW, LabelPolicy())
    assert targets[:, 0].tolist() == [1, 0, 0, 0]
    assert mask.min() == 1


def test_policy_is_applied_per_entry_in_a_matrix():
    raw = np.array([[1, -1, NAN], [NAN, 0, -1]], dtype=np.float32)
    targets, mask = apply_label_policy(raw, LabelPolicy(uncertain="one", blank="ignore"))
    assert targets.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert mask.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert raw[0, 1] == -1  # the input is not modified


@pytest.mark.parametrize("key", ["uncertain", "blank"])
def test_unknown_policy_value_is_a_user_error_naming_the_key(key):
    with pytest.raises(UserError, match=f"'{key}'.*zero, one, ignore"):
        LabelPolicy(**{key: "maybe"})

import numpy as np
import pandas as pd
import pytest

from chexfusion.data.studies import canonical_order, group_studies, patient_split, study_sizes
from chexfusion.errors import UserError


def frame(rows):
    """rows of (dicom_id, study_id, ViewPosition)."""
    return pd.DataFrame(rows, columns=["dicom_id", "study_id", "ViewPosition"])


def with_views(df):
    from chexfusion.data.views import view_of

    return df.assign(view=[view_of(c) for c in df["ViewPosition"]])


SCRAMBLED = frame([
    ("z-lat", "s2", "LATERAL"),
    ("b-front", "s1", "AP"),
    ("c-unknown", "s2", ""),
    ("y-front", "s2", "PA"),
    ("a-front", "s2", "AP"),
    ("a-lat", "s1", "LL"),
])


@pytest.mark.parametrize("make", [with_views, lambda df: df], ids=["view column", "from ViewPosition"])
def test_studies_in_first_appearance_order_images_frontal_lateral_unknown(make):
    df = make(SCRAMBLED)
    studies = group_studies(df)
    assert list(studies) == ["s2", "s1"]
    ids = {s: df["dicom_id"].to_numpy()[rows].tolist() for s, rows in studies.items()}
    assert ids == {"s2": ["a-front", "y-front", "z-lat", "c-unknown"], "s1": ["b-front", "a-lat"]}


def test_canonical_order_does_not_depend_on_row_order():
    df = with_views(SCRAMBLED)
    rows = np.flatnonzero(df["study_id"].to_numpy() == "s2")
    expected = canonical_order(df, rows)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert canonical_order(df, rng.permutation(rows)).tolist() == expected.tolist()
    shuffled = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    got = {s: shuffled["dicom_id"].to_numpy()[r].tolist() for s, r in group_studies(shuffled).items()}
    assert got["s2"] == df["dicom_id"].to_numpy()[expected].tolist()


def test_any_number_of_images_per_study():
    rows = [(f"d{k:02d}", "big", "AP" if k % 3 else "LATERAL") for k in range(11)] + [("solo", "one", "PA")]
    studies = group_studies(with_views(frame(rows)))
    assert len(studies["big"]) == 11 and len(studies["one"]) == 1
    assert sorted(np.concatenate(list(studies.values())).tolist()) == list(range(12))


def test_empty_frame_has_no_studies():
    assert group_studies(with_views(frame([]))) == {}


def test_study_sizes_histogram():
    rows = [("a", "s1", "AP"), ("b", "s1", "LL"), ("c", "s2", "AP"), ("d", "s3", "AP"),
            ("e", "s4", "AP"), ("f", "s4", "AP"), ("g", "s4", "AP"), ("h", "s4", "LL"), ("i", "s4", "")]
    assert study_sizes(frame(rows)) == {1: 2, 2: 1, 5: 1}


FRACTIONS = {"train": 0.7, "development": 0.1, "test": 0.2}


def subjects(n_subjects=200, seed=1):
    rng = np.random.default_rng(seed)
    return [f"p{rng.integers(n_subjects):05d}" for _ in range(1000)]


def test_no_subject_in_two_splits_and_fractions_followed():
    ids = subjects()
    split = patient_split(ids, FRACTIONS, seed=0)
    per_subject = pd.DataFrame({"subject": ids, "split": split}).groupby("subject")["split"].nunique()
    assert per_subject.max() == 1
    n_subjects = len(set(ids))
    for name, share in FRACTIONS.items():
        assert abs(len(set(np.array(ids)[split == name])) - share * n_subjects) <= 1


def test_split_is_deterministic_per_seed_and_independent_of_row_order():
    ids = subjects()
    first = patient_split(ids, FRACTIONS, seed=3)
    assert first.tolist() == patient_split(ids, FRACTIONS, seed=3).tolist()
    assert first.tolist() != patient_split(ids, FRACTIONS, seed=4).tolist()
    order = np.random.default_rng(0).permutation(len(ids))
    reordered = patient_split([ids[k] for k in order], FRACTIONS, seed=3)
    assert reordered.tolist() == first[order].tolist()


def test_every_split_gets_a_subject_when_there_are_enough():
    split = patient_split(["a", "b", "c"], FRACTIONS, seed=0)
    assert sorted(split.tolist()) == ["development", "test", "train"]


@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.7, "test": 0.2}, "sum to 1"),
    ({"train": 1.2, "test": -0.2}, "non-negative"),
    ({}, "no splits"),
])
def test_bad_fractions_are_user_errors(fractions, message):
    with pytest.raises(UserError, match=message):
        patient_split(["a", "b"], fractions, seed=0)


def test_blank_subject_ids_are_refused():
    with pytest.raises(UserError, match="subject_id is empty for 1 rows"):
        patient_split(["a", " ", "b"], FRACTIONS, seed=0)

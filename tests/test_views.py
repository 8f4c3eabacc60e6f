import math

import numpy as np
import pandas as pd
import pytest

from chexfusion.data.views import VIEW_INDEX, VIEWS, view_of, view_of_row
from chexfusion.resources import read_table

REFERENCE = read_table("view_positions_2024.csv")


def test_three_views_with_stable_indices():
    assert VIEWS == ("frontal", "lateral", "unknown")
    assert [VIEW_INDEX[v] for v in VIEWS] == [0, 1, 2]


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: r["ViewPosition"] or "(blank)")
def test_every_reference_code_maps_to_its_view(row):
    assert view_of(row["ViewPosition"]) == row["view"]


def test_reference_covers_the_documented_codes_and_a_blank():
    codes = {r["ViewPosition"] for r in REFERENCE}
    assert {"AP", "PA", "LATERAL", "LL", "AP AXIAL", "XTABLE LATERAL", "SWIMMERS", ""} <= codes
    assert {r["view"] for r in REFERENCE} == set(VIEWS)


@pytest.mark.parametrize("code, view", [
    ("ap", "frontal"), (" pa ", "frontal"), ("Lateral", "lateral"), ("ll\t", "lateral"),
    ("xtable  lateral", "lateral"), ("Ap Axial", "frontal"), ("pa lld", "frontal"), ("swimmers", "lateral"),
])
def test_case_and_whitespace_do_not_matter(code, view):
    assert view_of(code) == view


@pytest.mark.parametrize("missing", [None, "", "   ", float("nan"), np.nan, np.float32("nan"), pd.NA, math.nan])
def test_missing_codes_are_unknown(missing):
    assert view_of(missing) == "unknown"


@pytest.mark.parametrize("code", ["OBLIQUE?", "AP PA", "123", "LATERAL DECUB"])
def test_unrecognised_codes_are_unknown_not_errors(code):
    assert view_of(code) == "unknown"


@pytest.mark.parametrize("position, meaning, view", [
    ("", "postero-anterior", "frontal"),
    ("", "antero-posterior", "frontal"),
    ("", "left lateral", "lateral"),
    ("", "Lateral", "lateral"),
    ("", "left anterior oblique", "frontal"),
    (None, "lateral", "lateral"),
    (float("nan"), "antero-posterior", "frontal"),
    ("", "", "unknown"),
    ("", float("nan"), "unknown"),
    ("", "erect", "unknown"),
    ("PA", "lateral", "frontal"),  # the ViewPosition code wins when it is known
])
def test_code_meaning_is_the_fallback(position, meaning, view):
    assert view_of_row(position, meaning) == view

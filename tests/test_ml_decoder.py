"""ML-Decoder: any class count, group decoding, an exact key-padding mask, text queries that score any number
of classes with one set of weights, attention weights that form a distribution over the real tokens; and the
stage-1 ImageClassifier built on it."""

import pytest
import torch

from chexfusion.errors import UserError
from chexfusion.models.backbone import Backbone
from chexfusion.models.image_classifier import ImageClassifier
from chexfusion.models.ml_decoder import DecoderShape, MLDecoder, build_decoder

SMALL = dict(dim=32, num_heads=4, ff_dim=64)


def tokens(batch=3, length=10, channels=24, seed=0):
    return torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_classes, num_groups, expected_groups", [(26, None, 26), (40, None, 40), (7, None, 7),
                                                                      (150, None, 100), (40, 7, 7), (26, 1, 1)])
def test_logit_shapes_and_group_counts(num_classes, num_groups, expected_groups):
    torch.manual_seed(0)
    decoder = MLDecoder(num_classes, 24, DecoderShape(num_groups=num_groups, **SMALL)).eval()
    logits, attention = decoder(tokens(), return_attention=True)
    assert logits.shape == (3, num_classes)
    assert decoder.num_groups == expected_groups
    assert attention.shape == (3, expected_groups, 10)
    assert torch.isfinite(logits).all()


def test_group_decoding_maps_each_group_to_its_own_classes():
    torch.manual_seed(0)
    decoder = MLDecoder(10, 24, DecoderShape(num_groups=4, **SMALL)).eval()  # 3 classes per group, 12 cut to 10
    assert decoder.classes_per_group == 3
    before = decoder(tokens())
    with torch.no_grad():
        decoder.group_weight[1].mul_(2.0)  # group 1 scores classes 3, 4, 5 only
    after = decoder(tokens())
    changed = (before - after).abs().amax(dim=0) > 1e-6
    assert changed.tolist() == [False, False, False, True, True, True, False, False, False, False]


def test_masked_tokens_have_exactly_zero_influence():
    torch.manual_seed(0)
    decoder = MLDecoder(26, 24, DecoderShape(num_groups=5, **SMALL)).eval()
    x = tokens(length=12)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 8:] = True
    mask[2, 1:] = True  # a single real token
    reference = decoder(x, key_padding_mask=mask)
    garbage = x.clone()
    garbage[mask] = torch.randn(int(mask.sum()), 24) * 1e4
    assert torch.equal(decoder(garbage, key_padding_mask=mask), reference)
    garbage[mask] = float("nan")
    assert torch.equal(decoder(garbage, key_padding_mask=mask), reference)
    # Padding is the same as not having the tokens at all.
    alone = decoder(x[0:1, :8])
    assert torch.allclose(alone, reference[0:1], atol=1e-6)


def test_without_the_mask_padding_would_matter():
    """Guards the test above: the same garbage does change an unmasked decoder (the public code's bug)."""
    torch.manual_seed(0)
    decoder = MLDecoder(26, 24, DecoderShape(**SMALL)).eval()
    x = tokens(length=12)
    garbage = x.clone()
    garbage[0, 8:] = 100.0
    assert not torch.allclose(decoder(x)[0], decoder(garbage)[0], atol=1e-3)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_attention_is_a_distribution_over_unmasked_tokens(num_layers):
    torch.manual_seed(0)
    decoder = MLDecoder(40, 24, DecoderShape(num_groups=8, num_layers=num_layers, **SMALL)).eval()
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 6:] = True
    _, attention = decoder(tokens(), key_padding_mask=mask, return_attention=True)
    assert torch.allclose(attention.sum(-1), torch.ones(3, 8), atol=1e-5)
    assert torch.all(attention[1, :, 6:] == 0)
    assert torch.all(attention[1, :, :6] > 0)


def test_text_queries_score_any_number_of_classes_with_the_same_weights():
    torch.manual_seed(0)
    decoder = MLDecoder(26, 24, DecoderShape(**SMALL), query_dim=16).eval()
    class_names = torch.randn(9, 16)  # e.g. text embeddings of 9 class names
    nine = decoder(tokens(), queries=class_names)
    five = decoder(tokens(), queries=class_names[:5])
    assert nine.shape == (3, 9) and five.shape == (3, 5)
    # Queries never attend to each other: a class's score does not depend on which other classes are asked.
    assert torch.allclose(nine[:, :5], five, atol=1e-6)
    logits, attention = decoder(tokens(), queries=class_names[:3], return_attention=True)
    assert attention.shape == (3, 3, 10)


def test_set_label_queries_are_saved_with_the_weights_and_scored_by_default():
    """A run stores its class embeddings in its state dict: a rebuilt decoder scores them without the text model."""
    torch.manual_seed(0)
    decoder = MLDecoder(4, 24, DecoderShape(**SMALL), query_dim=16).eval()
    names = torch.randn(4, 16)
    decoder.set_label_queries(names)
    decoder.center_queries()  # the training classes' mean: kept for any names scored later
    rebuilt = MLDecoder(4, 24, DecoderShape(**SMALL), query_dim=16).eval()
    rebuilt.load_state_dict(decoder.state_dict())
    x = tokens()
    assert torch.equal(rebuilt(x), decoder(x, queries=names))
    rebuilt.set_label_queries(names[:2])  # zero-shot: another list of class names, same weights and centre
    assert rebuilt.num_classes == 2 and torch.allclose(rebuilt(x), decoder(x)[:, :2], atol=1e-6)
    assert torch.equal(rebuilt.query_center, names.mean(dim=0))


def test_class_residuals_correct_trained_classes_only_and_start_at_zero():
    """Residuals start at zero (training starts from the pure text head), move only the trained classes, follow a
    trained name into another class list, and are saved with the weights."""
    torch.manual_seed(0)
    decoder = MLDecoder(3, 24, DecoderShape(**SMALL), query_dim=16).eval()
    names, x = torch.randn(3, 16), tokens()
    decoder.set_label_queries(names)
    decoder.center_queries()
    plain = decoder(x)
    decoder.add_class_residual()
    assert torch.equal(decoder(x), plain)
    with torch.no_grad():
        decoder.residual_scorer.normal_()
        decoder.residual_query.normal_()
    corrected = decoder(x)
    assert not torch.allclose(corrected, plain, atol=1e-3)
    assert torch.equal(decoder(x, queries=names), plain)  # an explicit matrix is not the trained classes
    rebuilt = MLDecoder(3, 24, DecoderShape(**SMALL), query_dim=16).eval()
    rebuilt.add_class_residual()
    rebuilt.load_state_dict(decoder.state_dict())
    new_name = torch.randn(1, 16)
    with rebuilt.scoring(torch.cat([names[2:], new_name]), trained_index=[2, -1]):  # for one request only
        assert rebuilt(x).shape == (3, 2)
    assert torch.equal(rebuilt(x), corrected) and rebuilt.num_classes == 3  # its own classes again, exactly
    rebuilt.set_label_queries(torch.cat([names[2:], new_name]), trained_index=[2, -1])
    both = rebuilt(x)
    assert torch.allclose(both[:, 0], corrected[:, 2], atol=1e-6)  # trained class 2 keeps its correction
    assert torch.allclose(both[:, 1], decoder(x, queries=new_name)[:, 0], atol=1e-6)  # a new name gets none
    with pytest.raises(ValueError, match="trained_index"):
        rebuilt.set_label_queries(torch.randn(2, 16))
    with pytest.raises(ValueError, match="trained_index"):
        rebuilt.set_label_queries(torch.randn(2, 16), trained_index=[0, 3])


def test_query_arguments_are_checked():
    learned = MLDecoder(5, 24, DecoderShape(**SMALL))
    with pytest.raises(ValueError, match="learned queries"):
        learned(tokens(), queries=torch.randn(5, 16))
    text = MLDecoder(5, 24, DecoderShape(**SMALL), query_dim=16)
    with pytest.raises(ValueError, match=r"queries must be \[K, 16\]"):
        text(tokens(), queries=torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"queries must be \[K, 16\]"):
        text.set_label_queries(torch.randn(5, 8))
    with pytest.raises(ValueError, match="learned queries"):
        learned.set_label_queries(torch.randn(5, 16))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0] = True
    with pytest.raises(ValueError, match="at least one unmasked token"):
        learned(tokens(), key_padding_mask=mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ((10, DecoderShape(num_groups=11)), "num_groups=11 must be between 1 and the number of classes"),
        ((10, DecoderShape(num_groups=0)), "num_groups=0"),
        ((10, DecoderShape(dim=30, num_heads=4)), "dim=30 is not divisible by num_heads=4"),
        ((0, DecoderShape()), "at least one class"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    num_classes, shape = kwargs
    with pytest.raises(UserError, match=message):
        MLDecoder(num_classes, 24, shape)


def test_unknown_decoder_option_is_named():
    with pytest.raises(UserError, match="unknown ML-Decoder option 'groups'"):
        build_decoder(5, 24, {"groups": 3}, None)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    decoder = MLDecoder(12, 24, DecoderShape(num_groups=4, **SMALL)).train()
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[2, 5:] = True
    decoder(tokens(), key_padding_mask=mask).pow(2).mean().backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return Backbone("resnet10t")


def test_image_classifier_shapes_and_cached_map_path(backbone):
    model = ImageClassifier(backbone, 40, decoder_kwargs=dict(num_groups=8, **SMALL)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(images)
        logits_again, attention = model.forward_with_attention(images)
        cached = model.forward_features(images).half()  # as stored in the feature store
        from_cache = model.classify_map(cached)
    assert logits.shape == (2, 40)
    assert torch.allclose(logits, logits_again, atol=1e-5)  # weights path vs fused attention kernel
    h, w = backbone.feature_shape(64)[1:]
    assert attention.shape == (2, 8, h * w)
    assert from_cache.dtype == torch.float32 and torch.allclose(from_cache, logits, atol=1e-2)


def test_image_classifier_with_text_queries_and_position_encoding(backbone):
    model = ImageClassifier(backbone, 26, decoder_kwargs=SMALL, query_dim=16, position_encoding=True).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64), queries=torch.randn(31, 16))
    assert logits.shape == (2, 31)

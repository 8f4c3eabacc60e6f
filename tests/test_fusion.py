"""Stage-2 fusion invariances (issue 6): a study's logits do not depend on its batch mates, on its padding or
on the order of its images (views kept); any study size works; and the public implementation's layout bug
(sequence-first layers fed batch-first tensors) would be caught by the same kind of check."""

import itertools

import pytest
import torch
from torch import nn

from chexfusion.data.views import VIEW_INDEX
from chexfusion.errors import UserError
from chexfusion.models.fusion import FusionEncoder, StudyFusion

C, H, W = 16, 4, 4
TINY = dict(dim=32, num_heads=4, ff_dim=64, num_layers=2, max_images=16,
            decoder_kwargs=dict(num_heads=4, ff_dim=64))
ATOL = 1e-5
F, L, U = VIEW_INDEX["frontal"], VIEW_INDEX["lateral"], VIEW_INDEX["unknown"]


def make_model(num_classes=26, seed=0, **overrides):
    """A tiny fusion model; ``overrides`` are FusionEncoder fields, ``decoder_kwargs`` or ``query_dim``."""
    torch.manual_seed(seed)
    options = {**TINY, **overrides}
    decoder_kwargs, query_dim = options.pop("decoder_kwargs"), options.pop("query_dim", None)
    return StudyFusion(num_classes, C, (H, W), FusionEncoder(**options), decoder_kwargs, query_dim).eval()


def study(views, seed):
    """One study: (maps [n, C, H, W], view indices [n])."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(views), C, H, W, generator=generator), torch.tensor(views)


def collate(studies, slots=None, garbage_seed=None):
    """Pad studies to ``slots`` images; padding holds zeros, or random garbage (values and views) if seeded."""
    slots = slots or max(len(v) for _, v in studies)
    features = torch.zeros(len(studies), slots, C, H, W)
    views = torch.zeros(len(studies), slots, dtype=torch.long)
    mask = torch.zeros(len(studies), slots, dtype=torch.bool)
    if garbage_seed is not None:
        generator = torch.Generator().manual_seed(garbage_seed)
        features = torch.randn(features.shape, generator=generator) * 50
        views = torch.randint(0, 3, views.shape, generator=generator)
    for i, (maps, study_views) in enumerate(studies):
        n = len(study_views)
        features[i, :n], views[i, :n], mask[i, :n] = maps, study_views, True
    return features, views, mask


def logits_of(model, studies, **collate_kw):
    with torch.no_grad():
        return model(*collate(studies, **collate_kw))


A = study([F, L, F, U], seed=1)
BIG = study([F, L, U, F, L, F, F, L, U, F, L], seed=2)  # 11 images, the largest CXR-LT study
ONE = study([L], seed=3)


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_study_alone_or_with_other_studies_of_any_size(model):
    alone = logits_of(model, [A])[0]
    in_batch = logits_of(model, [BIG, A, ONE])[1]
    assert torch.allclose(alone, in_batch, atol=ATOL)
    assert torch.allclose(logits_of(model, [ONE])[0], logits_of(model, [A, BIG, ONE])[2], atol=ATOL)


@pytest.mark.parametrize("slots", [4, 5, 11, 16])
def test_padding_amount_and_garbage_do_not_matter(model, slots):
    reference = logits_of(model, [A])[0]
    assert torch.allclose(logits_of(model, [A], slots=slots)[0], reference, atol=ATOL)
    assert torch.allclose(logits_of(model, [A], slots=slots, garbage_seed=slots)[0], reference, atol=ATOL)


def test_padding_may_even_hold_nan_and_out_of_range_views(model):
    features, views, mask = collate([A], slots=7)
    reference = logits_of(model, [A])
    features[0, 4:] = float("nan")
    views[0, 4:] = 99
    with torch.no_grad():
        assert torch.allclose(model(features, views, mask), reference, atol=ATOL)


def test_reordering_images_that_keep_their_views(model):
    maps, views = A
    reference = logits_of(model, [A])[0]
    for order in itertools.permutations(range(len(views))):
        order = list(order)
        permuted = logits_of(model, [(maps[order], views[order])])[0]
        assert torch.allclose(permuted, reference, atol=ATOL), order


def test_view_identity_matters(model):
    """The invariance above is not blindness: the same images under other views give other logits."""
    maps, views = A
    relabelled = torch.tensor([L, F, L, U])
    assert not torch.allclose(logits_of(model, [(maps, relabelled)])[0], logits_of(model, [A])[0], atol=1e-3)


def test_slot_index_embedding_is_deterministic_but_order_aware():
    model = make_model(position_embedding=True)
    maps, views = A
    first = logits_of(model, [A])[0]
    assert torch.allclose(logits_of(model, [A], slots=9, garbage_seed=0)[0], first, atol=ATOL)
    assert torch.allclose(logits_of(model, [BIG, A])[1], first, atol=ATOL)
    order = [2, 1, 0, 3]  # swap the two frontals: same views per slot, different images per slot
    assert not torch.allclose(logits_of(model, [(maps[order], views[order])])[0], first, atol=1e-4)


@pytest.mark.parametrize("projection", ["conv3x3s2", "conv1x1", "linear"])
def test_studies_of_one_and_eleven_images_for_every_projection(projection):
    model = make_model(projection=projection)
    expected_tokens = 4 if projection == "conv3x3s2" else 16
    assert model.num_tokens_per_image() == expected_tokens
    logits, attention = model(*collate([ONE, BIG]), return_attention=True)
    assert logits.shape == (2, 26) and torch.isfinite(logits).all()
    assert attention.shape == (2, 26, 11 * expected_tokens)
    assert torch.all(attention[0, :, expected_tokens:] == 0)  # the ten padding slots of the 1-image study
    assert torch.allclose(attention.sum(-1), torch.ones(2, 26), atol=1e-5)
    maps = model.attention_maps(attention)
    assert maps.shape == (2, 26, 11, H, W)  # on the feature map's grid, whatever the projection


def test_attention_of_a_strided_token_lands_on_the_feature_cell_it_is_centred_on():
    # a 3x3 stride-2 padding-1 convolution centres token (i, j) on cell (2i, 2j): an impulse there moves only it
    model = make_model(projection="conv3x3s2")
    impulse = torch.zeros(1, C, H, W)
    impulse[0, :, 2, 0] = 1.0
    with torch.no_grad():
        moved = (model.projection(impulse) - model.projection(torch.zeros_like(impulse))).abs().sum(1)[0]
    assert moved[1, 0] > 0 and moved.sum() == moved[1, 0]
    attention = torch.zeros(1, 26, 2 * model.num_tokens_per_image())
    attention[0, :, model.num_tokens_per_image() + 2] = 1.0  # image 1, token (1, 0) of the 2x2 grid
    maps = model.attention_maps(attention)[0, 0]  # [2, H, W]
    assert maps[0].sum() == 0 and maps[1, 2, 0] == 1.0 and maps[1].argmax() == 2 * W
    # drawn over a 64 px image, the peak is at the centre of cell (2, 0) (pixel 40, 8), not of the 2x2 block
    from chexfusion.explain.cam import upsample

    drawn = upsample(maps[1:], (64, 64))[0]
    row, col = divmod(int(drawn.argmax()), 64)
    assert abs(row - 39.5) <= 1 and col < 16


def test_half_precision_features_are_cast_to_the_model_dtype(model):
    features, views, mask = collate([A, ONE])
    with torch.no_grad():
        from_half = model(features.half(), views, mask)
        reference = model(features.half().float(), views, mask)
    assert from_half.dtype == torch.float32
    assert torch.allclose(from_half, reference, atol=ATOL)


def test_gradient_reaches_every_parameter_and_never_the_padding():
    model = make_model(num_classes=5, position_embedding=True).train()
    features, views, mask = collate([A, ONE], slots=6, garbage_seed=1)
    features.requires_grad_(True)
    model(features, views, mask).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert torch.all(features.grad[~mask] == 0)
    assert features.grad[mask].abs().sum() > 0


def test_text_queries_score_any_class_count():
    model = make_model(query_dim=12)
    features, views, mask = collate([A, BIG])
    with torch.no_grad():
        assert model(features, views, mask, queries=torch.randn(31, 12)).shape == (2, 31)


def test_encoder_can_be_switched_off_for_ablation():
    model = make_model(num_layers=0)
    assert model.encoder is None
    assert torch.allclose(logits_of(model, [A])[0], logits_of(model, [BIG, A])[1], atol=ATOL)


def test_inputs_are_checked():
    model = make_model(max_images=4)
    features, views, mask = collate([BIG])
    with pytest.raises(ValueError, match="exceed max_images=4"):
        model(features, views, mask)
    features, views, mask = collate([A])
    with pytest.raises(UserError, match="expects feature maps of 16x4x4, got 8x4x4"):
        model(features[:, :, :8], views, mask)
    with pytest.raises(ValueError, match="at least one real image"):
        model(features, views, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"view indices must lie in \[0, 3\)"):
        model(features, torch.full_like(views, 3), mask)
    with pytest.raises(UserError, match="unknown stage-2 projection 'conv5x5'"):
        make_model(projection="conv5x5")


# ------------------------------------------------------------ the public implementation's defect
def _study0_changes_when_study1_changes(encoder):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)  # [B, L, dim], as the public code feeds it
    y = x.clone()
    y[1] = torch.randn(8, 32)
    with torch.no_grad():
        return not torch.allclose(encoder(x)[0], encoder(y)[0], atol=ATOL)


def test_sequence_first_layers_fed_batch_first_tensors_mix_studies():
    torch.manual_seed(0)
    public = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0), 2, enable_nested_tensor=False)
    assert _study0_changes_when_study1_changes(public.eval())
    model = make_model()
    assert not _study0_changes_when_study1_changes(model.encoder)

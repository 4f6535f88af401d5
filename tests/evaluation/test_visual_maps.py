"""Attention maps, patch-feature PCA, retrieval and the 2D projection: shapes, known answers, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from evaluation.loading.backbones import model_sources
from evaluation.probes.attention import cls_attention, supports_attention_maps, top_mass_mask
from evaluation.probes.pca_maps import pca_rgb, spatial_features
from evaluation.probes.projection import project_2d
from evaluation.probes.retrieval import nearest_neighbours, precision_at_k
from evaluation.stages.classification import prepare_data
from evaluation.stages.maps import run_visual
from tests.fixtures.visual import make_visual_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_visual_setup(tmp_path_factory.mktemp("visual"))


def tiny_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                             dynamic_img_size=True, **kw).eval()


def test_cls_attention_is_a_distribution_over_patches_per_head_and_leaves_the_model_fused():
    model = tiny_vit(reg_tokens=2)
    fused_before = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    x = torch.randn(2, 3, 48, 32)  # a non-square input: a 6 x 4 patch grid
    attn = cls_attention(model, x)
    assert attn.shape == (2, 3, 6, 4)  # (b, heads, h, w): the CLS and 2 register tokens are dropped
    torch.testing.assert_close(attn.sum((-2, -1)), torch.ones(2, 3))
    assert (attn >= 0).all()
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused_before
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # still a working model after extraction


def test_attention_differs_between_images_and_heads():
    attn = cls_attention(tiny_vit(), torch.randn(2, 3, 32, 32))
    assert not torch.allclose(attn[0], attn[1]) and not torch.allclose(attn[0, 0], attn[0, 1])


def test_top_mass_mask_keeps_the_smallest_set_holding_the_mass():
    attn = torch.tensor([[0.5, 0.3], [0.15, 0.05]])[None, None]  # sorted: .05 .15 .3 .5
    mask = top_mass_mask(attn, mass=0.6)
    assert mask.tolist() == [[[[True, True], [False, False]]]]  # 0.5 + 0.3 >= 0.6, 0.5 alone is not
    assert top_mass_mask(attn, mass=0.4).tolist() == [[[[True, False], [False, False]]]]


def test_supports_attention_maps_only_for_cls_token_vits(tiny_backbone_spec):
    model = timm.create_model(tiny_backbone_spec["name"], num_classes=0, **tiny_backbone_spec["model_args"])
    assert supports_attention_maps(model) == ("vit" in tiny_backbone_spec["name"])
    assert not supports_attention_maps(timm.create_model("resnet18", num_classes=0))


@pytest.mark.parametrize("name,kwargs,grid", [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1, dynamic_img_size=True), (4, 4)),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(1, 1),
                                          num_heads=(1, 2)), (4, 4)),
    ("resnet18", {}, (1, 1)),
])
def test_pca_rgb_in_unit_range_with_the_feature_grid_shape(name, kwargs, grid):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **kwargs).eval()
    feats = spatial_features(model, torch.randn(3, 3, 32, 32))
    assert feats.shape[0] == 3 and feats.shape[2:] == grid
    rgb = pca_rgb(feats)
    assert rgb.shape == (3, *grid, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_pca_drops_the_background_by_the_first_component():
    # a bright 2x2 "object" in the middle of a 6x6 grid of background features: only it keeps colour
    feats = torch.zeros(1, 8, 6, 6) + 0.01 * torch.randn(1, 8, 6, 6)
    feats[0, :, 2:4, 2:4] += torch.randn(8, 1, 1) * 5 + 0.5 * torch.randn(8, 2, 2)
    rgb = pca_rgb(feats)
    colored = rgb.sum(-1) > 0
    assert colored[0, 2:4, 2:4].all() and colored.sum() == 4
    assert pca_rgb(feats, drop_background=False).sum(-1).gt(0).sum() > 4


def test_retrieval_of_a_training_image_returns_itself_first():
    torch.manual_seed(0)
    train = torch.randn(50, 16)
    labels = torch.arange(50) % 5
    sims, idx = nearest_neighbours(train, train[[7, 23, 41]] * 3.0, k=4, chunk_size=2)  # scale: cosine ignores it
    assert idx[:, 0].tolist() == [7, 23, 41]
    torch.testing.assert_close(sims[:, 0], torch.ones(3))
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    assert precision_at_k(idx[:, :1], labels, labels[[7, 23, 41]]) == 1.0


def test_projection_pca_is_seeded_and_two_dimensional():
    feats = torch.randn(30, 8)
    a, method = project_2d(feats, method="pca")
    b, _ = project_2d(feats, method="pca")
    assert method == "pca" and a.shape == (30, 2) and np.array_equal(a, b)


def test_run_visual_writes_the_figures_and_json(setup, tmp_path):
    data = prepare_data(train=str(setup / "train"), val=str(setup / "val"), out=tmp_path, label_fractions=[1.0],
                        seeds=1)
    payload = run_visual(data, model_sources(weights=str(setup / "export")), out=tmp_path, device="cpu",
                         projection="pca", n_images=3, n_queries=2, k=3)
    for name in ("attention_maps.png", "pca_features.png", "retrieval.png", "embedding_2d.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    on_disk = json.loads((tmp_path / "visual.json").read_text())
    assert on_disk == payload and payload["attention_models"] == ["pretrained", "random_init"]
    assert {r["model"] for r in payload["retrieval"]} == {"pretrained", "random_init"}
    assert all(0 <= r["precision_at_k"] <= 1 and r["k"] == 3 for r in payload["retrieval"])
    assert payload["images"] == run_visual(data, model_sources(weights=str(setup / "export")), out=tmp_path / "b",
                                           device="cpu", projection="none", n_images=3, n_queries=2, k=3)["images"]

"""Multi-crop and two-view transforms: view counts, sizes, modes, determinism, normalisation; their settings are
checked once, where the config is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from selfsup.build import multicrop_transform
from selfsup.config import ViewsConfig, load_config
from selfsup.data.stream import seeded_rngs
from selfsup.data.views import ViewTransform
from selfsup.errors import ConfigError

DEFAULT = ViewsConfig()
NORM = dict(mean=DEFAULT.mean, std=DEFAULT.std)  # the views.mean / views.std defaults (ImageNet's)


def _image(mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_multicrop_counts_and_sizes_for_every_mode(mode):
    t = multicrop_transform(ViewsConfig(global_crop_size=32, local_crop_size=16, n_global=2, n_local=3))
    views = t(_image(mode))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_two_view_config_has_two_global_views():
    views = multicrop_transform(ViewsConfig(global_crop_size=24, n_local=0))(_image())
    assert [tuple(v.shape) for v in views] == [(3, 24, 24)] * 2


def test_more_global_views_and_no_local_views():
    views = multicrop_transform(ViewsConfig(global_crop_size=20, n_global=3, n_local=0))(_image())
    assert [tuple(v.shape) for v in views] == [(3, 20, 20)] * 3


def test_same_seed_same_views_other_seed_other_views():
    t = multicrop_transform(ViewsConfig(global_crop_size=24, local_crop_size=12, n_local=2))
    img = _image()

    def seeded(seed: int) -> list[torch.Tensor]:  # the shard stream's seeding (lightly's solarisation draws from numpy)
        with seeded_rngs(seed, restore=True):
            return t(img)

    a, b, c = seeded(3), seeded(3), seeded(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_identity_view_is_exactly_normalised_pixels():
    t = ViewTransform(size=40, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0, cj_prob=0,
                      gray_prob=0, blur_prob=0, **NORM)
    img = _image(size=(40, 40))
    out = t(img)
    expected = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
                - torch.tensor(DEFAULT.mean).view(3, 1, 1)) / torch.tensor(DEFAULT.std).view(3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_grayscale_gives_equal_channels():
    t = ViewTransform(size=16, scale=(0.5, 1.0), cj_prob=0, gray_prob=1.0, blur_prob=0, mean=(0, 0, 0), std=(1, 1, 1))
    out = t(_image())
    assert torch.allclose(out[0], out[1], atol=1 / 255) and torch.allclose(out[1], out[2], atol=1 / 255)


def test_colour_jitter_changes_colours_but_keeps_geometry():
    kw = dict(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0, gray_prob=0, blur_prob=0, **NORM)
    img = _image(size=(32, 32))
    torch.manual_seed(0)
    jittered = ViewTransform(cj_prob=1.0, **kw)(img)
    plain = ViewTransform(cj_prob=0.0, **kw)(img)
    assert not torch.allclose(jittered, plain, atol=0.05)
    # An affine colour map keeps the pixel ordering structure: strongly correlated with the input.
    corr = np.corrcoef(jittered.mean(0).flatten().numpy(), plain.mean(0).flatten().numpy())[0, 1]
    assert corr > 0.5


def test_blur_on_upsampled_crop_matches_blur_after_resize():
    img = _image(size=(40, 40)).filter(ImageFilter.GaussianBlur(1))
    kw = dict(size=80, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0, cj_prob=0, gray_prob=0,
              blur_prob=1.0, blur_sigma=(2.0, 2.0), mean=(0, 0, 0), std=(1, 1, 1))
    ours = ViewTransform(**kw)(img)
    ref_img = img.resize((80, 80), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(2.0))
    ref = torch.from_numpy(np.array(ref_img)).permute(2, 0, 1).float() / 255
    assert (ours - ref).abs().mean() < 0.02
    unblurred = torch.from_numpy(np.array(img.resize((80, 80), Image.Resampling.BILINEAR))).permute(2, 0, 1) / 255
    assert (unblurred - ref).abs().mean() > 2 * (ours - ref).abs().mean()


@pytest.mark.parametrize("override, key", [
    ("views.global_crop_scale=[0.0,1.0]", "views.global_crop_scale"),
    ("views.n_global=0", "views.n_global"),
    ("views.local_crop_size=0", "views.local_crop_size"),
    ("views.std=[0.2,0.0,0.2]", "views.std"),
    ("views.mean=[0.5,0.5]", "views.mean"),
])
def test_bad_settings_raise_config_error_when_the_config_is_loaded(override, key):
    with pytest.raises(ConfigError, match=f"bad value for '{key}"):
        load_config(overrides=[override])


@pytest.mark.parametrize("key,expected", [("vflip_prob", Image.Transpose.FLIP_TOP_BOTTOM),
                                          ("rot90_prob", Image.Transpose.ROTATE_90)])
def test_vertical_flip_and_quarter_turn_move_the_pixels_as_named(key, expected):
    """With the crop covering the whole image and no colour change, the view is the image flipped / turned."""
    img = _image(size=(24, 24))
    plain = dict(size=24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0.0, cj_prob=0.0, gray_prob=0.0,
                 blur_prob=0.0, **NORM)
    torch.manual_seed(0)
    turned = ViewTransform(**plain, **{key: 1.0})(img)
    reference = ViewTransform(**plain)(img.transpose(expected))
    torch.testing.assert_close(turned, reference)
    assert not torch.equal(turned, ViewTransform(**plain)(img))


def test_lightly_backend_takes_the_same_flip_turn_and_colour_keys():
    from lightly.transforms import DINOTransform

    from selfsup.build import build_transform

    cfg = load_config(None, ["views.backend=lightly", "views.vflip_prob=0.5", "views.rot90_prob=0.5",
                             "views.cj_strength=0.5", "views.gray_prob=0", "views.global_crop_size=32",
                             "views.local_crop_size=16"])
    t = build_transform(cfg)
    assert isinstance(t, DINOTransform)
    assert len(t(_image())) == 2 + cfg.views.n_local

"""decode_rgb on a generated corpus of awkward and broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.build import multicrop_transform
from selfsup.config import ViewsConfig
from selfsup.data.decode import BadSample, decode_rgb
from tests.fixtures.corpus import BOMB_LIMIT, EXIF_NAME, OK, make_bad_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("corpus")
    return d, make_bad_corpus(d)


def test_each_file_is_converted_or_skipped_with_its_reason(corpus, monkeypatch):
    d, expected = corpus
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    transform = multicrop_transform(ViewsConfig(global_crop_size=16, local_crop_size=8, n_local=2))
    outcomes = {}
    for name in expected:
        try:
            img = decode_rgb((d / name).read_bytes())
        except BadSample as bad:
            outcomes[name] = bad.reason
            continue
        assert img.mode == "RGB", name
        torch.manual_seed(0)
        views = transform(img)
        assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2, name
        assert all(torch.isfinite(v).all() for v in views), name
        outcomes[name] = OK
    assert outcomes == expected


def test_bomb_decodes_under_the_default_limit(corpus):
    d, _ = corpus
    assert decode_rgb((d / "bomb.png").read_bytes()).size == (200, 200)


def test_exif_rotation_is_applied_before_cropping(corpus):
    d, _ = corpus
    img = decode_rgb((d / EXIF_NAME).read_bytes())
    assert img.size == (20, 40)
    # Orientation 6 turns the stored image 90 degrees clockwise: the blue left half ends up on top.
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[2] > 200 and top[0] < 60, top
    assert bottom[0] > 200 and bottom[2] < 60, bottom


def test_sixteen_bit_gray_keeps_its_range(corpus):
    d, _ = corpus
    img = decode_rgb((d / "gray16.png").read_bytes())
    lo, hi = img.convert("L").getextrema()
    assert lo < 10 and hi > 245  # scaled to 8 bits, not clipped to white


def test_draft_decodes_big_jpegs_smaller_but_not_below_the_request():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 200, 30)).save(buf, format="JPEG")
    full = decode_rgb(buf.getvalue())
    small = decode_rgb(buf.getvalue(), draft_size=(224, 224))
    assert full.size == (800, 600)
    assert small.size[0] < 800 and min(small.size) >= 224

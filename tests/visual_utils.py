"""A tiny ViT export (32 px input, the corruptions' minimum) and a 3-class image folder for the visual tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def make_visual_setup(root: Path, *, n_train: int = 6, n_val: int = 3, size: int = 40, img_size: int = 32) -> Path:
    """``root/{train,val}/class{c}/{i}.png`` (noisy solid colours, ``size`` px) and ``root/export`` (timm save_for_hf:
    a 2-block ViT-Tiny with 8 px patches at ``img_size``)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, colour in enumerate(COLOURS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=img_size, patch_size=8, depth=2,
                              dynamic_img_size=True)
    timm.models.save_for_hf(model, root / "export", safe_serialization=True,
                            model_config={"selfsup": {"method": "dino", "step": 7, "run_dir": None}},
                            data_config={"input_size": (3, img_size, img_size), "crop_pct": 1.0})
    return root


def pattern_image(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 40) -> Image.Image:
    """A smooth random pattern (3x3 noise upsampled) tinted by a class colour: every image differs in its pixels
    and, under the tiny random ViT, in its features (unlike the noisy solid colours of :func:`make_visual_setup`)."""
    small = np.clip(128 + rng.normal(0, 90, (3, 3, 3)), 0, 255).astype(np.uint8)
    a = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(0.8 * a + 0.2 * np.array(colour), 0, 255).astype(np.uint8))


def make_pattern_folder(root: Path, *, n: int, seed: int = 0) -> Path:
    """``root/class{c}/{i}.png``: ``n`` :func:`pattern_image` images per colour of :data:`COLOURS`."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(COLOURS):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            pattern_image(rng, colour).save(root / f"class{c}" / f"{i}.png")
    return root

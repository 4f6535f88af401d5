"""Backbones: any timm model by registered name, returning pooled embeddings.

Global and local crops must go through one model, so ViTs are built with
``dynamic_img_size=True`` (position embeddings interpolated per input size) and Swin with
``strict_img_size=False`` (padding and dynamic attention masks). Which of the two a model takes is
asked of the model's constructor, not guessed from its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import timm
from torch import nn

from selfsup.config.validation import GLOBAL_POOLS
from selfsup.errors import ConfigError
from selfsup.models.pretrained import load_pretrained

# Tried in order; the first kwargs the model constructor accepts wins.
_MULTI_RES_KWARGS: tuple[dict[str, Any], ...] = (
    {"dynamic_img_size": True},
    {"strict_img_size": False},
    {},
)


def create_backbone(name: str, *, drop_path_rate: float = 0.0, model_args: dict[str, Any] | None = None,
                    pretrained: bool | str = False) -> nn.Module:
    """Create ``timm.create_model(name, num_classes=0, ...)`` able to take crops of several sizes.

    Args:
        name: a timm model name, e.g. ``vit_small_patch16_224`` or ``swin_tiny_patch4_window7_224``.
        drop_path_rate: stochastic depth rate.
        model_args: extra kwargs for ``timm.create_model`` (``img_size``, ``patch_size``, ``embed_dim``...).
        pretrained: ``False``; ``True`` = timm's published weights (timm downloads them); or a path read by
            :func:`selfsup.models.pretrained.load_pretrained`.

    Returns:
        A timm model whose ``forward(x)`` maps (b, c, h, w) to pooled embeddings (b, num_features).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown timm model for 'model.name': '{name}' "
                          f"(e.g. {', '.join(close) or 'vit_small_patch16_224'})")
    model_args = dict(model_args or {})
    last_error: Exception | None = None
    for extra in _MULTI_RES_KWARGS:
        kwargs = {**extra, **model_args}
        try:
            model = timm.create_model(name, pretrained=pretrained is True, num_classes=0,
                                      drop_path_rate=drop_path_rate, **kwargs)
        except TypeError as e:  # the constructor does not take this multi-resolution flag
            last_error = e
            if not extra:
                break
            continue
        except (OSError, RuntimeError) as e:  # no network / not in the cache, or no published weights
            if pretrained is not True:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"model.pretrained=true: timm could not load its published weights for '{name}' "
                              f"({first}); they need a network the first time (then timm's cache), or give "
                              f"model.pretrained=PATH of local weights") from None
        if isinstance(pretrained, str):
            load_pretrained(model, pretrained)
        return model
    raise ConfigError(f"timm model '{name}' rejected model.args {model_args}: {last_error}")


def embed_dim(model: nn.Module) -> int:
    """Width of ``model(x)`` for a ``num_classes=0`` timm model: ``head_hidden_size`` where the pooled features go
    through a head layer before the (removed) classifier (MobileNetV3: 960 -> 1280), else ``num_features``."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)  # type: ignore[arg-type]


def check_crop_sizes(backbone: nn.Module, global_size: int, local_size: int | None) -> None:
    """Ask the model for its patch size: crops must be a multiple of it (ViT and Swin patch embeddings)."""
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if not patch or getattr(backbone.patch_embed, "dynamic_img_pad", False):
        return
    p = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    for key, size in (("views.global_crop_size", global_size), ("views.local_crop_size", local_size)):
        if size is not None and size % p:
            raise ConfigError(f"bad value for '{key}': {size} is not a multiple of the model's patch size {p}")


def check_global_pool(model: nn.Module, pool: str | None) -> None:
    """One line if ``model`` cannot give ``pool``-pooled features (``export.global_pool``); ``None`` always can."""
    if pool is None or getattr(model, "global_pool", None) == pool:
        return
    if not isinstance(getattr(model, "global_pool", None), str) or not hasattr(model, "num_prefix_tokens"):
        raise ConfigError(f"bad value for 'export.global_pool': '{pool}' ({type(model).__name__} has no token "
                          "pooling to choose; expected null for this backbone)")
    if pool == "token" and not getattr(model, "has_class_token", False):
        raise ConfigError(f"bad value for 'export.global_pool': 'token' ({type(model).__name__} has no class token; "
                          f"expected one of: {', '.join(p for p in GLOBAL_POOLS if p != 'token')})")


@contextmanager
def pooled_as(model: nn.Module, pool: str | None) -> Iterator[nn.Module]:
    """Within the block ``model(x)`` returns ``pool``-pooled features (b, d), restored on exit.

    ``pool`` is timm's ``global_pool`` of a ViT-style model: ``token`` = the class token, ``avg`` / ``max`` /
    ``avgmax`` = the patch tokens' mean / max / both averaged; the per-token final norm stays where the model has it
    (timm records it as ``fc_norm=False``, so ``save_for_hf`` writes a config that rebuilds the same features).
    ``None`` or the model's own pool: nothing changes. Used by ``selfsup export`` and the kNN monitor, so both score
    the features the export gives, while training keeps reading the model's own pool (DINO's class token).
    """
    check_global_pool(model, pool)
    before = getattr(model, "global_pool", None)
    if pool is None or before == pool:
        yield model
        return
    model.reset_classifier(0, global_pool=pool)  # type: ignore[operator]
    try:
        yield model
    finally:
        model.reset_classifier(0, global_pool=before)  # type: ignore[operator]

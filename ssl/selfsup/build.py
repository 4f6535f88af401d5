"""The edge where the config becomes objects: typed keyword arguments from here on down."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from torch import nn

from selfsup.config import Config, DataConfig, ViewsConfig
from selfsup.models.backbone import create_backbone
from selfsup.registry import get_spec


def make_backbone_fn(cfg: Config, *, pretrained: bool = True):
    """A factory for fresh backbones (methods with a momentum encoder may need more than one), initialised from
    ``model.pretrained`` unless ``pretrained=False`` (weights about to be loaded from a checkpoint anyway)."""
    return functools.partial(
        create_backbone, cfg.model.name, drop_path_rate=cfg.model.drop_path_rate, model_args=dict(cfg.model.args),
        pretrained=cfg.model.pretrained if pretrained else False,
    )


def build_method(cfg: Config, *, pretrained: bool = True) -> nn.Module:
    """``method.name`` + its section of the config -> a method module (see :mod:`selfsup.methods.base`): the
    spec's builder gets the section's fields and whatever its ``build_args`` takes from the rest of the config."""
    spec = get_spec(cfg.method.name)
    kwargs = dataclasses.asdict(getattr(cfg.method, spec.name))
    if spec.build_args is not None:
        kwargs.update(spec.build_args(cfg))
    return spec.build(make_backbone=make_backbone_fn(cfg, pretrained=pretrained), n_global=cfg.views.n_global,
                      **kwargs)


def build_transform(cfg: Config):
    """Multi-crop views for every method (contrastive configs set ``views.n_local=0``).

    ``views.backend=lightly`` uses lightly's ``DINOTransform`` itself (the reference); the default ``fast`` backend
    applies the same ops with fewer image passes (see :mod:`selfsup.data.views`)."""
    v = cfg.views
    if v.backend == "lightly":
        from lightly.transforms import DINOTransform

        return DINOTransform(
            global_crop_size=v.global_crop_size, global_crop_scale=tuple(v.global_crop_scale),
            local_crop_size=v.local_crop_size, local_crop_scale=tuple(v.local_crop_scale), n_local_views=v.n_local,
            normalize={"mean": list(v.mean), "std": list(v.std)}, gaussian_blur=tuple(v.blur_probs),
            solarization_prob=v.solarize_prob, hf_prob=v.hflip_prob, vf_prob=v.vflip_prob, rr_prob=v.rot90_prob,
            cj_prob=v.cj_prob, cj_strength=0.5 * v.cj_strength, random_gray_scale=v.gray_prob,
        )
    return multicrop_transform(v)


def multicrop_transform(v: ViewsConfig):
    """The ``fast`` backend's :class:`~selfsup.data.views.MultiCropTransform` of a ``views`` section."""
    from selfsup.data.views import MultiCropTransform

    return MultiCropTransform(
        global_crop_size=v.global_crop_size, global_crop_scale=tuple(v.global_crop_scale), n_global=v.n_global,
        local_crop_size=v.local_crop_size, local_crop_scale=tuple(v.local_crop_scale), n_local=v.n_local,
        blur_probs=tuple(v.blur_probs), solarize_prob=v.solarize_prob, mean=tuple(v.mean), std=tuple(v.std),
        hflip_prob=v.hflip_prob, vflip_prob=v.vflip_prob, rot90_prob=v.rot90_prob, cj_prob=v.cj_prob,
        cj_strength=v.cj_strength, gray_prob=v.gray_prob,
    )


def stream_options(data: DataConfig) -> dict[str, Any]:
    """The :class:`~selfsup.data.stream.ShardStream` keyword arguments that a ``data`` section sets."""
    return dict(shuffle_buffer=data.shuffle_buffer, interleave=data.shard_interleave,
                max_bad_fraction=data.max_bad_fraction, bad_window=data.bad_window,
                max_sample_bytes=data.max_sample_bytes, allow_pipe=data.allow_pipe)


def build_loader(cfg: Config, *, urls: list[str], rank: int, world_size: int, position=None, pin_memory: bool,
                 shard_counts: dict[str, tuple[int, str]] | None = None):
    """The streaming loader of this process: its own shards, its own workers (never ``accelerator.prepare``d).

    ``position`` (a ``DataPosition`` loaded from a checkpoint) makes the stream continue exactly where it stopped;
    ``None`` or an empty one starts at epoch 0. ``shard_counts``: the shard index's counts, checked as shards are
    read (:class:`~selfsup.data.stream.ShardStream`).
    """
    from selfsup.data.loader import make_loader
    from selfsup.data.stream import ShardStream

    transform = build_transform(cfg)
    dataset = ShardStream(
        urls=urls,
        transform=transform,
        batch_size=cfg.train.batch_size,
        seed=cfg.run.seed,
        rank=rank,
        world_size=world_size,
        start_positions=position.start_positions() if position is not None else None,
        first_worker=position.next_worker if position is not None else 0,
        draft_size=getattr(transform, "draft_size", None) if cfg.data.draft_decode else None,
        shard_counts=shard_counts,
        **stream_options(cfg.data),
    )
    return make_loader(dataset, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory and pin_memory)

"""``selfsup views``: a picture of the exact crops the training loader feeds, before paying for a run.

The crops come from :func:`selfsup.build.build_loader`, the same call the training loop makes (same
``build_transform``, same :class:`~selfsup.data.stream.ShardStream` with its per-sample seeding from
``(run.seed, epoch, key)``), with only the batch size set to ``n`` and the loader kept in the main
process. So each sample's views are bit for bit the ones training would compute for that sample in
epoch 0, whatever the number of processes and workers (those only decide *which* samples a process
reads first). Views are un-normalised with ``views.mean`` / ``views.std`` for display.

Shapes: n = samples, v = views per sample (``views.n_global`` global, then ``views.n_local`` local),
each view (3, s, s).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from selfsup.config import Config
from selfsup.errors import ConfigError


def training_views(cfg: Config, n: int) -> tuple[list[torch.Tensor], list[str]]:
    """The first ``n`` samples' views as the training loader makes them (1 process, main-process reading).

    Returns:
        ``views`` (a list of v tensors (n, 3, s, s), normalised as fed to the model; global views first) and
        the ``n`` sample keys.
    """
    from selfsup.build import build_loader
    from selfsup.data.shard_list import expand_shards

    if n < 1:
        raise ConfigError(f"--n {n}; expected a positive number of samples")
    if not cfg.data.shards:
        raise ConfigError("data.shards is empty; expected data.shards=PATH (a folder of .tar shards, a pattern or "
                          "a list)")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=n),
                              data=dataclasses.replace(cfg.data, num_workers=0))
    loader = build_loader(cfg, urls=expand_shards(cfg.data.shards), rank=0, world_size=1, pin_memory=False)
    batch = next(iter(loader))
    return batch["views"], batch["keys"]


def to_display(view: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, s, s) normalised view -> (s, s, 3) float RGB in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (view.float() * s + m).clamp(0, 1).permute(1, 2, 0)


def write_views_png(cfg: Config, out: str | Path, *, n: int = 4) -> Path:
    """Draw the views of ``n`` samples (one row each: global crops, then local crops) into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}; expected a .png file name")
    if out.exists():
        raise ConfigError(f"--out {out} exists; expected a new file name (views does not overwrite files)")
    views, keys = training_views(cfg, n)
    v = cfg.views
    n_views = len(views)
    fig, axes = plt.subplots(len(keys), n_views, figsize=(1.6 * n_views, 1.7 * len(keys)), squeeze=False)
    for col, batch in enumerate(views):
        kind = "global" if col < v.n_global else "local"
        number = col + 1 if col < v.n_global else col + 1 - v.n_global
        for row in range(len(keys)):
            ax = axes[row][col]
            ax.imshow(to_display(batch[row], tuple(v.mean), tuple(v.std)).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{kind} {number}\n{batch.shape[-1]} px", fontsize=8)
            if col == 0:
                ax.set_ylabel(keys[row][-18:], fontsize=7)
    fig.suptitle(f"training views ({v.backend} backend, run.seed={cfg.run.seed}, epoch 0): global scale "
                 f"{list(v.global_crop_scale)}, local scale {list(v.local_crop_scale)}, blur p={list(v.blur_probs)}, "
                 f"solarize p={v.solarize_prob}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

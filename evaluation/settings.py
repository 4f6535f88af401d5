"""The settings every evaluation stage of one call shares, and their defaults: defined here once.

The command line (:mod:`evaluation.cli`) takes its flag defaults from :data:`DEFAULTS`, the stages take their
keyword defaults from it, and :func:`evaluation.pipeline.run_report` takes one :class:`EvalSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfsup.knn import DINO_TEMPERATURE


@dataclass(frozen=True)
class EvalSettings:
    """Data, compute and protocol settings of an evaluation.

    Attributes:
        label_fractions: shares of each class's training labels (stratified, at least one per class).
        seeds: label subsets (and probe seeds) per fraction.
        max_train, max_val: seeded random subsets of the train / val images (None: all).
        img_size: input size (None: the export's own).
        batch_size, num_workers, device: feature extraction (``device``: auto | cpu | cuda).
        allow_pipe: accept ``pipe:`` lines in shard lists (they run a shell command).
        knn_ks, knn_temperature: DINO's weighted kNN (Caron et al. 2021: k = 20, T = 0.07).
        knn_k: the k of the headline kNN figure (plots, the cost table, robustness).
        linear_steps: full-batch optimizer steps of each linear probe.
        finetune_steps, finetune_lr, finetune_batch_size: the fine-tune stage.
    """

    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    max_train: int | None = None
    max_val: int | None = None
    img_size: int | None = None
    batch_size: int = 128
    num_workers: int = 0
    device: str = "auto"
    allow_pipe: bool = False
    knn_ks: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = DINO_TEMPERATURE
    knn_k: int = 20
    linear_steps: int = 300
    finetune_steps: int = 100
    finetune_lr: float = 5e-4
    finetune_batch_size: int = 64

    @property
    def features(self) -> dict[str, object]:
        """The feature-extraction keyword arguments of every stage."""
        return {"img_size": self.img_size, "batch_size": self.batch_size, "num_workers": self.num_workers,
                "device": self.device}


DEFAULTS = EvalSettings()
DETECTION_FRACTIONS = (0.25, 1.0)  # `selfsup-eval detect`: a detector needs more labels than a probe
DETECTION_SEEDS = 1

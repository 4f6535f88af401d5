"""Teacher targets of the DINO family: centering, and the cross-entropy that compares them with the student.

Two ways keep a self-distillation teacher from collapsing (Caron et al. 2021, Sec. 5.3; Oquab et al. 2023, Sec. 4):

- ``mean``: subtract an EMA of the teacher's batch mean, then a sharp softmax (DINO; lightly's ``DINOLoss``). On
  small or homogeneous data the center can absorb everything the images share and leave a near-uniform teacher.
- ``sinkhorn_knopp``: the teacher's batch of scores becomes a soft assignment whose columns (prototypes) are used
  equally and whose rows (images) are distributions (SwAV's Sinkhorn-Knopp, Caron et al. 2020; DINOv2's teacher
  centering with 3 iterations). Built on lightly's ``sinkhorn`` (SwAV loss), which gathers over processes.

Shapes: n = teacher rows (views x batch), k = prototypes.
"""

from __future__ import annotations

import torch
from lightly.loss.swav_loss import sinkhorn
from torch import Tensor
from torch.nn import functional as F

SINKHORN_ITERATIONS = 3  # DINOv2's n_iterations


@torch.no_grad()
def sinkhorn_knopp_targets(logits: Tensor, temperature: float, iterations: int = SINKHORN_ITERATIONS) -> Tensor:
    """Teacher probabilities (n, k) from scores (n, k): rows sum to 1, columns to n/k (equal prototype use).

    ``exp(logits / temperature)`` is shifted by its global maximum first: the Sinkhorn-Knopp normalisation divides
    by the total, so a constant shift leaves the result unchanged and ``exp`` cannot overflow. Scores more than
    ``80 x temperature`` below the maximum are raised to that floor (``exp(-80)`` is still a normal float32), so a
    prototype that no image scores cannot underflow to a zero row and a division by zero.
    """
    logits = logits.float()
    shifted = (logits - logits.max()).clamp_min(-80.0 * temperature)
    gather = torch.distributed.is_available() and torch.distributed.is_initialized()
    return sinkhorn(shifted, iterations=iterations, epsilon=temperature, gather_distributed=gather)


def mean_centered_targets(logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINO's teacher probabilities (n, k): ``softmax((logits - center) / temperature)`` around the EMA center that
    lightly's ``DINOLoss`` keeps (computed here for the collapse signals; the loss computes its own)."""
    return torch.softmax((logits.float() - center.view(1, -1)) / temperature, dim=-1)


def cross_view_entropy(teacher_probs: list[Tensor], student_logits: list[Tensor], student_temp: float) -> Tensor:
    """DINO's loss on given teacher probabilities: the mean over (teacher view i, student view j != i) of
    ``-sum_k p_i log softmax(s_j / student_temp)``, averaged over the batch; the same terms as lightly's
    ``DINOLoss``, which only takes raw teacher scores (it centers them itself, by the mean).

    Args:
        teacher_probs: g tensors (b, k), each row a distribution.
        student_logits: v tensors (b, k), global views first.
    """
    t = torch.stack(teacher_probs)  # (g, b, k)
    s = F.log_softmax(torch.stack(student_logits) / student_temp, dim=-1)  # (v, b, k)
    loss = -torch.einsum("tbk,sbk->ts", t, s)  # (g, v) summed over the batch
    loss.fill_diagonal_(0)
    n_terms = loss.numel() - min(loss.shape)
    return loss.sum() / (n_terms * t.shape[1])


def masked_patch_entropy(teacher_probs: Tensor, student_logits: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """iBOT's loss on given teacher probabilities of the masked tokens: each token's cross-entropy, weighted by one
    over its image's masked-token count, summed and divided by the number of images; the terms of lightly's
    ``IBOTPatchLoss`` (which, like ``DINOLoss``, centers raw teacher scores by the mean itself).

    Args:
        teacher_probs: (m, k) distributions at the masked tokens, in ``masks[masks]`` order.
        student_logits: (m, k) the student's scores there.
        masks: (b, h, w) bool, True = masked; ``m = masks.sum()``.
    """
    loss = -(teacher_probs * F.log_softmax(student_logits / student_temp, dim=-1)).sum(-1)  # (m,)
    weight = (1.0 / masks.sum(dim=(1, 2), keepdim=True).clamp(min=1)).expand_as(masks)[masks]  # (m,)
    return (loss * weight).sum() / masks.shape[0]


def entropy(probs: Tensor) -> Tensor:
    """Mean entropy of the rows of ``probs`` (n, k): 0 = one-hot, ln(k) = uniform."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()

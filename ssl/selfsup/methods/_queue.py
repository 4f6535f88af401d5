"""A FIFO queue of momentum keys that is part of the training state (MoBY, Xie et al. 2021).

Built on lightly's :class:`~lightly.models.modules.memory_bank.MemoryBankModule`, which already does the
random L2-normalised initialisation, the FIFO pointer and the gathering of keys from every process
before they are enqueued. lightly registers its bank as a non-persistent buffer (it is not saved);
MoBY's queues must survive a resume, so they are registered again as persistent buffers and show up
in ``state_dict()`` (and so in every checkpoint) as ``bank`` and ``bank_ptr``.

Shapes: n = keys enqueued per step (batch x processes), K = queue size, d = key dim.
"""

from __future__ import annotations

from lightly.models.modules.memory_bank import MemoryBankModule
from torch import Tensor


class KeyQueue(MemoryBankModule):
    """``size`` L2-normalised keys of dimension ``dim``; keys from all processes are enqueued together.

    Args:
        size: number of keys kept (K; MoBY uses 4096).
        dim: key dimension (d).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__(size=(size, dim), gather_distributed=True, feature_dim_first=False)
        # Re-registering an existing buffer with persistent=True makes it part of state_dict().
        self.register_buffer("bank", self.bank, persistent=True)
        self.register_buffer("bank_ptr", self.bank_ptr, persistent=True)

    @property
    def ptr(self) -> int:
        """Index where the next key goes."""
        return int(self.bank_ptr)

    def swap(self, keys: Tensor, *, update: bool = True) -> Tensor:
        """Return the queue before this step, (K, d), detached; then enqueue ``keys`` (n, d) if ``update``.

        Under ``torch.distributed`` the keys of every process are gathered and enqueued in rank order, so
        every process holds the same queue.
        """
        _, queue = self.forward(keys.detach(), update=update)
        assert queue is not None
        return queue

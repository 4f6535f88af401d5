"""Negatives gathered across processes: two CPU processes (gloo) vs one process on the concatenated batch.

With w processes each computing its loss on its own b queries against the keys of all w*b samples, the
mean of the w losses must equal the single-process loss on the w*b batch, and each process's gradient
(summed by the gather's backward, then averaged by DDP) must equal w times the full-batch gradient on its
rows. Checked for SimCLR's NT-Xent, MoCo v3's ctr, and MoBY's queue (same keys enqueued everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import NTXentLoss

from selfsup.methods._mocov3_model import contrastive_loss
from selfsup.methods._queue import KeyQueue
from tests.fixtures.launch import free_port

WORLD, B, D = 2, 4, 8


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(WORLD * B, D, generator=g) for name in ("a", "b", "q", "k")}


def _losses(a, b, q, k) -> dict[str, torch.Tensor]:
    """The losses under test on (local) inputs; gradients land in ``a.grad``, ``b.grad``, ``q.grad``."""
    return {
        "simclr": NTXentLoss(temperature=0.2, gather_distributed=True)(a, b),
        "mocov3": contrastive_loss(q, k, 0.2),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * B, (rank + 1) * B)
        x = {n: t[rows].clone().requires_grad_(n != "k") for n, t in _inputs().items()}
        result = {}
        for name, loss in _losses(x["a"], x["b"], x["q"], x["k"]).items():
            result[name] = loss.detach()
            loss.backward()
        result |= {f"grad_{n}": x[n].grad for n in ("a", "b", "q")}
        torch.manual_seed(0)  # the loop seeds every process alike before building the method
        queue = KeyQueue(16, D)
        queue.swap(torch.nn.functional.normalize(x["k"], dim=1))
        result |= {"queue": queue.bank.clone(), "queue_ptr": queue.bank_ptr.clone()}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    full = {n: t.clone().requires_grad_(n != "k") for n, t in _inputs().items()}
    single = _losses(full["a"], full["b"], full["q"], full["k"])
    for name, loss in single.items():
        torch.testing.assert_close(sum(r[name] for r in ranks) / WORLD, loss.detach())
        loss.backward()
    for n in ("a", "b", "q"):
        # DDP averages the per-process gradients: grad_rank / WORLD is the full-batch gradient of its rows
        gathered = torch.cat([r[f"grad_{n}"] for r in ranks]) / WORLD
        torch.testing.assert_close(gathered, full[n].grad)

    # every process enqueued the keys of both processes, in rank order
    keys = torch.nn.functional.normalize(_inputs()["k"], dim=1)
    for r in ranks:
        torch.testing.assert_close(r["queue"][: WORLD * B], keys)
        assert int(r["queue_ptr"]) == WORLD * B
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"])

"""Stream webdataset shards as batches of multi-crop views, with an exact, resumable position.

Self-supervised pretraining is step-based and runs for days, so the reader has three jobs beyond
"read tar files":

1. **Disjoint and complete**: each (rank, worker) slot reads its own part of every nominal epoch,
   so one epoch over all slots sees every sample exactly once.
2. **Deterministic**: shard order, sample shuffle and augmentations are pure functions of
   ``(seed, epoch, slot, key)``; nothing depends on what happened before.
3. **Resumable**: a batch carries ``(epoch, offset)`` of its worker; restarting from that
   position regenerates the epoch, fast-forwards ``offset`` raw samples through the shuffle buffer
   without decoding, and continues bit-identically (:class:`~selfsup.data.position.DataPosition` keeps
   these positions in the training checkpoint).

Broken data never kills a run: unreadable shards and undecodable samples are skipped, counted
by reason and logged with their key, until more than ``max_bad_fraction`` of a sliding window of
samples is bad, which means the data itself is wrong (:mod:`selfsup.data.skips`).

Shape legend: b = batch (per process), c = channels, h/w = view height/width.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count, islice
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from selfsup.data.decode import IMAGE_KEYS, REASON_NO_IMAGE, BadSample, decode_rgb
from selfsup.data.shard_urls import check_url, open_shard
from selfsup.data.skips import REASON_MEMBER_TOO_LARGE, REASON_TRANSFORM, SkipTracker
from selfsup.errors import DataError

# A slot that sees no sample in this many epochs in a row has no data: fail instead of spinning.
MAX_EMPTY_EPOCHS = 20
WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members that are not sample data


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` that is the same on every machine and Python run."""
    # surrogateescape: a tar member name that is not UTF-8 reaches us with its raw bytes escaped; hash those bytes
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded_rngs(seed: int, *, restore: bool) -> Iterator[None]:
    """Seed torch, ``random`` and numpy (lightly's blur/solarize use it); restore them if asked."""
    if restore:
        saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    # not accelerate's set_seed: it rejects 63-bit seeds for numpy, also seeds CUDA in workers, and cannot restore.
    # Not torch.manual_seed either: it also queues a CUDA seeding with a formatted stack trace on every call (70 us
    # a sample, 35% of a data worker's time on 32 px images); the views draw from the CPU generator only.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        if restore:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


@dataclass(frozen=True)
class _TooLarge:
    """Stands in for a member's bytes that were not read: ``size`` (from the tar header) > ``limit``."""

    size: int
    limit: int


def _tar_members(stream: Any, url: str, *, max_bytes: int | None,
                 handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """Regular members of a tar stream as ``{"fname", "data", "__url__"}`` (what ``group_by_keys`` takes).

    A member larger than ``max_bytes`` is not read: its data is a :class:`_TooLarge`, so its sample is skipped
    and counted once. webdataset's metadata members (``__name__``) are skipped, as webdataset does.
    """
    # Hand-written: webdataset's tar_file_iterator reads every member whole before anything can look at its size.
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if not info.isreg() or WDS_META.match(info.name):
                continue
            if max_bytes is not None and info.size > max_bytes:
                data: Any = _TooLarge(info.size, max_bytes)  # stream mode skips the unread bytes in chunks
            else:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
            yield {"fname": info.name, "data": data, "__url__": url}
            tar.members = []  # stream mode: do not keep every header of the shard
    except Exception as exn:  # noqa: BLE001 - a broken shard is counted by the handler, never fatal
        handler(exn)


@dataclass(frozen=True)
class _Slot:
    rank: int
    worker: int
    num_workers: int
    world_size: int

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


class ShardStream(IterableDataset):
    """An infinite, deterministic, resumable stream of multi-crop batches from webdataset shards.

    For epoch ``e = 0, 1, ...`` the shard list is shuffled with a seed from ``(seed, e)`` and dealt to
    slot ``s = rank * num_workers + worker`` of ``S = world_size * num_workers`` as ``shards[s::S]``;
    with fewer shards than slots, the ``k`` slots sharing a shard keep the samples with
    ``index % k == s // n_shards``. Samples go through a seeded shuffle buffer, are decoded and
    transformed with randomness seeded from ``(seed, epoch, key)``, and are batched inside the
    worker; epochs follow each other without a gap.

    Each batch is ``{"views": list[Tensor (b, c, h, w)] (global views first), "keys": list[str],
    "cls": LongTensor (b,) | None, "meta": {"rank", "slot", "worker", "epoch", "offset", "skipped",
    "sample_epochs"}}``. ``offset`` counts the samples (good and bad) that left the shuffle buffer in
    ``epoch`` up to and including this batch's last one; ``skipped`` counts skips by reason since the
    previous batch of this worker.

    Example:
        >>> ds = ShardStream(urls=expand_shards("shards/"), transform=multicrop_transform(cfg.views),
        ...                  batch_size=64, seed=0, **stream_options(cfg.data))  # doctest: +SKIP
        >>> batch = next(iter(make_loader(ds, num_workers=8, pin_memory=True)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        urls: Sequence[str],
        transform: Callable[[Image.Image], list[Tensor]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int,
        interleave: int,
        start_positions: dict[int, tuple[int, int]] | None = None,
        first_worker: int = 0,
        draft_size: tuple[int, int] | None = None,
        max_bad_fraction: float,
        bad_window: int,
        max_sample_bytes: int | None,
        allow_pipe: bool,
        shard_counts: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        """Args:
        urls: shard paths (see :func:`selfsup.data.shard_list.expand_shards`).
        transform: PIL RGB image -> list of view tensors, e.g. ``MultiCropTransform``.
        batch_size: samples per batch in this process.
        seed: run seed; shard order, shuffle and augmentations derive from it.
        rank, world_size: this process and the number of processes.
        shuffle_buffer: samples in the per-worker shuffle buffer (<= 1: no shuffle).
        interleave: shards each worker reads at once, a sample from each in turn.
        start_positions: ``{worker: (epoch, offset)}`` to resume from (``DataPosition.start_positions()``).
        first_worker: worker whose batch comes first after a resume (``DataPosition.next_worker``);
            used by :func:`selfsup.data.loader.make_loader` to keep the round-robin order.
        draft_size: decode JPEGs at reduced size, at least this big (see ``decode_rgb``).
        max_bad_fraction, bad_window: fail when more than ``max_bad_fraction * bad_window`` of the
            last ``bad_window`` samples were bad.
        max_sample_bytes: a sample with a larger member is skipped (``too_large``) without reading that member
            (``data.max_sample_bytes``); ``None`` = no limit.
        allow_pipe: accept ``pipe:CMD`` URLs (``data.allow_pipe``).
        shard_counts: ``{url: (samples, index file)}`` from a shard index
            (:func:`selfsup.data.shard_index.read_shard_index`): a shard read whole with another number of samples
            stops the run with a :class:`DataError` (the index is stale, so the epoch length is wrong).

        The ``data.*`` values come from :func:`selfsup.build.stream_options` and are checked where the config
        is loaded.
        """
        super().__init__()
        if not urls:
            raise DataError("urls: no shards given; expected at least one .tar path")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
        self.urls = list(urls)
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.interleave = interleave
        self.start_positions = dict(start_positions or {})
        self.first_worker = first_worker
        self.draft_size = draft_size
        self.max_bad_fraction = max_bad_fraction
        self.bad_window = bad_window
        self.max_sample_bytes = max_sample_bytes
        self.allow_pipe = allow_pipe
        self.shard_counts = dict(shard_counts or {})
        for url in self.urls:
            check_url(url, allow_pipe=allow_pipe, where="urls")

    # ------------------------------------------------------------------ raw samples
    def _read_shard(self, url: str, skips: SkipTracker) -> Iterator[dict[str, Any]]:
        """Samples of one tar file; shard-level errors are counted, never raised. A shard read to its end with
        another number of samples than its shard index says raises :class:`DataError` (a stale index)."""

        failed = False

        def handler(exn: BaseException) -> bool:
            nonlocal failed
            failed = True
            return skips.shard_error(url, exn)

        try:
            stream = open_shard(url, allow_pipe=self.allow_pipe)
        except Exception as exn:  # noqa: BLE001
            handler(exn)
            return
        read = 0
        with stream:
            files = _tar_members(stream, url, max_bytes=self.max_sample_bytes, handler=handler)
            for sample in group_by_keys(files, handler=handler):
                read += 1
                yield sample
        expected = self.shard_counts.get(url)
        if expected is not None and not failed and read != expected[0]:  # a broken shard is counted, not stale
            raise DataError(f"{url}: holds {read} samples but its shard index {expected[1]} says {expected[0]}; the "
                            "index is stale (the epoch length was computed from it): rewrite the index, or count "
                            "the shards with data.shard_index=none, or set data.samples_per_epoch")

    def _epoch_shards(self, epoch: int, slot: _Slot) -> tuple[list[str], int, int]:
        """This slot's shards in ``epoch`` and the ``(k, r)`` sample filter ``index % k == r``."""
        shards = list(self.urls)
        random.Random(stable_seed(self.seed, epoch)).shuffle(shards)
        n, s, total = len(shards), slot.index, slot.count
        if n >= total:
            return shards[s::total], 1, 0
        return [shards[s % n]], len(range(s % n, total, n)), s // n

    def _one_shard(self, url: str, k: int, r: int, skips: SkipTracker) -> Iterator[dict[str, Any]]:
        for index, sample in enumerate(self._read_shard(url, skips)):
            if index % k == r:
                yield sample

    def _raw_samples(self, epoch: int, slot: _Slot, skips: SkipTracker) -> Iterator[dict[str, Any]]:
        """This slot's samples, taken in turn from up to ``interleave`` open shards (so that shards written
        in class order still mix before the shuffle buffer)."""
        shards, k, r = self._epoch_shards(epoch, slot)
        pending = iter(shards)
        open_: list[Iterator[dict[str, Any]]] = []
        while True:
            while len(open_) < self.interleave and (url := next(pending, None)) is not None:
                open_.append(self._one_shard(url, k, r, skips))
            if not open_:
                return
            for it in list(open_):
                sample = next(it, None)
                if sample is None:
                    open_.remove(it)
                else:
                    yield sample

    def _shuffled(self, epoch: int, slot: _Slot, skips: SkipTracker) -> Iterator[dict[str, Any]]:
        """Raw samples of ``epoch`` through the seeded shuffle buffer."""
        raw = self._raw_samples(epoch, slot, skips)
        if self.shuffle_buffer <= 1:
            yield from raw
            return
        rng = random.Random(stable_seed(self.seed, epoch, slot.rank, slot.worker))
        buf: list[dict[str, Any]] = []
        for sample in raw:
            if len(buf) < self.shuffle_buffer:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf

    # ------------------------------------------------------------------ decoded samples
    def _views(self, sample: dict[str, Any], epoch: int, restore_rng: bool) -> list[Tensor]:
        big = next((v for v in sample.values() if isinstance(v, _TooLarge)), None)
        if big is not None:
            raise BadSample(REASON_MEMBER_TOO_LARGE,
                            f"a member of {big.size} bytes > data.max_sample_bytes={big.limit}")
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None:
            raise BadSample(REASON_NO_IMAGE, f"members: {sorted(k for k in sample if not k.startswith('__'))}")
        img = decode_rgb(data, draft_size=self.draft_size)
        with seeded_rngs(stable_seed(self.seed, epoch, sample["__key__"]), restore=restore_rng):
            try:
                return self.transform(img)
            except Exception as e:  # noqa: BLE001 - one odd image must not stop a run; counted + logged
                raise BadSample(REASON_TRANSFORM, f"{type(e).__name__}: {e}") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        slot = _Slot(rank=self.rank, worker=worker, num_workers=num_workers, world_size=self.world_size)
        return self._batches(slot, restore_rng=info is None)

    def _batches(self, slot: _Slot, *, restore_rng: bool) -> Iterator[dict[str, Any]]:
        start_epoch, start_offset = self.start_positions.get(slot.worker, (0, 0))
        skips = SkipTracker(max_bad_fraction=self.max_bad_fraction, bad_window=self.bad_window, slot=slot.index)
        batch: list[tuple[str, list[Tensor], int | None, int]] = []
        empty_epochs = 0
        for epoch in count(start_epoch):
            stream = self._shuffled(epoch, slot, skips)
            offset = 0
            if epoch == start_epoch and start_offset:
                # Fast-forward without decoding; its shard errors were reported before the checkpoint.
                offset = sum(1 for _ in islice(stream, start_offset))
                skips.take()
            seen = 0
            for sample in stream:
                offset += 1
                seen += 1
                key = sample.get("__key__", "?")
                try:
                    views = self._views(sample, epoch, restore_rng)
                except BadSample as bad:
                    skips.bad_sample(key, sample.get("__url__"), bad)  # raises when too many are bad
                    continue
                skips.good_sample()
                batch.append((key, views, _parse_cls(sample.get("cls")), epoch))
                if len(batch) == self.batch_size:
                    yield _collate(batch, meta={
                        "rank": slot.rank, "slot": slot.index, "worker": slot.worker,
                        "epoch": epoch, "offset": offset, "skipped": skips.take(),
                    })
                    batch = []
            empty_epochs = 0 if seen else empty_epochs + 1
            if empty_epochs >= MAX_EMPTY_EPOCHS:
                raise DataError(
                    f"slot {slot.index} of {slot.count} (rank {slot.rank}, worker {slot.worker}) got no samples in "
                    f"{MAX_EMPTY_EPOCHS} epochs from {len(self.urls)} shards (skipped: {dict(skips.counts)}); "
                    "check the shards or use fewer workers"
                )


def _parse_cls(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        return None


def _collate(samples: list[tuple[str, list[Tensor], int | None, int]], *, meta: dict[str, Any]) -> dict[str, Any]:
    n_views = len(samples[0][1])
    views = [torch.stack([s[1][i] for s in samples]) for i in range(n_views)]  # each (b, c, h, w)
    labels = [s[2] for s in samples]
    cls = None if any(c is None for c in labels) else torch.tensor(labels, dtype=torch.long)
    meta = dict(meta, sample_epochs=[s[3] for s in samples])
    return {"views": views, "keys": [s[0] for s in samples], "cls": cls, "meta": meta}

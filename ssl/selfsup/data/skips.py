"""Skipped data: broken shards and samples are counted by reason and logged, never fatal, until too many are bad.

One :class:`SkipTracker` per stream worker counts the skips since its last batch (they travel in the batch's
``meta["skipped"]`` into :class:`~selfsup.data.position.DataPosition` and the run summary) and keeps a sliding
window of the last ``data.bad_window`` samples: when more than ``data.max_bad_fraction`` of them were bad, the
data itself is wrong and the run stops with a :class:`~selfsup.errors.DataError`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque

from selfsup.data.decode import BadSample
from selfsup.data.shard_urls import ShardOpenError
from selfsup.errors import DataError

logger = logging.getLogger(__name__)

# Reasons besides those of decoding (selfsup.data.decode.REASON_*).
REASON_MISSING_SHARD = "missing_shard"
REASON_CORRUPT_SHARD = "corrupt_shard"
REASON_UNREACHABLE = "unreachable_shard"
REASON_TRANSFORM = "transform_error"
REASON_MEMBER_TOO_LARGE = "too_large"  # a tar member over data.max_sample_bytes
LOG_FIRST_SKIPS = 20  # samples logged one by one, then one line every LOG_EVERY_SKIPS
LOG_EVERY_SKIPS = 1000


def shard_error_reason(exn: BaseException) -> str:
    """The skip reason of an error that ends the reading of a shard."""
    if isinstance(exn, ShardOpenError):
        return REASON_UNREACHABLE
    if isinstance(exn, FileNotFoundError):
        return REASON_MISSING_SHARD
    return REASON_CORRUPT_SHARD


class SkipTracker:
    """Skip counts of one stream worker (``counts``: by reason, since the last :meth:`take`) and its bad window.

    Args:
        max_bad_fraction, bad_window: fail when more than ``max_bad_fraction * bad_window`` of the last
            ``bad_window`` samples were bad. slot: the worker's slot, named in the log lines.
    """

    def __init__(self, *, max_bad_fraction: float, bad_window: int, slot: int) -> None:
        self.max_bad_fraction, self.bad_window, self.slot = max_bad_fraction, bad_window, slot
        self.counts: Counter[str] = Counter()
        self.window: deque[str | None] = deque(maxlen=bad_window)
        self.samples_skipped = 0

    def shard_error(self, url: str, exn: BaseException) -> bool:
        """Count a shard whose rest is skipped (a webdataset ``handler``: returns ``True``, go on)."""
        reason = shard_error_reason(exn)
        self.counts[reason] += 1
        logger.warning("skipping the rest of shard %s (%s): %s", url, reason, exn)
        return True

    def bad_sample(self, key: str, url: str | None, bad: BadSample) -> None:
        """Count and log a skipped sample.

        Raises:
            DataError: more than ``max_bad_fraction`` of the window is bad.
        """
        self.counts[bad.reason] += 1
        self.samples_skipped += 1
        self.window.append(bad.reason)
        if self.samples_skipped <= LOG_FIRST_SKIPS or self.samples_skipped % LOG_EVERY_SKIPS == 0:
            logger.warning("skipped sample %s in %s (%s) [%d skipped so far in slot %d]",
                           key, url, bad, self.samples_skipped, self.slot)
        bad_reasons = [r for r in self.window if r is not None]
        if len(bad_reasons) > self.max_bad_fraction * self.bad_window:
            reasons = ", ".join(f"{k}={v}" for k, v in Counter(bad_reasons).most_common())
            raise DataError(
                f"{len(bad_reasons)} of the last {len(self.window)} samples were bad ({reasons}); "
                "check the shards or raise data.max_bad_fraction"
            )

    def good_sample(self) -> None:
        self.window.append(None)

    def take(self) -> dict[str, int]:
        """The counts since the last call (a batch's ``meta["skipped"]``); they start again from zero."""
        counts = dict(self.counts)
        self.counts.clear()
        return counts

"""Shard URLs: which ones may be opened, and how (local files, ``http(s)://`` with retries, other schemes).

A shard list is data, not a script. webdataset opens ``pipe:CMD`` by running ``CMD`` in a shell, so a
``pipe:`` URL is refused unless the user asks for it explicitly (``data.allow_pipe=true`` for pretraining,
``--allow-pipe`` for ``selfsup-eval``). ``http(s)://`` shards are streamed with the standard library (a few
tries with back-off, then one :class:`ShardOpenError` line); other schemes go through webdataset's
``gopen`` table (``gs://``, ``hf://``, ``ais://``, ``sftp://`` ...) or, failing that, fsspec (``s3://`` with
s3fs installed, ...).
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import BinaryIO

from selfsup.errors import DataError

PIPE = "pipe:"
HTTP_TRIES = 3  # attempts per http(s) shard before it counts as unreachable
HTTP_RETRY_DELAY_S = 0.5  # doubled after each failed attempt
HTTP_TIMEOUT_S = 60.0  # per blocking socket operation, not per shard
ALLOW_PIPE_HINT = "pass data.allow_pipe=true (selfsup pretrain) or --allow-pipe (selfsup-eval) if you trust it"


class ShardOpenError(DataError):
    """A remote shard could not be opened (after the retries, where the scheme has them)."""


def is_remote(url: str) -> bool:
    """``scheme://...`` or ``pipe:...`` (not a local path)."""
    return "://" in url or url.startswith(PIPE)


def check_url(url: str, *, allow_pipe: bool, where: str) -> None:
    """Refuse a ``pipe:`` URL unless ``allow_pipe``; ``where`` names its origin (``FILE:LINE`` of a shard list).

    Raises:
        DataError: one line naming ``where`` and the URL.
    """
    if url.startswith(PIPE) and not allow_pipe:
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise DataError(f"{where}: refusing shard {shown!r}: a pipe: URL runs a shell command and a shard list is "
                        f"data, not a script; {ALLOW_PIPE_HINT}")


@contextlib.contextmanager
def _webdataset_secure(on: bool) -> Iterator[None]:
    """webdataset's secure mode (no pipes, no GOPEN_REWRITE) for one ``gopen`` call unless pipes are allowed."""
    import webdataset.utils as wds_utils

    saved = wds_utils.enforce_security
    wds_utils.enforce_security = saved or on
    try:
        yield
    finally:
        wds_utils.enforce_security = saved


def _open_http(url: str) -> BinaryIO:
    # stdlib urllib instead of webdataset's gopen_curl: no curl binary needed, and typed errors for the one-line message
    problem = ""
    for attempt in range(HTTP_TRIES):
        if attempt:
            time.sleep(HTTP_RETRY_DELAY_S * 2 ** (attempt - 1))
        try:
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)  # noqa: S310 - http(s) only, checked above
        except urllib.error.HTTPError as e:
            problem = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code not in (408, 429):  # the server answered: retrying will not help
                raise ShardOpenError(f"{url}: {problem}; check the URL") from None
        except (urllib.error.URLError, OSError) as e:
            problem = str(getattr(e, "reason", e)) or type(e).__name__
    raise ShardOpenError(f"{url}: unreachable after {HTTP_TRIES} tries ({problem}); check the URL and the network")


def open_shard(url: str, *, allow_pipe: bool = False) -> BinaryIO:
    """A binary stream of one shard, read front to back.

    Raises:
        DataError: a ``pipe:`` URL without ``allow_pipe``.
        ShardOpenError: a remote shard that cannot be opened (one line naming the URL).
        OSError: a local file that cannot be opened.
    """
    if not is_remote(url):
        return open(url, "rb")  # noqa: SIM115 - the caller closes it
    check_url(url, allow_pipe=allow_pipe, where="shard")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return _open_http(url)
    if scheme == "file":
        return open(urllib.request.url2pathname(url.split("://", 1)[1]), "rb")  # noqa: SIM115
    import webdataset

    try:
        if scheme in webdataset.gopen_schemes:
            with _webdataset_secure(not allow_pipe):
                return webdataset.gopen(url, "rb")
        import fsspec

        return fsspec.open(url, "rb").open()
    except Exception as e:  # noqa: BLE001 - any backend's failure (missing s3fs, auth, ...) becomes one line
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise ShardOpenError(f"{url}: cannot open ({type(e).__name__}: {msg})") from None


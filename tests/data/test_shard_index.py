"""Start-up reads the samples of each shard from an index beside the shards (selfsup shard's selfsup_shards.json,
webdataset's wids index, img2dataset's *_stats.json) on the main process, not the shards themselves; without one
it counts once and says how to skip that; a stale index stops the run with one line when its shard is read."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import selfsup.config
import selfsup.data.shard_index as shard_index
from selfsup.cli import main as cli_main
from selfsup.config import save_config
from selfsup.data.count import count_samples
from selfsup.data.shard_index import ShardCounts, read_shard_index, shard_counts
from selfsup.data.shard_writer import MANIFEST, write_shards
from selfsup.data.stream import ShardStream
from selfsup.errors import ConfigError, DataError
from selfsup.train.loop import pretrain
from selfsup.train.main_only import on_main
from tests.fixtures.pipeline import make_image_folder, make_shards, tiny_config
from tests.fixtures.streams import tiny_stream

N_SHARDS, PER_SHARD = 40, 2


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> Path:
    """40 shards of 2 samples each, written by `selfsup shard` (so with its index)."""
    tmp = tmp_path_factory.mktemp("index40")
    folder = make_image_folder(tmp / "images", n_per_class=N_SHARDS * PER_SHARD // 2, size=32)
    write_shards(folder, tmp / "shards", max_per_shard=PER_SHARD, progress=False)
    return tmp / "shards"


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """3 shards of 8 samples each, with selfsup shard's index."""
    return make_shards(tmp_path_factory.mktemp("index3"))


@contextmanager
def serving(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """An http.server on 127.0.0.1 serving ``folder``; yields its base URL and the paths requested so far."""
    requested: list[str] = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recording, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def _shard_urls(base: str, n: int = N_SHARDS) -> list[str]:
    return [f"{base}/shard-{i:06d}.tar" for i in range(n)]


def _no_counting(monkeypatch) -> None:
    def fail(urls, **kwargs):
        raise AssertionError(f"counted {len(urls)} shards although an index names them")

    monkeypatch.setattr(shard_index, "count_samples", fail)


def test_selfsup_shard_writes_the_samples_of_each_shard_into_its_manifest(three):
    manifest = json.loads((three / MANIFEST).read_text())
    shards = sorted(three.glob("*.tar"))
    assert manifest["shard_samples"] == {p.name: count_samples([str(p)]) for p in shards}
    assert sum(manifest["shard_samples"].values()) == manifest["samples"] == 24


def test_pretrain_over_http_reads_the_index_not_the_shards_before_the_first_step(tmp_path, forty):
    with serving(forty) as (base, requested):
        shard_list = tmp_path / "shards.txt"
        shard_list.write_text("\n".join(_shard_urls(base)) + "\n")
        summary = pretrain(tiny_config(tmp_path / "run", shard_list, "train.max_steps=1", "data.shuffle_buffer=2",
                                       "data.shard_interleave=1"))
    shards_read = [p for p in requested if p.endswith(".tar")]
    assert summary["steps"] == 1 and summary["samples_per_epoch"] == N_SHARDS * PER_SHARD
    assert requested.count(f"/{MANIFEST}") == 1
    assert 0 < len(shards_read) < N_SHARDS // 2, shards_read  # the first step's shards only, not all 40


def test_without_an_index_the_main_process_counts_once_and_says_how_to_skip(forty, monkeypatch, caplog):
    with serving(forty) as (base, requested):
        urls = _shard_urls(base)
        with caplog.at_level(logging.WARNING, logger="selfsup"):
            counts = shard_counts(urls, index="none")
        assert counts == ShardCounts(total=N_SHARDS * PER_SHARD, indexed={}, counted=N_SHARDS)
        assert sorted(requested) == sorted(f"/shard-{i:06d}.tar" for i in range(N_SHARDS))  # each shard once
        assert f"data.samples_per_epoch={N_SHARDS * PER_SHARD} skips this count" in caplog.text

        # another process reads nothing: it gets the main process's result (or its one-line error)
        class OtherProcess:
            num_processes, is_main_process = 2, False

        requested.clear()
        box_from_main = [(counts, None)]
        monkeypatch.setattr("accelerate.utils.broadcast_object_list", lambda box: box.__setitem__(0, box_from_main[0]))
        assert on_main(OtherProcess(), lambda: shard_counts(urls, index="none")) == counts
        box_from_main = [(None, (ConfigError, "data.shard_index=x: not a shard index"))]
        with pytest.raises(ConfigError, match="^data.shard_index=x: not a shard index$"):
            on_main(OtherProcess(), lambda: shard_counts(urls, index="none"))
        assert requested == []


def test_wids_and_img2dataset_indexes_are_read_instead_of_the_shards(tmp_path, three, monkeypatch):
    _no_counting(monkeypatch)
    truth = json.loads((three / MANIFEST).read_text())["shard_samples"]

    # webdataset's wids index, any *.json beside the shards, with relative urls
    wids = tmp_path / "wids"
    shutil.copytree(three, wids, ignore=shutil.ignore_patterns(MANIFEST))
    (wids / "train-index.json").write_text(json.dumps({
        "__kind__": "wids-shard-index-v1", "wids_version": 1,
        "shardlist": [{"url": name, "nsamples": n, "filesize": 1} for name, n in truth.items()]}))
    urls = sorted(str(p) for p in wids.glob("*.tar"))
    assert shard_counts(urls).total == 24
    assert {Path(src).name for _, src in read_shard_index(urls).values()} == {"train-index.json"}

    # ... or named with data.shard_index, from elsewhere, with a base_path
    elsewhere = tmp_path / "elsewhere.json"
    (wids / "train-index.json").rename(elsewhere)
    doc = json.loads(elsewhere.read_text())
    elsewhere.write_text(json.dumps({**doc, "base_path": str(wids)}))
    assert shard_counts(urls, index=str(elsewhere)).total == 24

    # img2dataset: NAME.tar beside NAME_stats.json ("successes" = samples written)
    i2d = tmp_path / "img2dataset"
    i2d.mkdir()
    for i, (name, n) in enumerate(sorted(truth.items())):
        shutil.copy(three / name, i2d / f"{i:05d}.tar")
        (i2d / f"{i:05d}_stats.json").write_text(json.dumps({"count": n + 1, "successes": n, "failed_to_download": 1}))
    urls = sorted(str(p) for p in i2d.glob("*.tar"))
    counts = shard_counts(urls)
    assert counts.total == 24 and counts.counted == 0 and len(counts.indexed) == 3


def test_a_named_index_that_is_not_one_is_one_line(tmp_path, three):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(DataError, match=r"data.shard_index=.*x.json: not a shard index \(expected"):
        shard_counts([str(three / "shard-000000.tar")], index=str(tmp_path / "x.json"))
    with pytest.raises(DataError, match=r"data.shard_index=.*nope.json: cannot read it as a shard index"):
        shard_counts([str(three / "shard-000000.tar")], index=str(tmp_path / "nope.json"))


def _stale(tmp_path: Path, three: Path) -> Path:
    stale = tmp_path / "stale"
    shutil.copytree(three, stale)
    manifest = json.loads((stale / MANIFEST).read_text())
    manifest["shard_samples"]["shard-000001.tar"] = 9  # it holds 8
    (stale / MANIFEST).write_text(json.dumps(manifest))
    return stale


def test_a_stale_index_is_one_line_naming_the_shard_and_both_counts(tmp_path, three, capsys, monkeypatch):
    stale = _stale(tmp_path, three)
    cfg = tiny_config(tmp_path / "run", stale, "train.max_steps=12", "data.num_workers=1")
    monkeypatch.setattr(selfsup.config, "load_config", lambda *a, **k: cfg)
    code = cli_main(["pretrain", "config.yaml"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(err) == 1, err
    assert f"{stale / 'shard-000001.tar'}: holds 8 samples but its shard index {stale / MANIFEST} says 9" in err[0]
    assert "data.shard_index=none" in err[0] and "data.samples_per_epoch" in err[0]


def _first_epoch(ds: ShardStream) -> Counter:
    """The skips of epoch 0 of a single-worker stream (read until the first batch of epoch 1)."""
    skipped: Counter = Counter()
    for batch in ds:
        skipped.update(batch["meta"]["skipped"])
        if batch["meta"]["epoch"] > 0:
            return skipped
    raise AssertionError("stream ended")


def test_a_broken_shard_is_skipped_not_called_stale(tmp_path, three):
    good, broken = str(three / "shard-000000.tar"), str(tmp_path / "broken.tar")
    data = Path(good).read_bytes()
    Path(broken).write_bytes(data[: len(data) // 2])  # truncated: fewer samples than the index says
    counts = {good: (8, "index.json"), broken: (8, "index.json")}
    skipped = _first_epoch(tiny_stream([good, broken], shard_counts=counts, max_bad_fraction=1.0))
    assert skipped["corrupt_shard"] == 1

    counts[good] = (7, "index.json")  # the same stream with a wrong count for the intact shard
    with pytest.raises(DataError, match=f"^{good}: holds 8 samples but its shard index index.json says 7;"):
        _first_epoch(tiny_stream([good, broken], shard_counts=counts, max_bad_fraction=1.0))


def test_under_ddp_only_the_main_process_reads_the_index(tmp_path, forty):
    """Two gloo processes: the index is requested once (the other process gets the counts by broadcast), and the
    shards read before the run ends are the first steps' only."""
    from tests.fixtures.launch import run, tiny_dino_args

    with serving(forty) as (base, requested):
        shard_list = tmp_path / "shards.txt"
        shard_list.write_text("\n".join(_shard_urls(base)) + "\n")
        run(*tiny_dino_args(tmp_path / "run", shard_list, "train.max_steps=1", "data.shuffle_buffer=2",
                            "data.shard_interleave=1"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_per_epoch"] == N_SHARDS * PER_SHARD and summary["distributed"] == "MULTI_CPU"
    assert requested.count(f"/{MANIFEST}") == 1, requested
    assert 0 < len([p for p in requested if p.endswith(".tar")]) < N_SHARDS // 2, requested


def test_a_run_that_stops_on_a_data_error_ends_its_data_workers_and_exits(tmp_path, three):
    """The workers ignore SIGTERM (pre-emption is the training process's call), so a run must end them itself: the
    same stale index as above, with a data worker, in a fresh process that keeps the error (and its traceback)
    alive until exit, as a caller or test framework may. Before, multiprocessing's exit handler waited for the
    worker forever."""
    stale = _stale(tmp_path, three)
    cfg = tiny_config(tmp_path / "run", stale, "train.max_steps=12", "data.num_workers=1")
    config = save_config(cfg, tmp_path / "config")  # config/config.yaml
    script = (
        "import sys\n"
        "from selfsup.config import load_config\n"
        "from selfsup.errors import DataError\n"
        "from selfsup.train.loop import pretrain\n"
        "try:\n"
        f"    pretrain(load_config({str(config)!r}))\n"
        "except DataError as e:\n"
        "    kept = e  # the traceback, and the frames it holds, stay alive until the interpreter exits\n"
        "    print('stopped:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped:" in done.stdout and "shard-000001.tar" in done.stdout

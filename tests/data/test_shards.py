"""Shard writer and streaming reader: coverage per epoch, exact resume, shard specs, broken shards."""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data.loader import make_loader
from selfsup.data.position import DataPosition
from selfsup.data.shard_list import expand_shards
from selfsup.data.shard_writer import write_shards
from selfsup.data.stream import ShardStream
from selfsup.errors import DataError
from tests.fixtures.corpus import BOMB_LIMIT, OK, make_bad_corpus
from tests.fixtures.streams import png_bytes, same_batch, stream_kwargs, tiny_stream, tiny_transform

CLASSES = ("cat", "dog", "eel")
PER_CLASS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c / "sub").mkdir(parents=True)
        for i in range(PER_CLASS):
            img = Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8))
            # Mixed formats, a nested folder and a dotted name: keys must stay sane.
            path = root / c / ("sub" if i == 0 else "") / (f"img.{i}.png" if i % 2 else f"img{i}.jpg")
            img.save(path)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(folder, out, max_per_shard=5, progress=False)
    return out


def _all_keys() -> set[str]:
    keys = set()
    for c in CLASSES:
        for i in range(PER_CLASS):
            keys.add(f"{c}/{'sub/' if i == 0 else ''}{f'img_{i}' if i % 2 else f'img{i}'}")
    return keys


def _epoch_keys(batches, n_workers: int, epoch: int = 0) -> list[str]:
    """Keys of the samples of ``epoch``, reading until every worker has moved past it."""
    keys: list[str] = []
    done: set[int] = set()
    for batch in batches:
        meta = batch["meta"]
        keys += [k for k, e in zip(batch["keys"], meta["sample_epochs"]) if e == epoch]
        if max(meta["sample_epochs"]) > epoch:
            done.add(meta["worker"])
        if len(done) == n_workers:
            return keys
    raise AssertionError("stream ended")


# ---------------------------------------------------------------- writer
def test_writer_round_trip_keeps_bytes_keys_and_labels(folder, shards):
    tars = sorted(shards.glob("shard-*.tar"))
    assert [t.name for t in tars] == [f"shard-{i:06d}.tar" for i in range(5)]  # 24 samples, 5 per shard
    assert json.loads((shards / "classes.json").read_text()) == list(CLASSES)
    members = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                members[m.name] = tf.extractfile(m).read()
    keys = [name.rsplit(".", 1)[0] for name in members if name.endswith((".jpg", ".png"))]
    sources = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("img*"))
    expected = [s.rsplit(".", 1)[0].replace(".", "_") for s in sources]  # sanitised keys
    assert sorted(keys) == sorted(expected) and keys != expected  # written in a seeded random order
    assert set(keys) == _all_keys()
    assert members["dog/img_3.png"] == (folder / "dog" / "img.3.png").read_bytes()  # never re-encoded
    assert members["eel/sub/img0.jpg"] == (folder / "eel" / "sub" / "img0.jpg").read_bytes()
    assert members["eel/img_3.cls"] == b"2"


def test_writer_summary_counts_skips(folder, tmp_path):
    summary = write_shards(folder, tmp_path / "s", max_per_shard=10, progress=False)
    assert (summary.samples, summary.shards) == (24, 3)
    assert summary.skipped == {"not_an_image": 1, "empty": 1}
    assert summary.bytes == sum(p.stat().st_size for p in (tmp_path / "s").glob("*.tar"))


def test_writer_errors_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        write_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        write_shards(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="no usable images") as e:
        write_shards(tmp_path / "junk", tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)


def test_writer_reads_a_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    ds = datasets.Dataset.from_dict(
        {"img": imgs, "y": [0, 1, 0, 1]},
        features=datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    summary = write_shards(tmp_path / "hf", tmp_path / "out", image_column="img", label_column="y", progress=False)
    assert summary.samples == 4 and summary.classes == ["a", "b"]
    urls = expand_shards(str(tmp_path / "out"))
    keys, labels = [], []
    for batch in ShardStream(urls=urls, transform=tiny_transform(), batch_size=1, seed=0,
                             **stream_kwargs(shuffle_buffer=0)):
        if batch["meta"]["epoch"] > 0:
            break
        keys += batch["keys"]
        labels += batch["cls"].tolist()
    assert sorted(zip(keys, labels)) == [(f"idx-{i:08d}", i % 2) for i in range(4)]  # row keys, any order
    with pytest.raises(DataError, match="image column"):
        write_shards(tmp_path / "hf", tmp_path / "out2", progress=False)


# ---------------------------------------------------------------- specs
def test_expand_shards_specs(shards, tmp_path, caplog):
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert expand_shards(str(shards)) == tars
    assert expand_shards(str(shards / "shard-{000000..000004}.tar")) == tars
    listing = tmp_path / "list.txt"
    listing.write_text("# shards\n" + "\n".join(tars[:2]) + "\n\n")
    assert expand_shards(str(listing)) == tars[:2]
    assert expand_shards([tars[3], tars[1]]) == [tars[3], tars[1]]
    with caplog.at_level(logging.WARNING):
        assert expand_shards(str(shards / "shard-{000003..000009}.tar")) == tars[3:]
    assert "5 of 7 shards are missing" in caplog.text
    with pytest.raises(DataError, match="nope"):
        expand_shards(str(tmp_path / "nope-{0..3}.tar"))
    assert expand_shards(str(shards / "shard-00000[0-2].tar")) == tars[:3]  # glob
    # strict (evaluation): a missing shard is an error, not a warning
    assert expand_shards(str(shards), strict=True) == tars
    with pytest.raises(DataError, match=r"shard file .*shard-000005\.tar' not found"):
        expand_shards(str(shards / "shard-{000003..000009}.tar"), strict=True)


# ---------------------------------------------------------------- reader
def test_one_epoch_over_2_ranks_x_2_workers_covers_every_sample_once(shards):
    urls = expand_shards(str(shards))
    keys: list[str] = []
    for rank in (0, 1):
        ds = tiny_stream(urls, rank=rank, world_size=2)
        loader = make_loader(ds, num_workers=2, pin_memory=False, persistent_workers=False)
        keys += _epoch_keys(iter(loader), n_workers=2)
    assert sorted(keys) == sorted(_all_keys())


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_fewer_shards_than_slots_still_covers_every_sample_once(shards, n_shards):
    urls = expand_shards(str(shards))[:n_shards]
    expected = []
    for u in urls:
        with tarfile.open(u) as tf:
            expected += sorted({m.name.split(".")[0] for m in tf.getmembers()})
    keys: list[str] = []
    for rank in range(4):  # 4 slots
        keys += _epoch_keys(iter(tiny_stream(urls, rank=rank, world_size=4, batch_size=1)), n_workers=1)
    assert sorted(keys) == sorted(expected)


def test_epochs_differ_and_labels_match_keys(shards):
    it = iter(tiny_stream(expand_shards(str(shards)), batch_size=4))
    batches = [next(it) for _ in range(12)]  # 48 samples = 2 epochs
    order = [k for b in batches for k in b["keys"]]
    assert sorted(order[:24]) == sorted(order[24:]) and order[:24] != order[24:]
    for b in batches:
        assert b["cls"].tolist() == [CLASSES.index(k.split("/")[0]) for k in b["keys"]]
        assert [tuple(v.shape) for v in b["views"]] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)]


@pytest.mark.parametrize("num_workers,stop", [(2, 5), (0, 6)])
def test_resume_mid_epoch_is_bit_identical(shards, num_workers, stop):
    urls = expand_shards(str(shards))
    total = 12  # crosses the epoch boundary: 24 samples, batches of 3
    loader = make_loader(tiny_stream(urls), num_workers=num_workers, pin_memory=False, persistent_workers=False)
    reference = []
    position = DataPosition(num_workers=num_workers)
    for i, batch in zip(range(total), loader):
        reference.append(batch)
        if i < stop:
            position.update(batch["meta"])
    assert max(b["meta"]["epoch"] for b in reference) == 1

    state = json.loads(json.dumps(position.state_dict()))  # goes through a JSON checkpoint
    restored = DataPosition(num_workers=num_workers)
    restored.load_state_dict(state)
    ds = tiny_stream(urls, start_positions=restored.start_positions(), first_worker=restored.next_worker)
    resumed = make_loader(ds, num_workers=num_workers, pin_memory=False, persistent_workers=False)
    continuation = [b for _, b in zip(range(total - stop), resumed)]
    assert all(same_batch(a, b) for a, b in zip(reference[stop:], continuation))
    assert len(continuation) == total - stop


def test_data_position_refuses_other_worker_or_process_counts():
    pos = DataPosition(num_workers=2, world_size=2)
    pos.update({"worker": 1, "epoch": 3, "offset": 17, "skipped": {"truncated": 2}})
    state = pos.state_dict()
    assert state["positions"] == {"1": [3, 17]} and state["skipped"] == {"truncated": 2}
    with pytest.raises(DataError, match="num_workers=2 but this run has num_workers=4"):
        DataPosition(num_workers=4, world_size=2).load_state_dict(state)
    with pytest.raises(DataError, match="world_size"):
        DataPosition(num_workers=2, world_size=1).load_state_dict(state)


# ---------------------------------------------------------------- broken data
def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_broken_shards_and_members_are_skipped_and_counted(tmp_path):
    good = {f"good{i}.png": png_bytes(i) for i in range(6)}
    _tar(tmp_path / "a.tar", good)
    _tar(tmp_path / "empty.tar", {})
    _tar(tmp_path / "no_image.tar", {"lonely.cls": b"1", "ok7.png": png_bytes(7)})
    (tmp_path / "corrupt.tar").write_bytes(random.Random(0).randbytes(4096))
    _tar(tmp_path / "big.tar", {f"trunc{i}.png": png_bytes(10 + i) + b"\0" * 3000 for i in range(4)})
    data = (tmp_path / "big.tar").read_bytes()
    (tmp_path / "truncated.tar").write_bytes(data[: len(data) // 2])
    urls = [str(tmp_path / n) for n in ("a.tar", "empty.tar", "no_image.tar", "corrupt.tar", "truncated.tar",
                                        "missing.tar")]
    ds = tiny_stream(urls, batch_size=1, max_bad_fraction=1.0)
    keys: list[str] = []
    skipped: Counter[str] = Counter()
    for batch in ds:
        if batch["meta"]["epoch"] > 0:
            break
        keys += batch["keys"]
        skipped.update(batch["meta"]["skipped"])
    assert set(keys) >= {f"good{i}" for i in range(6)} | {"ok7"}
    assert len(keys) == len(set(keys))
    assert {k for k in keys if k.startswith("trunc")} <= {"trunc0", "trunc1"}  # what came before the cut
    assert skipped["missing_shard"] == 1 and skipped["no_image_member"] == 1
    assert skipped["corrupt_shard"] >= 2  # random bytes + the truncated tail


def test_too_many_bad_samples_is_a_data_error(tmp_path):
    _tar(tmp_path / "bad.tar", {**{f"b{i}.jpg": b"garbage" for i in range(30)}, "g.png": png_bytes(1)})
    ds = tiny_stream([str(tmp_path / "bad.tar")], batch_size=1, max_bad_fraction=0.1, bad_window=100)
    with pytest.raises(DataError, match=r"11 of the last \d+ samples were bad \(not_an_image=11\); check the shards"):
        for _ in ds:
            pass


def test_bad_corpus_round_trip(tmp_path, monkeypatch):
    expected = make_bad_corpus(tmp_path / "corpus")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    summary = write_shards(tmp_path / "corpus", tmp_path / "out", progress=False)
    ds = tiny_stream(expand_shards(str(tmp_path / "out")), batch_size=1, max_bad_fraction=1.0)
    keys: list[str] = []
    skipped: Counter[str] = Counter(summary.skipped)
    for batch in ds:
        if batch["meta"]["epoch"] > 0:
            break
        keys += batch["keys"]
        skipped.update(batch["meta"]["skipped"])
    ok = {name.rsplit(".", 1)[0] for name, outcome in expected.items() if outcome == OK}
    assert sorted(keys) == sorted(ok)
    assert skipped == Counter(outcome for outcome in expected.values() if outcome != OK)

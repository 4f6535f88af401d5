"""Shard writing never loses or removes what it did not write, broken images are
skipped when the shards are written, and broken labels / detection annotations are skipped, counted or refused
in one line instead of silently becoming data."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup.data.shard_writer as shard_writer
from evaluation.detection.data import load_detection_dataset
from selfsup.cli import main as selfsup_main
from selfsup.data.labelled import open_labelled
from selfsup.data.shard_sources import sanitize_key
from selfsup.data.shard_writer import MANIFEST, write_shards
from selfsup.errors import DataError
from tests.fixtures.corpus import BOMB_LIMIT, OK, make_bad_corpus


def _folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_temp_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if "selfsup-shard" in p.name]


# ---------------------------------------------------------------- item 3: old shards survive a failed run
def test_a_failed_run_keeps_the_old_shards(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    write_shards(_folder(tmp_path / "src"), out, max_per_shard=4, progress=False)
    before = _snapshot(out)
    assert len([n for n in before if n.endswith(".tar")]) == 3
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="no usable images"):  # the source is readable but holds no image
        write_shards(tmp_path / "junk", out, progress=False)
    assert _snapshot(out) == before and _no_temp_left(tmp_path)

    calls = Counter()
    real = shard_writer.sniff_image

    def crash_on_the_fifth(data: bytes) -> tuple[str | None, str]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C (or any crash) half-way through the new source
        return real(data)

    monkeypatch.setattr(shard_writer, "sniff_image", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        write_shards(_folder(tmp_path / "other", classes=("eel",)), out, max_per_shard=2, progress=False)
    assert _snapshot(out) == before and _no_temp_left(tmp_path)


# ---------------------------------------------------------------- item 3 + "done when": the sentinel test
def test_shard_never_removes_a_file_it_did_not_write(tmp_path, capsys):
    src = _folder(tmp_path / "src")
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    sentinels = {"SENTINEL.txt": b"keep me", "notes/readme.md": b"mine", "shard-notes.json": b"{}"}
    for name, data in sentinels.items():
        (out / name).write_bytes(data)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")

    def check(*expected_shards: str) -> None:
        files = _snapshot(out)
        assert {k: files[k] for k in sentinels} == sentinels and outside.read_bytes() == b"outside"
        assert sorted(n for n in files if n.endswith(".tar")) == list(expected_shards)
        assert _no_temp_left(tmp_path)

    # A user's own tar named like a shard is never removed (nor mixed with) without --overwrite.
    (out / "shard-000009.tar").write_bytes(b"user data")
    assert selfsup_main(["shard", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shard-000009.tar" in err and "--overwrite" in err
    check("shard-000009.tar")
    assert (out / "shard-000009.tar").read_bytes() == b"user data"
    (out / "shard-000009.tar").rename(tmp_path / "moved-away.tar")  # the user moves it away

    assert selfsup_main(["shard", str(src), str(out), "--max-per-shard", "4"]) == 0
    check("shard-000000.tar", "shard-000001.tar", "shard-000002.tar")
    assert selfsup_main(["shard", str(src), str(out), "--max-per-shard", "100"]) == 0  # its own old shards go
    check("shard-000000.tar")
    assert selfsup_main(["shard", str(tmp_path / "typo"), str(out)]) == 2  # a typo in SRC
    check("shard-000000.tar")
    # A hand-edited manifest cannot get anything but the writer's own shard names removed.
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] += ["SENTINEL.txt", "../outside.txt", "notes/readme.md", "shard-notes.json"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert selfsup_main(["shard", str(src), str(out), "--max-per-shard", "6", "--overwrite"]) == 0
    check("shard-000000.tar", "shard-000001.tar")


def test_foreign_tars_are_refused_unless_overwrite(tmp_path):
    src = _folder(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "imagenet-000000.tar").write_bytes(b"someone else's shard")
    (out / "classes.json").write_text('["theirs"]')
    with pytest.raises(DataError, match=r"2 file\(s\) that selfsup shard did not write .*--overwrite"):
        write_shards(src, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "imagenet-000000.tar"]  # nothing mixed in
    summary = write_shards(src, out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", MANIFEST, "shard-000000.tar"]
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"] and summary.samples == 12
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_shards(src, tmp_path / "file", progress=False)


# ---------------------------------------------------------------- item 16: decode at write time
def test_writer_decodes_and_counts_every_file(tmp_path, monkeypatch):
    expected = make_bad_corpus(tmp_path / "corpus")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    summary = write_shards(tmp_path / "corpus", tmp_path / "out", progress=False)
    import webdataset as wds

    keys = {s["__key__"] for s in wds.WebDataset(summary.paths, shardshuffle=False)}
    assert keys == {sanitize_key(n) for n, outcome in expected.items() if outcome == OK}
    assert summary.skipped == dict(Counter(o for o in expected.values() if o != OK))
    assert summary.skipped["truncated"] == 1 and summary.skipped["decompression_bomb"] == 1
    assert summary.seen == len(expected) == summary.samples + sum(summary.skipped.values())
    line = summary.format()
    assert line.startswith(f"seen {len(expected)} = written {summary.samples} + "
                           f"skipped {len(expected) - summary.samples} (")
    assert "truncated=1" in line and "decompression_bomb=1" in line

    fast = write_shards(tmp_path / "corpus", tmp_path / "fast", verify=False, progress=False)  # headers only
    assert "truncated" not in fast.skipped and "decompression_bomb" not in fast.skipped
    assert fast.seen == len(expected) == fast.samples + sum(fast.skipped.values())
    assert "--no-verify" in fast.format()


def test_no_verify_flag_keeps_header_only_check(tmp_path, capsys):
    src = _folder(tmp_path / "src", classes=("a",), per_class=3)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (src / "a" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # the headers are intact
    assert selfsup_main(["shard", str(src), str(tmp_path / "v")]) == 0
    assert "seen 4 = written 3 + skipped 1 (truncated=1)" in capsys.readouterr().out
    assert selfsup_main(["shard", str(src), str(tmp_path / "nv"), "--no-verify"]) == 0
    assert "seen 4 = written 4 + skipped 0 (none)" in capsys.readouterr().out


# ---------------------------------------------------------------- item 15: empty sources, one line
def test_empty_tar_and_empty_folder_say_so(tmp_path):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(DataError, match="empty tar file"):
        write_shards(tmp_path / "empty.tar", tmp_path / "out", progress=False)
    (tmp_path / "nothing" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no files"):
        write_shards(tmp_path / "nothing", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    with pytest.raises(DataError, match=r"zero.tar: empty file \(0 bytes\)"):
        open_labelled(str(tmp_path / "zero.tar"))
    with pytest.raises(DataError, match=r"empty.tar: empty tar \(no samples\)"):
        open_labelled(str(tmp_path / "empty.tar"))
    with pytest.raises(DataError, match="no images found in its 1 class folder"):
        open_labelled(str(tmp_path / "nothing"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        open_labelled(str(tmp_path / "bare"))


# ---------------------------------------------------------------- item 14: empty classes, no boxes
def test_empty_class_folder_is_not_a_class(tmp_path, caplog):
    root = _folder(tmp_path / "train", classes=("cat", "eel"), per_class=3)
    (root / "dog").mkdir()  # sorts between the two: would shift "eel" to label 2 and add a third class
    with caplog.at_level(logging.WARNING):
        ds = open_labelled(str(root))
    assert ds.classes == ["cat", "eel"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert any("dog" in r.getMessage() and "skipped 1 class folder" in r.getMessage() for r in caplog.records)


def _voc(root: Path, boxes: list[list[tuple[str, str, str, str]]]) -> Path:
    """A VOC folder without split lists; ``boxes[i]`` are the (xmin, ymin, xmax, ymax) texts of image i."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, objs in enumerate(boxes):
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"im{i:02d}.jpg")
        xml = "".join(f"<object><name>cat</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in objs)
        xml = xml.replace("<xmax></xmax>", "")  # an empty text: the coordinate is missing altogether
        (root / "Annotations" / f"im{i:02d}.xml").write_text(
            f"<annotation><filename>im{i:02d}.jpg</filename><size><width>40</width><height>30</height></size>"
            f"{xml}</annotation>")
    return root


def test_voc_boxes_with_missing_or_nan_coordinates_are_skipped(tmp_path, caplog):
    good = [[("2", "3", "20", "25")]] * 18
    with caplog.at_level(logging.WARNING):
        ds = load_detection_dataset(_voc(tmp_path / "a", good + [[("2", "3", "", "25")], [("nan", "3", "20", "25")]]))
    assert ds.skipped == {"box_missing_coordinate": 1, "box_not_finite": 1}
    samples = ds.train + ds.val
    assert len(samples) == 18 and {s.path.stem for s in samples} == {f"im{i:02d}" for i in range(18)}
    assert all(s.boxes == ((1.0, 2.0, 20.0, 25.0),) for s in samples)  # no full-image box (0, 0, 40, 30)
    assert any("skipped 2 of 20 images" in r.getMessage() for r in caplog.records)
    bad = [[("1", "1", "abc", "5")]] * 3
    with pytest.raises(DataError, match=r"3 of 20 images have broken annotations \(box_not_a_number=3\)"):
        load_detection_dataset(_voc(tmp_path / "b", good[:17] + bad))


def test_detection_set_without_boxes_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no boxes in its"):
        load_detection_dataset(_voc(tmp_path / "v", [[] for _ in range(6)]))
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    doc = {"images": [{"id": i, "file_name": n, "width": 20, "height": 20} for i, n in enumerate(("a.jpg", "b.jpg"))],
           "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="no boxes in its 1 training images"):
        load_detection_dataset(tmp_path / "c.json")


def test_coco_nan_boxes_duplicate_ids_and_escaping_paths_are_skipped(tmp_path, monkeypatch):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "data" / "secret.jpg")  # exists, but outside the image root
    entries, annotations = [], []
    for i in range(50):  # 5 bad of 52 stays under the 10 % refusal line
        Image.new("RGB", (20, 20)).save(images / f"{i:02d}.jpg")
        entries.append({"id": i, "file_name": f"{i:02d}.jpg", "width": 20, "height": 20})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]})
    entries.append({"id": 100, "file_name": "../secret.jpg", "width": 20, "height": 20})
    entries.append({"id": 101, "file_name": str(tmp_path / "data" / "secret.jpg"), "width": 20, "height": 20})
    entries[1]["id"] = 0  # two images claim id 0: whose are its boxes?
    annotations[5]["bbox"] = [float("nan"), 1, 10, 10]  # json.dumps writes NaN, json.loads reads it
    annotations += [{"id": 200 + i, "image_id": 100 + i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(2)]
    (tmp_path / "data" / "train.json").write_text(json.dumps({"images": entries, "annotations": annotations,
                                                             "categories": [{"id": 1, "name": "cat"}]}))
    probed: list[Path] = []
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p, **kw: probed.append(p) or real_exists(p, **kw))
    ds = load_detection_dataset(tmp_path / "data" / "train.json", images=images)
    assert ds.skipped == {"box_not_finite": 1, "duplicate_image_id": 2, "path_outside_image_root": 2}
    samples = ds.train + ds.val
    assert len(samples) == 52 - 5
    assert all(s.path.parent == images for s in samples)
    assert not [p for p in probed if "secret" in str(p)]  # never even looked at
    assert "05.jpg" not in {s.path.name for s in samples}

"""Untrusted input: shard lists never run code, remote shards stream (and resume) or fail in one line, odd tar
members never stop a run, and configs refuse bombs, foreign files, meaningless numbers and repeated keys."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from selfsup import cli
from selfsup.build import stream_options
from selfsup.config import DataConfig, load_config
from selfsup.data.count import count_samples
from selfsup.data.labelled import open_labelled
from selfsup.data.loader import make_loader
from selfsup.data.position import DataPosition
from selfsup.data.shard_list import expand_shards
from selfsup.data.shard_urls import ShardOpenError
from selfsup.data.stream import ShardStream
from selfsup.errors import ConfigError, DataError
from tests.fixtures.launch import free_port
from tests.fixtures.pipeline import make_image_folder
from tests.fixtures.streams import png_bytes, same_batch, tiny_stream

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "dino_vit_tiny_cpu.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real shards written by `selfsup shard`: 2 classes x 6 images, 5 samples per shard (3 shards)."""
    tmp = tmp_path_factory.mktemp("trust")
    folder = make_image_folder(tmp / "images", n_per_class=6, size=24)
    assert cli.main(["shard", str(folder), str(tmp / "shards"), "--max-per-shard", "5"]) == 0
    return tmp / "shards"


@pytest.fixture(scope="module")
def http_base(shards) -> str:
    """An http.server on 127.0.0.1, in this process, serving the shards folder."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # one line per request would flood the test output
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shards)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip()


def _epoch(ds: ShardStream) -> tuple[list[str], Counter]:
    """Keys of epoch 0 of a single-worker stream, and the skips reported up to the first batch of epoch 1."""
    keys: list[str] = []
    skipped: Counter = Counter()
    for batch in ds:
        skipped.update(batch["meta"]["skipped"])
        if batch["meta"]["epoch"] > 0:
            return keys, skipped
        keys += batch["keys"]
    raise AssertionError("stream ended")


# ---------------------------------------------------------------- 5. pipe: URLs
def _pipe_list(tmp_path: Path, shard: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    listing = tmp_path / "shards.txt"
    listing.write_text(f"{shard}\npipe:touch {marker}\n")
    return listing, marker


def test_selfsup_eval_refuses_a_pipe_line_and_never_runs_it(tmp_path, shards, capsys):
    from evaluation.cli import main as eval_main

    listing, marker = _pipe_list(tmp_path, shards / "shard-000000.tar")
    code = eval_main(["knn", "--weights", str(tmp_path / "w"), "--train", str(listing), "--val", str(listing),
                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert f"{listing}:2: refusing shard 'pipe:touch {marker}'" in err and "--allow-pipe" in err
    assert len(err.splitlines()) == 1


def test_pretrain_refuses_a_pipe_line_and_never_runs_it(tmp_path, shards, capsys):
    listing, marker = _pipe_list(tmp_path, shards / "shard-000000.tar")
    code, err = _run_cli(capsys, "pretrain", str(TINY), f"run.dir={tmp_path / 'run'}", f"data.shards={listing}",
                         "data.samples_per_epoch=8", "data.num_workers=0")
    assert code == 2 and not marker.exists()
    assert f"{listing}:2: refusing shard" in err and "data.allow_pipe=true" in err and len(err.splitlines()) == 1
    with pytest.raises(DataError, match="refusing shard 'pipe:cat"):  # given directly, not through a list
        ShardStream(urls=[f"pipe:cat {shards / 'shard-000000.tar'}"], transform=list, batch_size=1, seed=0,
                    **stream_options(DataConfig()))


def test_pipe_urls_work_when_allowed(tmp_path, shards):
    listing = tmp_path / "pipes.txt"
    listing.write_text("".join(f"pipe:cat {t}\n" for t in sorted(shards.glob("*.tar"))))
    assert len(open_labelled(str(listing), allow_pipe=True)) == 12  # selfsup-eval --allow-pipe
    urls = expand_shards(str(listing), allow_pipe=True)
    keys, _ = _epoch(tiny_stream(urls, batch_size=1, allow_pipe=True))  # data.allow_pipe=true
    assert len(keys) == 12 and count_samples(urls, allow_pipe=True) == 12


# ---------------------------------------------------------------- 6. remote shards
def test_http_shards_stream_like_local_ones(shards, http_base):
    local = expand_shards(str(shards))
    remote = [f"{http_base}/{Path(u).name}" for u in local]
    assert count_samples(remote) == count_samples(local) == 12
    assert _epoch(tiny_stream(remote, batch_size=2))[0] == _epoch(tiny_stream(local, batch_size=2))[0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_http_shards_resume_exactly_mid_shard(shards, http_base, num_workers):
    urls = [f"{http_base}/{t.name}" for t in sorted(shards.glob("*.tar"))]
    loader = make_loader(tiny_stream(urls, batch_size=2), num_workers=num_workers, pin_memory=False,
                         persistent_workers=False)
    total, stop = 8, 2  # batches of 2 through a 4-sample shuffle buffer: raw reader 8 samples in, mid shard 2
    reference, position = [], DataPosition(num_workers=num_workers)
    for i, batch in zip(range(total), loader):
        reference.append(batch)
        if i < stop:
            position.update(batch["meta"])
    assert any(o % 5 for _, o in position.start_positions().values())  # stopped inside a 5-sample shard
    restored = DataPosition(num_workers=num_workers)
    restored.load_state_dict(json.loads(json.dumps(position.state_dict())))
    ds = tiny_stream(urls, batch_size=2, start_positions=restored.start_positions(), first_worker=restored.next_worker)
    resumed = make_loader(ds, num_workers=num_workers, pin_memory=False, persistent_workers=False)
    continuation = [b for _, b in zip(range(total - stop), resumed)]
    assert len(continuation) == total - stop
    assert all(same_batch(a, b) for a, b in zip(reference[stop:], continuation))


def test_unreachable_url_is_one_line_after_the_retries(tmp_path, shards, http_base, capsys):
    closed = f"http://127.0.0.1:{free_port()}/shard-{{000000..000001}}.tar"
    start = time.monotonic()
    with pytest.raises(ShardOpenError, match=r"unreachable after 3 tries \(.*refused.*\); check the URL"):
        count_samples(expand_shards(closed))
    assert time.monotonic() - start < 10
    code, err = _run_cli(capsys, "pretrain", str(TINY), f"run.dir={tmp_path / 'run'}", f"data.shards={closed}")
    assert code == 2 and len(err.splitlines()) == 1 and "shard-000000.tar: unreachable after 3 tries" in err
    # Mid-run (nothing counted up front), the reader skips the shard and counts it.
    keys, skipped = _epoch(tiny_stream([f"{http_base}/shard-000000.tar", closed.replace("{000000..000001}", "000000")],
                                   batch_size=1, max_bad_fraction=1.0))
    assert len(keys) == 5 and skipped["unreachable_shard"] >= 1
    with pytest.raises(ShardOpenError, match="HTTP 404"):  # the server answered: no retries
        count_samples([f"{http_base}/nope.tar"])


# ---------------------------------------------------------------- 7, 8. odd members
def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    # surrogateescape: the name "\udcff" is written as the raw, non-UTF-8 byte 0xff
    with tarfile.open(path, mode, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_non_utf8_member_names_neither_stop_nor_break_resume(tmp_path):
    names = ["a", "b\udcff\udcfe", "c", "d\udce9t\udce9", "e", "f"]
    tar = _tar(tmp_path / "odd.tar", [(f"{n}.png", png_bytes(i * 30)) for i, n in enumerate(names)])
    keys, skipped = _epoch(tiny_stream([str(tar)], batch_size=1))
    assert sorted(keys) == sorted(names) and not skipped
    loader = make_loader(tiny_stream([str(tar)], batch_size=2), num_workers=1, pin_memory=False,
                         persistent_workers=False)
    reference = [b for _, b in zip(range(6), loader)]  # 2 epochs through a worker process
    position = DataPosition(num_workers=1)
    position.update(reference[0]["meta"])
    ds = tiny_stream([str(tar)], batch_size=2, start_positions=position.start_positions())
    resumed = [b for _, b in zip(range(5), ds)]
    assert all(same_batch(a, b) for a, b in zip(reference[1:], resumed))


def test_non_utf8_member_names_load_in_evaluation(tmp_path):
    names = ["a", "b\udcff", "c", "d\udce9"]
    members = [(f"{n}.{ext}", data) for i, n in enumerate(names)
               for ext, data in (("png", png_bytes(i)), ("cls", b"%d" % (i % 2)))]
    images = open_labelled(str(_tar(tmp_path / "odd.tar", members)))
    assert len(images) == 4 and images.classes == ["0", "1"] and images.image(1).size == (12, 12)


def test_oversized_member_is_skipped_counted_and_never_read(tmp_path, monkeypatch):
    big = bytes(8 * 2**20)  # 8 MB of zeros: a 2 kB member once gzip-compressed
    members = [("a.png", png_bytes(1)), ("a.cls", b"0"), ("huge.png", big), ("huge.cls", b"1"), ("z.png", png_bytes(2))]
    tar = _tar(tmp_path / "bomb.tar.gz", members, mode="w:gz")
    assert tar.stat().st_size < 100_000
    read: list[str] = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m))
    keys, skipped = _epoch(tiny_stream([str(tar)], batch_size=1, max_sample_bytes=2**20, max_bad_fraction=1.0,
                                   shuffle_buffer=0))
    assert sorted(keys) == ["a", "z"] and skipped == {"too_large": 1}
    assert "huge.png" not in read and "a.png" in read
    assert 100 * 2**20 <= DataConfig().max_sample_bytes <= 1024 * 2**20  # default: a few hundred MB


# ---------------------------------------------------------------- 9. YAML
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"{x}: &{x} [{', '.join([f'*{p}'] * 9)}]" for p, x in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(rows) + "\nmodel:\n  args:\n    x: *i\n")  # 9**9 strings
    (tmp_path / "loop.yaml").write_text("model:\n  args: &x\n    y: [*x]\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "selfsup", "config", str(tmp_path / "bomb.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "ssl")})
    assert proc.returncode == 2 and "aliases expand to more than" in proc.stderr, proc.stderr[-500:]
    assert time.monotonic() - start < 60
    with pytest.raises(ConfigError, match="recursive YAML"):
        load_config(tmp_path / "loop.yaml")


def test_a_foreign_base_file_is_named_never_quoted(tmp_path):
    secret = "root:$6$SECRETSALT$SECRETHASH:19000:0:99999:7:::"
    (tmp_path / "shadow").write_text(f"{secret}\ndaemon:*:19000:0:99999:7:::\n")
    (tmp_path / "binary").write_bytes(bytes(range(256)))
    (tmp_path / "broken").write_text(f"train: [{secret}\n")
    for name in ("shadow", "binary", "broken"):
        (tmp_path / f"{name}.yaml").write_text(f"base: {name}\n")
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / f"{name}.yaml")
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: ") and "SECRET" not in msg and "\n" not in msg, msg


# ---------------------------------------------------------------- 10. numbers
@pytest.mark.parametrize("override,message", [
    ("train.epochs=.inf", "'train.epochs': inf (expected a finite number >= 0)"),
    ("train.epochs=.nan", "'train.epochs': nan (expected a finite number >= 0)"),
    ("data.num_workers=-1", "'data.num_workers': -1 (expected an integer >= 0)"),
    ("train.max_steps=-5", "'train.max_steps': -5 (expected an integer >= 1)"),
    ("optim.lr=.inf", "'optim.lr': inf (expected a finite number)"),
    ("optim.lr=.nan", "'optim.lr': nan (expected a finite number)"),
    ("optim.betas=[0.9,1.5]", "'optim.betas': 1.5 (expected a finite number in [0, 1))"),
    ("data.max_bad_fraction=2", "'data.max_bad_fraction': 2.0 (expected a finite number in [0, 1])"),
    ("method.dino.teacher_temp=0", "'method.dino.teacher_temp': 0.0 (expected a finite number > 0)"),
    ("data.max_sample_bytes=0", "'data.max_sample_bytes': 0 (expected an integer >= 1)"),
    ("model.args.drop_rate=.nan", "'model.args.drop_rate': nan (expected a finite number)"),
])
def test_meaningless_numbers_are_one_line_naming_key_and_range(override, message, capsys):
    code, err = _run_cli(capsys, "config", str(TINY), override)
    assert code == 2 and err == f"selfsup: error: bad value for {message}"


# ---------------------------------------------------------------- 17. repeated keys
def test_a_key_given_twice_on_the_command_line_is_an_error(capsys):
    code, err = _run_cli(capsys, "config", str(TINY), "data.shards=/a", "optim.lr=1e-3", "data.shards=/b")
    assert code == 2 and err == ("selfsup: error: override 'data.shards=/b': 'data.shards' is already set by "
                                 "'data.shards=/a'; give each key once")

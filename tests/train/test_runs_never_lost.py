"""Nothing a user wrote is lost: export never removes files it did not write, a run never starts over another
run's folder or beside a concurrent one, a full disk or a corrupt checkpoint file costs one line, not a run."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import selfsup.config
from selfsup.cli import main as cli_main
from selfsup.errors import CheckpointError
from selfsup.export import EXPORT_FILES, EXPORT_MANIFEST, export, record_exported
from selfsup.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint_weights
from selfsup.train.loop import pretrain
from selfsup.train.run_lock import LOCK_NAME
from tests.fixtures.pipeline import make_shards, metrics, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("trust_data"))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, shards):
    """A finished 2-step run with complete checkpoints at steps 1 and 2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trust_base") / "run"
    pretrain(tiny_config(run, shards, "train.max_steps=2", "train.save_every=1"))
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001", "step_00000002"]
    return run


@pytest.fixture
def run(tmp_path, base_run):
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _cli(capsys, *args) -> tuple[int, list[str]]:
    code = cli_main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfsup: error:")]


def _cli_pretrain(capsys, monkeypatch, cfg) -> tuple[int, list[str]]:
    """``selfsup pretrain`` on an already built config (the CLI reads it through load_config)."""
    monkeypatch.setattr(selfsup.config, "load_config", lambda *a, **k: cfg)
    return _cli(capsys, "pretrain", "config.yaml")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. export: a temporary sibling renamed into place; only a previous export is replaced ---------------------


def test_export_never_removes_a_file_it_did_not_write(tmp_path, base_run, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sentinel.txt").write_text("keep me")
    (out / "notes").mkdir()
    code, err = _cli(capsys, "export", base_run, out)
    assert code == 2 and len(err) == 1 and "holds files export did not write (notes/, sentinel.txt)" in err[0], err
    assert "--overwrite" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes", "sentinel.txt"]

    # --overwrite writes the export's files beside the user's, which stay; again: they are replaced, still beside
    for _ in range(2):
        code, err = _cli(capsys, "export", base_run, out, "--overwrite")
        assert code == 0, err
        assert (out / "sentinel.txt").read_text() == "keep me" and (out / "notes").is_dir()
        assert {"model.safetensors", "config.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.parametrize("theirs", [("model.safetensors", "config.json"), ("model.onnx",), ("README.md",)])
def test_export_refuses_files_named_like_an_export_that_no_manifest_lists(tmp_path, base_run, capsys, theirs):
    """Someone else's model in the folder is not a previous export: only files a selfsup_export.json lists are."""
    out = tmp_path / "theirs"
    out.mkdir()
    for name in theirs:
        (out / name).write_text(f"their {name}")
    code, err = _cli(capsys, "export", base_run, out)
    assert code == 2 and len(err) == 1, err
    assert f"holds files export did not write ({', '.join(sorted(theirs))})" in err[0]
    assert "--overwrite to replace" in err[0] and EXPORT_MANIFEST in err[0]
    assert {n: (out / n).read_text() for n in theirs} == {n: f"their {n}" for n in theirs}
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs)

    # --overwrite replaces them with the export; the export's manifest then lists exactly what it wrote
    code, err = _cli(capsys, "export", base_run, out, "--overwrite")
    assert code == 0, err
    listed = json.loads((out / EXPORT_MANIFEST).read_text())["files"]
    assert set(listed) == {p.name for p in out.iterdir()} - ({"model.onnx"} & set(theirs))
    assert json.loads((out / "config.json").read_text())["selfsup"]["step"] == 2
    # a later export replaces what its manifest lists, without --overwrite
    export(base_run, out, checkpoint=list_checkpoints(base_run)[0], overwrite="model.onnx" in theirs)
    assert json.loads((out / "config.json").read_text())["selfsup"]["step"] == 1


@pytest.mark.parametrize("target", ["run", "parent", "cwd"])
def test_export_refuses_the_run_folder_and_folders_containing_it(tmp_path, run, capsys, monkeypatch, target):
    before = _tree(run)
    monkeypatch.chdir(tmp_path)
    out = {"run": run, "parent": tmp_path, "cwd": "."}[target]
    for extra in ((), ("--overwrite",)):
        code, err = _cli(capsys, "export", run, out, *extra)
        what = "is the run folder" if target == "run" else "contains the run folder"
        assert code == 2 and len(err) == 1 and f"{what} {run};" in err[0], err
    assert _tree(run) == before


def test_export_replaces_a_previous_export_atomically(tmp_path, base_run):
    out = tmp_path / "export"
    (tmp_path / ".tmp-export").mkdir()  # the user's, though named like a staging folder: export never removes it
    (tmp_path / ".tmp-export" / "user.txt").write_text("mine")
    export(base_run, out)
    first = _tree(out)
    (out / "model.onnx").write_bytes(b"from an earlier export --onnx")
    record_exported(out, ["model.onnx"])  # what export --onnx does: listed in the manifest, so replaceable
    export(base_run, out, checkpoint=list_checkpoints(base_run)[0])
    assert {p.name for p in out.iterdir()} == set(first)  # the stale model.onnx went with the old export
    assert set(first) <= EXPORT_FILES
    assert json.loads((out / "config.json").read_text())["selfsup"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-export", "export"]
    assert (tmp_path / ".tmp-export" / "user.txt").read_text() == "mine"


def test_failed_export_leaves_the_previous_one_and_no_temporary_folder(tmp_path, base_run, monkeypatch):
    import selfsup.export as export_module

    out = tmp_path / "export"
    export(base_run, out)
    before = _tree(out)

    def broken(folder, *a, **k):
        raise CheckpointError(f"export check failed: plain timm reload of {folder} differs")

    monkeypatch.setattr(export_module, "verify_export", broken)
    with pytest.raises(CheckpointError, match="export check failed"):
        export(base_run, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# --- 2. pretrain: no fresh start over another run; one run per folder ----------------------------------------------


def test_new_run_in_a_used_run_dir_is_refused_naming_both_ways_out(run, shards, capsys, monkeypatch):
    before = _tree(run)
    code, err = _cli_pretrain(capsys, monkeypatch, tiny_config(run, shards, "train.max_steps=4"))
    assert code == 2 and len(err) == 1, err
    assert f"run.dir={run} is not empty" in err[0] and "train.resume=auto" in err[0] and "run.overwrite=true" in err[0]
    assert _tree(run) == before  # nothing pruned, nothing written


def test_run_overwrite_starts_over_and_keeps_other_files(run, shards):
    (run / "notes.txt").write_text("mine")
    summary = pretrain(tiny_config(run, shards, "train.max_steps=1", "train.save_every=1", "run.overwrite=true"))
    assert summary["steps_this_run"] == 1
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001"]  # the old step 2 is gone, not the newest
    assert [r["step"] for r in metrics(run)] == [1]
    assert (run / "notes.txt").read_text() == "mine" and not (run / LOCK_NAME).exists()
    assert len(list((run / "tensorboard").glob("events.*"))) == 1  # the old run's curves went when TensorBoard started


def test_under_ddp_every_process_stops_with_the_same_line(run, shards):
    """Only the main process looks at the folder; the other one must not hang in a collective or go on alone."""
    from tests.fixtures.launch import launch, tiny_dino_args

    before = _tree(run)
    p = launch(*tiny_dino_args(run, shards, "train.max_steps=4"))
    out, _ = p.communicate(timeout=240)
    errors = [line for line in out.splitlines() if line.startswith("selfsup: error:")]
    assert p.returncode != 0 and len(errors) == 2 and errors[0] == errors[1], out[-3000:]
    assert f"run.dir={run} is not empty" in errors[0]
    assert _tree(run) == before


def _lock(run: Path, host: str, pid: int) -> None:
    (run / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "since": "2025-01-01 00:00:00"}))


def test_a_second_run_on_a_locked_run_dir_fails_at_once(run, shards, capsys, monkeypatch):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        for host, where in ((socket.gethostname(), "this host"), ("gpu-node-7", "host gpu-node-7")):
            _lock(run, host, holder.pid)
            cfg = tiny_config(run, shards, "train.max_steps=3", "train.resume=auto")
            code, err = _cli_pretrain(capsys, monkeypatch, cfg)
            assert code == 2 and len(err) == 1, err
            assert f"is in use by another run (pid {holder.pid} on {where}" in err[0] and str(run / LOCK_NAME) in err[0]
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # the holder's lock stays
        assert latest_checkpoint(run).name == "step_00000002"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(run, shards, caplog):
    dead = subprocess.Popen(["sleep", "60"])
    dead.kill()  # not waited for: a zombie, as a killed launcher's children are, still counts as gone
    try:
        _lock(run, socket.gethostname(), dead.pid)
        with caplog.at_level(logging.WARNING, logger="selfsup"):
            summary = pretrain(tiny_config(run, shards, "train.max_steps=3", "train.resume=auto"))
    finally:
        dead.wait()
    assert summary["steps_this_run"] == 1
    assert any(f"taking over the stale lock of pid {dead.pid}" in r.getMessage() for r in caplog.records)
    assert not (run / LOCK_NAME).exists()  # released at the end


# --- 4. disk full while writing a checkpoint -----------------------------------------------------------------------


@contextmanager
def _tmpfs(path: Path, size: str):
    """A small filesystem of its own (needs root: skipped elsewhere)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _assert_disk_full_line(code: int, err: list[str], run: Path, step: int, prev: int) -> None:
    assert code == 1 and len(err) == 1, err
    assert err[0] == (f"selfsup: error: no space left on device while writing checkpoint step {step} in "
                      f"{run / 'checkpoints'}; the previous checkpoint step {prev} is intact")
    assert [p.name for p in (run / "checkpoints").iterdir()][-1] == f"step_{prev:08d}"
    assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / LOCK_NAME).exists()
    assert read_checkpoint_weights(latest_checkpoint(run))  # the previous checkpoint still loads


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_disk_full_while_writing_a_checkpoint_is_one_line_exit_1(run, shards, capsys, monkeypatch, error):
    import accelerate.utils.other
    from safetensors import SafetensorError

    def full_disk(tensors, filename, *a, **k):  # the writer accelerate's save_state calls for model.safetensors
        Path(filename).write_bytes(b"partial")
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')

    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", full_disk)
    cfg = tiny_config(run, shards, "train.max_steps=3", "train.save_every=1", "train.resume=auto")
    code, err = _cli_pretrain(capsys, monkeypatch, cfg)
    _assert_disk_full_line(code, err, run, step=3, prev=2)


def test_disk_full_on_a_real_small_filesystem(tmp_path, shards, capsys, monkeypatch):
    """15 MB per checkpoint on a 24 MB filesystem: the second save fails inside torch.save's writer, whose error
    ("unexpected pos ...") carries no errno."""
    with _tmpfs(tmp_path / "small", "24m") as small:
        cfg = tiny_config(small / "run", shards, "train.max_steps=2", "train.save_every=1", "train.keep_last=3")
        code, err = _cli_pretrain(capsys, monkeypatch, cfg)
        _assert_disk_full_line(code, err, small / "run", step=2, prev=1)


# --- 11. corrupt train state, crafted random states ---------------------------------------------------------------


@pytest.mark.parametrize("bad", ["{truncated", '["a list"]', '{"step": "2"}'])
def test_corrupt_train_state_falls_back_to_the_previous_checkpoint(run, shards, caplog, bad):
    newest = latest_checkpoint(run)
    (newest / "train_state_0.json").write_text(bad)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        summary = pretrain(tiny_config(run, shards, "train.max_steps=3", "train.save_every=1", "train.resume=auto"))
    assert summary["steps"] == 3 and summary["steps_this_run"] == 2  # from step 1, not from the corrupt step 2
    warned = [r.getMessage() for r in caplog.records
              if "falling back to the previous complete checkpoint" in r.getMessage()]
    assert len(warned) == 1 and str(newest / "train_state_0.json") in warned[0]


def test_corrupt_train_state_named_when_no_checkpoint_is_usable(run, shards, capsys, monkeypatch):
    for ckpt in list_checkpoints(run):
        (ckpt / "train_state_0.json").write_text("{truncated")
    for resume in ("auto", str(latest_checkpoint(run))):
        cfg = tiny_config(run, shards, "train.max_steps=3", f"train.resume={resume}")
        code, err = _cli_pretrain(capsys, monkeypatch, cfg)
        assert code == 2 and len(err) == 1 and "train_state_0.json: not a readable train state" in err[0], err
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001", "step_00000002"]


@pytest.mark.parametrize("craft", ["torch_state_size", "python_state", "not_a_dict", "missing"])
def test_random_states_that_do_not_fit_the_run_are_refused(run, shards, capsys, monkeypatch, craft):
    path = latest_checkpoint(run) / "random_states_0.pkl"
    states = torch.load(path, weights_only=False)
    if craft == "missing":
        path.unlink()
    else:
        if craft == "torch_state_size":
            states["torch_manual_seed"] = torch.zeros(7, dtype=torch.uint8)
        elif craft == "python_state":
            states["random_state"] = (3, (1, 2, 3), None)
        else:
            states = [states]
        torch.save(states, path)
    cfg = tiny_config(run, shards, "train.max_steps=3", "train.resume=auto")
    code, err = _cli_pretrain(capsys, monkeypatch, cfg)
    assert code == 2 and len(err) == 1 and f"{path}: " in err[0] and "refused" in err[0], err
    assert latest_checkpoint(run).name == "step_00000002"


# --- 12. read-only run folder --------------------------------------------------------------------------------------


def _read_only(folder: Path) -> None:
    if os.geteuid() == 0:  # root writes through file modes: remount the tmpfs read-only instead
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_run_dir_is_one_line_before_any_training(tmp_path, shards, base_run, capsys, monkeypatch, existing):
    with _tmpfs(tmp_path / "ro", "64m") if os.geteuid() == 0 else _plain(tmp_path / "ro") as ro:
        run = ro / "run"
        if existing:
            shutil.copytree(base_run, run)
        _read_only(ro)
        monkeypatch.setattr("selfsup.train.loop.build_method", lambda *a: pytest.fail("training started"))
        cfg = tiny_config(run, shards, "train.max_steps=3", *(["train.resume=auto"] if existing else []))
        code, err = _cli_pretrain(capsys, monkeypatch, cfg)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"selfsup: error: run.dir={run}: cannot write"), err


@contextmanager
def _plain(path: Path):
    path.mkdir()
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)

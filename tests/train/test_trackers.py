"""train.log_with: accelerate's trackers get the resolved config and the logged metrics (offline: W&B offline mode,
an MLflow file store in a temp dir, TensorBoard event files), read back here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from selfsup.errors import ConfigError
from selfsup.train.accelerator import make_accelerator
from selfsup.train.loop import pretrain
from selfsup.train.trackers import flat_config
from tests.fixtures.pipeline import make_shards, metrics, tiny_config


def wandb_records(data: bytes, block: int = 32768):
    """The protobuf records of an offline ``run-*.wandb`` file (W&B's leveldb-style log: 7-byte file header, 32 kB
    blocks of chunks with a 7-byte crc/length/type header). Hand-written: wandb >= 0.20 ships no Python reader."""
    from wandb.proto.wandb_internal_pb2 import Record

    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def test_unknown_or_missing_tracker_is_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.log_with.*'nope'.*wandb"):
        make_accelerator(mixed_precision="no", grad_accum=1, device="cpu", project_dir=str(tmp_path), log_with=["nope"])


def test_flat_config_keeps_scalars_and_writes_lists_as_json():
    flat = flat_config({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "train": {"max_steps": None, "compile": False}})
    assert flat == {"optim.lr": 1e-3, "optim.betas": "[0.9, 0.99]", "train.max_steps": "null", "train.compile": False}


def test_wandb_mlflow_tensorboard_offline_read_back(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3.7 wants this for a file store
    run = tmp_path / "run"
    summary = pretrain(tiny_config(run, make_shards(tmp_path / "data"), "train.max_steps=3",
                                   "train.log_with=[tensorboard,wandb,mlflow]"))
    logged = metrics(run)
    assert summary["steps"] == 3 and [r["step"] for r in logged] == [1, 2, 3]

    # MLflow: experiment "selfsup", run named after the run folder, every logged loss, the config as params
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (ml_run,) = client.search_runs([client.get_experiment_by_name("selfsup").experiment_id])
    assert ml_run.info.run_name == "run" and ml_run.info.status == "FINISHED"
    history = client.get_metric_history(ml_run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["step"], pytest.approx(r["loss"])) for r in logged]
    assert ml_run.data.params["method.name"] == "dino" and float(ml_run.data.params["optim.lr"]) == 5e-4

    # W&B offline: the run's records under RUN_DIR/wandb hold the config and every logged loss
    (log_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    config, losses = {}, []
    for record in wandb_records(log_file.read_bytes()):
        if record.HasField("config"):
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        if record.HasField("history"):
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            losses.append((record.history.step.num, items.get("loss")))
    assert config["method.name"] == "dino" and config["optim.lr"] == 5e-4
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in logged]
    del wandb

    # TensorBoard: still RUN_DIR/tensorboard, with the loss of every logged step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert ([(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")]
            == [(r["step"], r["loss"]) for r in logged])


# --- a tracker that cannot start: one line naming it, the cause and the fix, before any work ---------------------


def _pretrain_cli(tmp_path, monkeypatch, capsys, *overrides: str) -> tuple[int, list[str], str, Path]:
    """``selfsup pretrain`` of the tiny config; fails the test if the shards are counted or indexed (start-up work)."""
    import selfsup.config
    import selfsup.train.loop
    from selfsup.cli import main as cli_main

    def no_work(*args, **kwargs):
        raise AssertionError("start-up work ran before the trackers started")

    run = tmp_path / "run"
    cfg = tiny_config(run, make_shards(tmp_path / "data"), "train.max_steps=2", *overrides)
    monkeypatch.setattr(selfsup.config, "load_config", lambda *a, **k: cfg)
    monkeypatch.setattr(selfsup.train.loop, "shard_counts", no_work)
    code = cli_main(["pretrain", "config.yaml"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("selfsup: error:")], err, run


def _offline_without_wandb_login(tmp_path, monkeypatch, wandb) -> None:
    """No W&B credentials anywhere, no WANDB_MODE, and a W&B server address where nothing listens: whatever wandb
    tries stays on this machine."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_SILENT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    wandb.teardown()  # wandb keeps the settings of an earlier run of this process (offline mode) until then


def test_wandb_without_login_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    _offline_without_wandb_login(tmp_path, monkeypatch, pytest.importorskip("wandb"))
    code, err, stderr, run = _pretrain_cli(tmp_path, monkeypatch, capsys, "train.log_with=[tensorboard,wandb]")
    assert code == 2 and len(err) == 1, stderr[-3000:]
    assert "train.log_with: wandb could not start: not logged in to W&B" in err[0]
    assert "wandb login" in err[0] and "WANDB_MODE=offline" in err[0]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in run.iterdir()) == []  # TensorBoard had started: its folder went with it


def test_mlflow_file_store_uri_is_one_line_naming_a_database_uri(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, err, stderr, run = _pretrain_cli(tmp_path, monkeypatch, capsys, "train.log_with=[tensorboard,mlflow]")
    assert code == 2 and len(err) == 1, stderr[-3000:]
    assert f"train.log_with: mlflow could not start: MLflow refuses the file store MLFLOW_TRACKING_URI={uri}" in err[0]
    assert "MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in err[0] and "MLFLOW_ALLOW_FILE_STORE=true" in err[0]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in run.iterdir()) == []


def test_any_exception_while_a_tracker_starts_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from accelerate.tracking import TensorBoardTracker

    def broken_start(self):
        raise OSError("disk quota exceeded\nand a second line")

    monkeypatch.setattr(TensorBoardTracker, "start", broken_start)
    code, err, stderr, run = _pretrain_cli(tmp_path, monkeypatch, capsys, "train.log_with=[tensorboard]")
    assert code == 2 and len(err) == 1, stderr[-3000:]
    assert err[0] == ("selfsup: error: train.log_with: tensorboard could not start (OSError: disk quota exceeded); "
                      "check that the run folder is writable, or drop it from train.log_with")
    assert "Traceback" not in stderr and not (run / "config.yaml").exists()

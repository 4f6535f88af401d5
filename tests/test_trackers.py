"""train.log_with: accelerate's trackers get the resolved config and the logged metrics (offline: W&B offline mode,
an MLflow file store in a temp dir, TensorBoard event files), read back here."""

from __future__ import annotations

import json
import struct

import pytest

from selfsup.errors import ConfigError
from selfsup.train.accelerator import make_accelerator
from selfsup.train.loop import pretrain
from selfsup.train.trackers import flat_config
from tests.pipeline_utils import make_shards, tiny_config


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
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
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
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")] == [(r["step"], r["loss"]) for r in logged]

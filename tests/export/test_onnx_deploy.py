"""ONNX export (fp32 parity, dynamic batch/size, int8) and the deploy cost/accuracy table, on tiny models."""

from __future__ import annotations

import json

import onnx
import pytest
import timm
import torch

from evaluation.cli import main as eval_main
from evaluation.loading.features import embed
from selfsup.cli import main as selfsup_main
from selfsup.errors import CheckpointError, ConfigError
from selfsup.onnx_export import (
    INT8_FILE,
    ONNX_FILE,
    REPORT_FILE,
    export_fp32,
    export_onnx,
    load_backbone,
    ort_features,
    ort_session,
)
from selfsup.train.loop import pretrain
from tests.fixtures.pipeline import make_image_folder, make_shards, tiny_config

TINY = {  # timm name, model args, input size
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1, dynamic_img_size=True), 32),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=32,
                                                  strict_img_size=False), 56),
    "cnn": ("resnet18", dict(), 32),
}


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the eval CLI's --threads is process-wide


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def save_export(folder, kind, **override):
    name, args, size = TINY[kind]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **{**args, **override})
    timm.models.save_for_hf(model, folder, safe_serialization=True,
                            data_config={"input_size": (3, size, size), "crop_pct": 1.0})
    return folder


@pytest.mark.parametrize("kind", ["vit", "swin", "cnn"])
def test_fp32_parity_with_dynamic_batch(tmp_path, kind):
    folder = save_export(tmp_path / kind, kind)
    model = load_backbone(folder)
    result = export_fp32(model, folder / ONNX_FILE)
    assert result["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(folder / ONNX_FILE)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    size = TINY[kind][2]
    x = torch.randn(5, 3, size, size)  # neither the traced batch (2) nor the checked one (3)
    with torch.inference_mode():
        ref = embed(model, x)  # exactly the features evaluation extracts
    assert (ort_features(ort_session(folder / ONNX_FILE), x) - ref).abs().max().item() <= 1e-4


def test_dynamic_size_cnn_yes_swin_no_and_failed_check_leaves_nothing(tmp_path):
    cnn = save_export(tmp_path / "cnn", "cnn")
    assert export_fp32(load_backbone(cnn), cnn / ONNX_FILE, dynamic_size=True)["checked_shapes"][1][2:] == [48, 48]
    assert ort_features(ort_session(cnn / ONNX_FILE), torch.randn(1, 3, 64, 64)).shape == (1, 512)
    swin = save_export(tmp_path / "swin", "swin")
    with pytest.raises(ConfigError, match="--onnx-dynamic-size: .* cannot take a dynamic image size"):
        export_fp32(load_backbone(swin), swin / ONNX_FILE, dynamic_size=True)
    vit = save_export(tmp_path / "vit", "vit")
    with pytest.raises(ConfigError, match="cannot take a dynamic image size"):  # position embeddings traced at 32
        export_fp32(load_backbone(vit), vit / ONNX_FILE, dynamic_size=True)
    with pytest.raises(CheckpointError, match="ONNX check failed"):
        export_fp32(load_backbone(vit), vit / ONNX_FILE, atol=-1.0)  # no tolerance can pass
    assert sorted(p.name for p in vit.iterdir()) == ["config.json", "model.safetensors"]


def test_int8_vit_dynamic_is_small_and_close(tmp_path, shards):
    folder = save_export(tmp_path / "vit", "vit", depth=2)  # MatMul weights dominate the file
    report = export_onnx(folder, int8=True, calibration=str(shards), calib_batches=1, batch_size=8)
    assert report["int8"]["mode"].startswith("dynamic")
    ratio = (folder / INT8_FILE).stat().st_size / (folder / ONNX_FILE).stat().st_size
    assert ratio <= 0.35 and report["int8"]["size_ratio"] == pytest.approx(ratio)
    assert report["int8"]["cosine_mean"] >= 0.99 and report["int8"]["check_images"] == 8
    assert json.loads((folder / REPORT_FILE).read_text()) == report


def test_int8_cnn_static_and_bad_calibration(tmp_path, shards):
    folder = save_export(tmp_path / "cnn", "cnn")
    with pytest.raises(Exception, match="nope"):  # the images are read before anything is written
        export_onnx(folder, int8=True, calibration=str(tmp_path / "nope" / "x.tar"))
    assert not (folder / ONNX_FILE).exists()
    report = export_onnx(folder, int8=True, calibration=str(shards), calib_batches=2, batch_size=4)
    assert report["int8"]["mode"].startswith("static") and report["int8"]["calibration_images"] == 8
    assert report["int8"]["cosine_mean"] >= 0.99 and report["int8"]["size_ratio"] < 0.35


def test_cli_export_onnx_int8_then_deploy_and_report_tables(tmp_path, shards, capsys):
    run = tmp_path / "run"
    pretrain(tiny_config(run, shards, "train.max_steps=2"))
    out = tmp_path / "export"
    assert selfsup_main(["export", str(run), str(out), "--onnx", "--int8"]) == 0  # images: the run's data.shards
    printed = capsys.readouterr().out
    assert "model.int8.onnx" in printed and "cosine to fp32" in printed
    assert {ONNX_FILE, INT8_FILE, REPORT_FILE} <= {p.name for p in out.iterdir()}
    assert selfsup_main(["export", str(run), str(tmp_path / "e2"), "--onnx-dynamic-size", "--onnx"]) == 2
    assert "cannot take a dynamic image size" in capsys.readouterr().err

    images = make_image_folder(tmp_path / "labelled", n_per_class=6, classes=2, size=32, seed=1)
    cnn = save_export(tmp_path / "cnn", "cnn")
    common = ["--train", str(images), "--val", str(images), "--label-fractions", "0.5,1.0", "--seeds", "1",
              "--batch-size", "8", "--threads", "1", "--device", "cpu"]
    report_dir = tmp_path / "deploy"
    assert eval_main(["deploy", "--weights", f"{out},{cnn}", "--out", str(report_dir), "--repeats", "2", *common]) == 0
    doc = json.loads((report_dir / "deploy.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert list(rows) == ["export [torch]", "export [onnx fp32]", "export [onnx int8]", "cnn [torch]"]
    assert rows["export [onnx int8]"]["file_bytes"] < rows["export [onnx fp32]"]["file_bytes"]
    assert rows["cnn [torch]"]["macs"] > rows["export [torch]"]["macs"] > 0
    for r in rows.values():
        assert r["params"] > 0 and r["latency_b1_ms"] > 0 and r["throughput_b32"] > 0 and r["threads"] == 1
        assert all(0 <= a <= 1 for a in r["accuracy"].values()) and set(r["accuracy"]) == {
            "knn@0.5", "knn@1", "linear@0.5", "linear@1"}
    md = (report_dir / "deploy.md").read_text()
    assert "| export [onnx int8] |" in md and "MACs = FLOPs / 2" in md
    assert (report_dir / "accuracy_vs_latency.png").stat().st_size > 0
    # fp32 ONNX features equal torch ones, so their kNN accuracies are the same
    assert rows["export [onnx fp32]"]["accuracy"] == rows["export [torch]"]["accuracy"]

    assert eval_main(["report", "--weights", f"{out},{cnn}", "--out", str(tmp_path / "report"), *common]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Deployment" in text and "| cnn [torch] |" in text and "| export [onnx int8] |" in text

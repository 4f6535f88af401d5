"""Detection transfer: timm backbones in Faster R-CNN, training, layer decay, and the CLI end to end."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from evaluation.cli import main as eval_main
from evaluation.detection.backbone import TimmDetectionBackbone, load_detection_body
from evaluation.detection.data import DetectionSample, load_detection_dataset
from evaluation.detection.images import DetectionImages, collate
from evaluation.detection.model import build_detector
from evaluation.detection.train import detector_param_groups, predict, train_detector
from evaluation.loading.backbones import model_sources, read_config
from selfsup.errors import CheckpointError
from tests.conftest import SHARED_DATA

RACCOON = SHARED_DATA / "raccoon.tar.gz"
VIT_ARGS = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
SWIN_ARGS = dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4,
                 strict_img_size=False)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _bodies(export: Path) -> list[torch.nn.Module]:
    """The detection bodies of the export and of its random init, loaded as every evaluation stage loads them."""
    return [load_detection_body(s).model for s in model_sources(weights=str(export))]


def _export(root: Path, kind: str, seed: int = 7) -> Path:
    torch.manual_seed(seed)
    if kind == "vit":
        m = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT_ARGS)
    else:
        m = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, **SWIN_ARGS)
    out = root / f"export_{kind}"
    timm.models.save_for_hf(m, out, safe_serialization=True)
    return out


def _synthetic_samples(root: Path, n: int = 4) -> list[DetectionSample]:
    """Images with one bright rectangle each (the object) on noise."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        arr = (rng.random((70, 90, 3)) * 80).astype(np.uint8)
        x1, y1 = int(rng.integers(0, 40)), int(rng.integers(0, 30))
        arr[y1:y1 + 30, x1:x1 + 40] = 230
        path = root / f"s{i}.jpg"
        Image.fromarray(arr).save(path)
        samples.append(DetectionSample(i + 1, path, 90, 70, ((x1, y1, x1 + 40.0, y1 + 30.0),), (0,), (False,)))
    return samples


@pytest.fixture(scope="module")
def raccoon_few(tmp_path_factory: pytest.TempPathFactory) -> list[DetectionSample]:
    """Four real raccoon images (synthetic ones when the shared data is missing)."""
    root = tmp_path_factory.mktemp("raccoon")
    if not RACCOON.exists():
        return _synthetic_samples(root)
    with tarfile.open(RACCOON) as tar:
        tar.extractall(root, filter="data")
    return list(load_detection_dataset(root / "raccoon").train[:4])


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_backbone_gives_fpn_levels_at_strides_8_to_64(tmp_path: Path, kind: str) -> None:
    body = _bodies(_export(tmp_path, kind))[0]
    backbone = TimmDetectionBackbone(body, fpn_channels=24)
    assert backbone.plain == (kind == "vit")
    x = torch.randn(2, 3, 128, 192)  # larger than and not shaped like the 64 px export
    feats = backbone(x)
    assert list(feats) == ["0", "1", "2", "3"]
    for f, s in zip(feats.values(), (8, 16, 32, 64)):
        assert f.shape == (2, 24, 128 // s, 192 // s)
        assert torch.isfinite(f).all()


def test_pretrained_weights_are_loaded_and_random_init_differs(tmp_path: Path) -> None:
    export = _export(tmp_path, "vit", seed=7)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT_ARGS)
    from safetensors.torch import load_file

    ref.load_state_dict(load_file(export / "model.safetensors"))
    a, b = _bodies(export)
    assert type(a) is type(b) and a.dynamic_img_size
    assert torch.equal(a.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    assert not torch.equal(b.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    assert torch.equal(b.patch_embed.proj.weight, _bodies(export)[1].patch_embed.proj.weight)  # seeded
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_fixed_size_export_gets_position_embedding_interpolation(tmp_path: Path) -> None:
    m = timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**VIT_ARGS, "dynamic_img_size": False})
    timm.models.save_for_hf(m, tmp_path / "fixed", safe_serialization=True)
    body = _bodies(tmp_path / "fixed")[0]
    assert body.dynamic_img_size
    assert TimmDetectionBackbone(body, fpn_channels=8)(torch.randn(1, 3, 128, 64))["0"].shape[-2:] == (16, 8)


def test_missing_export_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(str(tmp_path))


def test_layer_decay_groups_cover_every_parameter_once(tmp_path: Path) -> None:
    body = _bodies(_export(tmp_path, "vit"))[0]
    det = build_detector(body, num_classes=1, img_size=64, fpn_channels=16)
    groups = detector_param_groups(det, weight_decay=0.05, layer_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in det.parameters() if p.requires_grad)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    # Each block deeper gets 1 / layer_decay times the lr; new modules (pyramid, FPN, heads) the full lr.
    stem, b0, b1 = (scale[id(p)] for p in (body.patch_embed.proj.weight, body.blocks[0].attn.qkv.weight,
                                            body.blocks[1].attn.qkv.weight))
    assert b0 == pytest.approx(2 * stem) and b1 == pytest.approx(2 * b0) and b1 <= 1.0
    assert scale[id(det.roi_heads.box_predictor.cls_score.weight)] == 1.0
    no_wd = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(body.blocks[0].norm1.weight) in no_wd and id(det.roi_heads.box_head.fc6.weight) not in no_wd


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_tiny_detector_trains_on_raccoon_images(tmp_path: Path, kind: str,
                                                raccoon_few: list[DetectionSample]) -> None:
    body = _bodies(_export(tmp_path, kind))[0]
    det = build_detector(body, num_classes=1, img_size=128, fpn_channels=16, proposals=64, rois_per_image=32)
    before = (body.blocks[0].attn.qkv.weight.clone() if kind == "vit"
              else body.layers[0].blocks[0].attn.qkv.weight.clone())
    data = DetectionImages(raccoon_few, img_size=128, train=True)
    losses = train_detector(det, DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate), steps=3, lr=1e-3)
    assert len(losses) == 3 and all(np.isfinite(losses))
    after = body.blocks[0].attn.qkv.weight if kind == "vit" else body.layers[0].blocks[0].attn.qkv.weight
    assert not torch.equal(before, after)  # the backbone is fine-tuned, not frozen
    preds = predict(det, DataLoader(DetectionImages(raccoon_few[:2], img_size=128, train=False), batch_size=2,
                                    collate_fn=collate))
    assert [p["image_id"] for p in preds] == [s.image_id for s in raccoon_few[:2]]
    for p, s in zip(preds, raccoon_few):
        assert p["boxes"].shape[1] == 4 and len(p["boxes"]) == len(p["scores"]) == len(p["labels"])
        if len(p["boxes"]):  # mapped back to original pixels
            assert p["boxes"][:, 2].max() <= s.width + 1e-3 and p["labels"].min() >= 0


def _synthetic_voc(voc: Path) -> Path:
    """A VOC folder of six synthetic images, train s0-s3 and val s4-s5, one 'box' each."""
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    samples = _synthetic_samples(voc / "JPEGImages", n=6)
    for s in samples:
        (x1, y1, x2, y2), = s.boxes
        (voc / "Annotations" / f"{s.path.stem}.xml").write_text(
            f"<annotation><filename>{s.path.name}</filename><size><width>90</width><height>70</height></size>"
            f"<object><name>box</name><bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax>"
            f"<ymax>{y2:g}</ymax></bndbox></object></annotation>")
    (voc / "ImageSets/Main/train.txt").write_text("s0\ns1\ns2\ns3")
    (voc / "ImageSets/Main/val.txt").write_text("s4\ns5")
    return voc


def test_cli_writes_detection_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = _synthetic_voc(tmp_path / "voc")
    out = tmp_path / "out"
    argv = ["detect", "--weights", str(_export(tmp_path, "vit")), "--data", str(voc), "--out", str(out),
            "--label-fractions", "0.5,1.0", "--seeds", "2", "--steps", "2", "--img-size", "64",
            "--batch-size", "2", "--fpn-channels", "16", "--proposals", "32", "--rois-per-image", "16",
            "--device", "cpu", "--log-every", "0"]
    assert eval_main(argv) == 0  # `selfsup-eval detect ...`
    doc = json.loads((out / "detection.json").read_text())
    assert doc["dataset"] == "voc" and doc["classes"] == ["box"] and doc["val_split"] == "val"
    assert [(r["model"], r["label_fraction"]) for r in doc["rows"]] == [
        ("pretrained", 0.5), ("pretrained", 1.0), ("random_init", 0.5), ("random_init", 1.0)]
    for r in doc["rows"]:
        assert r["seeds"] == [0, 1] and r["n_images"] == (2 if r["label_fraction"] == 0.5 else 4)
        for m in ("mAP", "AP50", "AP75"):
            assert 0.0 <= r[m]["mean"] <= 1.0 and r[m]["std"] >= 0.0 and len(r[m]["values"]) == 2
            # The sample std over seeds, as every other stage of the report (it was the population std).
            assert r[m]["std"] == pytest.approx(np.std(r[m]["values"], ddof=1))
    assert {r["seed"] for r in doc["runs"]} == {0, 1}  # `--seeds 2` is a count, as in `selfsup-eval report`
    assert doc["config"]["steps"] == 2 and "command" in doc
    leaked = doc["data_check"]["val_in_train"]  # the synthetic images differ: no val image is a training image
    assert leaked["affected"] == 0 and leaked["num_val"] > 0 and leaked["num_reference"] == 4
    assert (out / "detection_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Bad input: one line, exit code 2.
    assert eval_main(argv[:3] + ["--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("patch", [4, 16])
def test_simple_feature_pyramid_upsamples_and_pools_to_target_strides(patch: int) -> None:
    from evaluation.detection.backbone import SimpleFeaturePyramid

    sfp = SimpleFeaturePyramid(32, patch_stride=patch)
    x = torch.randn(1, 32, 256 // patch, 128 // patch)  # the ViT map of a 256 x 128 image
    outs = sfp(x)
    assert [o.shape[-2:] for o in outs] == [(256 // s, 128 // s) for s in (8, 16, 32, 64)]
    assert [o.shape[1] for o in outs] == sfp.out_channels
    n_deconv = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in sfp.modules())
    assert n_deconv == (1 if patch == 16 else 0)
    with pytest.raises(ValueError, match="power of two"):
        SimpleFeaturePyramid(32, patch_stride=12)


def test_detection_random_init_is_the_reports_random_init(tmp_path: Path) -> None:
    """One way to load an export: the detection stage's random-init body is the kNN / linear probe one."""
    from evaluation.loading.backbones import load_model

    source = model_sources(weights=str(_export(tmp_path, "vit")))[1]
    body, reference = load_detection_body(source).model, load_model(source).model
    assert source.kind == "random_init" and body.dynamic_img_size
    assert torch.equal(body.patch_embed.proj.weight, reference.patch_embed.proj.weight)


def test_report_runs_the_detection_stage(tmp_path: Path) -> None:
    """`selfsup-eval report --detection-data` runs detection on the report's models, fractions and seeds."""
    for split in ("train", "val"):
        for c, colour in enumerate((30, 220)):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (colour, colour - i, 100)).save(tmp_path / split / f"c{c}" / f"{i}.png")
    out = tmp_path / "report"
    argv = ["report", "--weights", str(_export(tmp_path, "vit")), "--train", str(tmp_path / "train"),
            "--val", str(tmp_path / "val"), "--out", str(out), "--label-fractions", "1.0", "--seeds", "1",
            "--device", "cpu", "--no-visual", "--detection-data", str(_synthetic_voc(tmp_path / "voc")),
            "--detection-steps", "1", "--detection-img-size", "64", "--detection-fpn-channels", "16",
            "--detection-proposals", "16", "--detection-rois-per-image", "8", "--detection-log-every", "0"]
    assert eval_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["model"], r["label_fraction"]) for r in report["detection"]] == [("pretrained", 1.0),
                                                                                ("random_init", 1.0)]
    assert "detection_map.png" in report["plots"] and "## Detection" in (out / "report.md").read_text()
    doc = json.loads((out / "detection.json").read_text())
    assert doc["command"].startswith("selfsup-eval report") and doc["config"]["batch_size"] == 4
    assert [m["name"] for m in doc["models"]] == [m["name"] for m in report["models"]]
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line naming the flag, exit code 2
        eval_main(argv + ["--detection-img-size", "100"])
    assert exit_info.value.code == 2

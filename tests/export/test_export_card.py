"""An export every client loads and can trust: transformers AutoModel, honest config.json, a model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evaluation.report.card import card_section
from selfsup.cli import main as selfsup_main
from selfsup.export import export
from selfsup.train.loop import pretrain
from tests.conftest import ROOT
from tests.fixtures.pipeline import make_image_folder, make_shards, metrics, tiny_config

pytest.importorskip("transformers", reason="transformers is an optional extra (pip install -e '.[hf]')")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step DINO run (drop path on, so its config differs from the exported model's) and its export."""
    tmp = tmp_path_factory.mktemp("card")
    shards = make_shards(tmp / "data")
    pretrain(tiny_config(tmp / "run", shards, "train.max_steps=3", "model.drop_path_rate=0.1"))
    export(tmp / "run", tmp / "export", overrides=["export.license=mit"])
    return tmp


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_loads_in_transformers_without_selfsup_with_timm_features(run):
    """The "done when" of the issue: a process that has only torch, timm and transformers on its path loads the
    export through AutoModel / AutoImageProcessor / pipeline, with the features plain timm gives."""
    code = f"""
import json, sys
sys.path = [p for p in sys.path if p not in ({str(ROOT)!r}, {str(ROOT / 'ssl')!r}, '', '.')]
sys.meta_path = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]  # pip install -e
try:
    import selfsup
    sys.exit('selfsup is importable')
except ImportError:
    pass
import numpy as np, timm, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline
path = {str(run / 'export')!r}
hf = AutoModel.from_pretrained(path).eval()
proc = AutoImageProcessor.from_pretrained(path)
tm = timm.create_model('local-dir:' + path, pretrained=True).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
ref = timm.data.create_transform(**timm.data.resolve_model_data_config(tm))(img).unsqueeze(0)
px = proc(img, return_tensors='pt')['pixel_values']
with torch.no_grad():
    feats = tm(x)
    out = {{'wrapper': type(hf).__name__, 'shape': list(hf(pixel_values=x).pooler_output.shape),
           'model': (hf(pixel_values=x).pooler_output - feats).abs().max().item(),
           'processor': (px - ref).abs().max().item(),
           'pipeline': (torch.tensor(pipeline('image-feature-extraction', model=path)(img, pool=True)).flatten()
                        - tm(ref).flatten()).abs().max().item()}}
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=run, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["wrapper"] == "TimmWrapperModel" and out["shape"] == [2, 192]
    assert out["model"] == 0.0 and out["processor"] == 0.0 and out["pipeline"] < 1e-6


def test_config_json_describes_these_weights(run):
    cfg = json.loads((run / "export" / "config.json").read_text())
    assert "num_classes" not in cfg.get("model_args", {}) and cfg["num_classes"] == 0
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["tag"] == "selfsup_dino_s3" and pcfg["license"] == "mit"
    # nothing from timm's default (ImageNet) weights of the architecture
    assert not {"paper_ids", "paper_name", "origin_url", "description", "notes", "hf_hub_id"} & set(pcfg)
    assert "augreg" not in json.dumps(cfg) and "apache" not in json.dumps(cfg)
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert cfg["selfsup"] == {"method": "dino", "encoder": "teacher", "step": 3, "config_hash": summary["config_hash"],
                              "run": "run", "checkpoint": "step_00000003", "module": "teacher_backbone"}


def test_no_license_unless_set(run, tmp_path):
    export(run / "run", tmp_path / "plain")
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "license" not in cfg["pretrained_cfg"]
    assert "license" not in front_matter((tmp_path / "plain" / "README.md").read_text())


def test_no_absolute_path_in_any_file(run):
    files = sorted((run / "export").iterdir())
    assert [f.name for f in files] == ["README.md", "config.json", "metrics.jsonl", "model.safetensors",
                                      "selfsup_export.json"]
    for f in files:
        blob = f.read_bytes()
        for leak in (str(run), str(run.resolve()), str(ROOT), str(Path.home()), str(Path.cwd())):
            assert leak.encode() not in blob, (f.name, leak)


def test_card_front_matter_and_training_facts(run):
    card = (run / "export" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "mit" and {"dino", "self-supervised", "arxiv:2104.14294"} <= set(meta["tags"])
    summary = json.loads((run / "run" / "summary.json").read_text())
    final = summary["final"]
    assert "timm `vit_tiny_patch16_224`" in card and "patch_size=8" in card and "teacher" in card
    assert "out_dim=128" in card  # the method's key settings
    assert "shard source `shards`, 3 shard files, 24 samples per epoch" in card
    assert "steps: 3 of 12 scheduled, global batch 4, 12 samples seen" in card
    assert f"{summary['images_per_s']:.1f} images/s" in card
    assert "## Collapse signals at step 3" in card and f"{final['embed_std']:.4f}" in card
    assert f"{final['teacher_entropy']:.3f} of max {final['teacher_entropy_max']:.3f}" in card
    assert 'AutoModel.from_pretrained("USER/NAME")' in card and 'timm.create_model("hf-hub:USER/NAME"' in card
    # the pretraining log travels with the weights, up to the exported step
    records = metrics(run / "export")
    assert [r["step"] for r in records] == [1, 2, 3]


def test_export_takes_only_export_overrides(run, tmp_path, capsys):
    code = selfsup_main(["export", str(run / "run"), str(tmp_path / "x"), "optim.lr=1"])
    assert code == 2 and "export.*" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_update_card_adds_the_report_table(run, tmp_path, capsys):
    from evaluation.cli import main as eval_main

    before = (run / "export" / "README.md").read_text()
    for split, seed in (("train", 1), ("val", 2)):
        make_image_folder(tmp_path / split, n_per_class=4, size=32, seed=seed)
    argv = ["report", "--weights", str(run / "export"), "--train", str(tmp_path / "train"), "--val",
            str(tmp_path / "val"), "--out", str(tmp_path / "report"), "--label-fractions", "1.0", "--seeds", "1",
            "--batch-size", "8", "--threads", "1", "--device", "cpu", "--update-card"]
    try:
        assert eval_main(argv) == 0
        assert eval_main(argv) == 0  # twice: the section is replaced, not appended
    finally:
        torch.set_num_threads(1)
    card = (run / "export" / "README.md").read_text()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    section = card_section(report)
    assert card.count(section) == 1 and card.count("| evaluation | model |") == 1 and "Not evaluated yet" not in card
    assert "| kNN k=10 top-1 | pretrained |" in section and "| linear probe top-1 | random_init |" in section
    assert str(tmp_path) not in card
    assert card.split("## Evaluation")[0] == before.split("## Evaluation")[0]  # the rest of the card is kept
    # the report found the pretraining curves through the export's own copy of metrics.jsonl
    assert report["pretraining"]["num_records"] == 3 and "pretraining_curves.png" in report["plots"]


def test_update_card_without_card_fails_before_any_work(tmp_path, capsys):
    from evaluation.cli import main as eval_main

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    code = eval_main(["report", "--weights", str(tmp_path / "w"), "--train", "t", "--val", "v", "--out",
                      str(tmp_path / "out"), "--update-card"])
    assert code == 2 and "README.md not found" in capsys.readouterr().err and not (tmp_path / "out").exists()

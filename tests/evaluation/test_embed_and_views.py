"""`selfsup-eval embed` writes loadable safetensors with keys; `selfsup views` draws the training loader's crops."""

from __future__ import annotations

import json

import safetensors
import torch

from evaluation.cli import main as eval_main
from evaluation.loading.backbones import load_model, model_sources
from evaluation.loading.features import embed
from selfsup.cli import main as selfsup_main
from tests.fixtures.pipeline import make_shards, tiny_config
from tests.fixtures.visual import make_visual_setup


def test_embed_folder_writes_embeddings_with_keys_equal_to_the_model(tmp_path, capsys):
    setup = make_visual_setup(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "emb"
    assert eval_main(["embed", "--weights", str(setup / "export"), "--images", str(setup / "train"), "--out", str(out),
                      "--batch-size", "4", "--device", "cpu"]) == 0
    with safetensors.safe_open(str(out / "embeddings.safetensors"), "pt") as f:
        emb = f.get_tensor("embeddings")
        meta = f.metadata()
    keys = json.loads(meta["keys"])
    assert emb.shape == (6, 192) and len(keys) == 6 and keys[0] == "class0/0.png"
    assert meta["architecture"] == "vit_tiny_patch16_224"
    # row i is the export's feature of image keys[i], under the export's own eval preprocessing
    from PIL import Image

    from evaluation.loading.features import model_transform

    loaded = load_model(model_sources(weights=str(setup / "export"))[0])
    x = model_transform(loaded)(Image.open(setup / "train" / keys[4]).convert("RGB"))[None]
    with torch.inference_mode():
        torch.testing.assert_close(emb[4:5], embed(loaded.model, x), atol=1e-5, rtol=1e-4)
    # no overwrite: a second call into the same folder is a one-line error, the file is kept
    assert eval_main(["embed", "--weights", str(setup / "export"), "--images", str(setup / "train"), "--out",
                      str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "embeddings.safetensors").stat().st_size > 0


def test_embed_shards_keys_name_shard_and_sample(tmp_path):
    setup = make_visual_setup(tmp_path / "data", n_train=2, n_val=1)
    shards = make_shards(tmp_path / "s", n_per_class=3, max_per_shard=4)
    out = tmp_path / "emb"
    assert eval_main(["embed", "--weights", str(setup / "export"), "--shards", str(shards), "--out", str(out),
                      "--device", "cpu"]) == 0
    with safetensors.safe_open(str(out / "embeddings.safetensors"), "pt") as f:
        keys = json.loads(f.metadata()["keys"])
        assert f.get_tensor("embeddings").shape[0] == len(keys) == 6
    assert all(".tar#" in k for k in keys) and len(set(keys)) == 6


def test_views_png_uses_the_training_loader(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, n_per_class=4)
    cfg = tiny_config(tmp_path / "run", shards)
    import selfsup.build as build
    from selfsup.views_preview import training_views

    calls = []
    real = build.build_transform
    monkeypatch.setattr(build, "build_transform", lambda c: calls.append(c) or real(c))
    views, keys = training_views(cfg, 3)
    assert calls, "the preview must build its transform through selfsup.build like training does"
    assert len(views) == 2 + 2 and [v.shape[-1] for v in views] == [32, 32, 16, 16] and len(keys) == 3
    # exactly the batch the training loader yields for these samples (same seed, same per-sample augmentation)
    from selfsup.data.shard_list import expand_shards

    loader = build.build_loader(cfg, urls=expand_shards(str(shards)), rank=0, world_size=1, pin_memory=False)
    batch = next(iter(loader))
    first = {k: [v[i] for v in batch["views"]] for i, k in enumerate(batch["keys"])}
    for i, k in enumerate(keys):
        if k in first:
            for a, b in zip(first[k], [v[i] for v in views]):
                torch.testing.assert_close(a, b)
    assert set(keys) & set(first)

    png = tmp_path / "views.png"
    assert selfsup_main(["views", str(tmp_path / "run" / "unused.yaml")]) == 2  # missing config: one-line error
    from tests.fixtures.pipeline import CONFIGS

    args = ["views", str(CONFIGS / "dino_vit_tiny_cpu.yaml"), f"data.shards={shards}", "data.shuffle_buffer=16",
            "views.global_crop_size=32", "views.local_crop_size=16", "views.n_local=2", "--out", str(png), "--n", "2"]
    assert selfsup_main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert selfsup_main(args) == 2  # does not overwrite

"""export.global_pool: the export's pooled output (class token or patch tokens), what timm rebuilds and the monitor
scores, while training keeps the model's own pool."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from selfsup.build import build_method
from selfsup.cli import main as selfsup_main
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.export import export
from selfsup.models.backbone import check_global_pool, create_backbone, pooled_as
from selfsup.train.loop import pretrain
from selfsup.train.monitor import make_monitor
from tests.conftest import ROOT
from tests.fixtures.pipeline import export_knn_top1, make_hard_folder, make_shards, metrics, tiny_config


def patch_mean(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(b, 3, h, w) -> (b, d): the mean of the final-normed patch tokens (the prefix tokens left out)."""
    return model.forward_features(x)[:, model.num_prefix_tokens:].mean(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step DINO run whose config asks for the patch tokens' mean, with the kNN monitor on."""
    tmp = tmp_path_factory.mktemp("pool")
    labelled = make_hard_folder(tmp / "labelled")
    cfg = tiny_config(tmp / "run", make_shards(tmp / "data"), "export.global_pool=avg", f"monitor.data={labelled}",
                      "monitor.every=3", "monitor.max_train=30", "monitor.max_val=18", "train.max_steps=3")
    pretrain(cfg)
    return tmp, labelled


def test_export_avg_pool_is_the_patch_mean_in_plain_timm(run):
    tmp, _ = run
    export(tmp / "run", tmp / "avg", which="last")
    config = json.loads((tmp / "avg" / "config.json").read_text())
    assert config["global_pool"] == "avg" and config["model_args"]["fc_norm"] is False
    model = timm.create_model(f"local-dir:{tmp / 'avg'}", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, tokens = model(x), model.forward_features(x)
    torch.testing.assert_close(out, tokens[:, 1:].mean(1))
    assert not torch.allclose(out, tokens[:, 0], atol=1e-3)  # not the class token


def test_export_override_gives_the_class_token_of_the_same_weights(run):
    tmp, _ = run
    assert selfsup_main(["export", str(tmp / "run"), str(tmp / "token"), "export.global_pool=token",
                         "--which", "last"]) == 0
    token = timm.create_model(f"local-dir:{tmp / 'token'}", pretrained=True).eval()
    export(tmp / "run", tmp / "avg2", which="last")
    avg = timm.create_model(f"local-dir:{tmp / 'avg2'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(token(x), token.forward_features(x)[:, 0])
        torch.testing.assert_close(avg(x), patch_mean(token, x))  # same weights, other pool


def test_monitor_scores_the_pooled_output_the_export_gives(run, monkeypatch):
    tmp, labelled = run
    export(tmp / "run", tmp / "last", which="last")
    logged = [r for r in metrics(tmp / "run") if "knn_top1" in r][-1]
    assert logged["step"] == 3
    assert export_knn_top1(tmp / "last", labelled, max_train=30, max_val=18) == pytest.approx(logged["knn_top1"],
                                                                                              abs=1e-6)
    # while it scores, the encoder gives the patch mean; training then reads the class token again
    cfg = load_config(tmp / "run" / "config.yaml")
    monitor = make_monitor(cfg, run_dir=tmp / "monitor_only", stop_step=3)
    backbone = build_method(cfg, pretrained=False).export_backbone().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    seen, embed = [], monitor._embed
    monkeypatch.setattr(monitor, "_embed", lambda b, *a: seen.append(b(x)) or embed(b, *a))
    with torch.no_grad():
        monitor.score(backbone, torch.device("cpu"))
        assert len(seen) == 2 and all(torch.allclose(out, patch_mean(backbone, x)) for out in seen)
        torch.testing.assert_close(backbone(x), backbone.forward_features(x)[:, 0])


def test_pooled_as_switches_the_output_and_restores_it():
    model = create_backbone("vit_tiny_patch16_224", model_args={"img_size": 32, "patch_size": 8, "depth": 1}).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
        torch.testing.assert_close(before, model.forward_features(x)[:, 0])
        with pooled_as(model, "avg") as pooled:
            torch.testing.assert_close(pooled(x), patch_mean(model, x))
        torch.testing.assert_close(model(x), before)  # training reads the class token again
        with pooled_as(model, None), pooled_as(model, "token"):  # nothing to change
            torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("name, args, pool, words", [
    ("resnet18", {}, "avg", "has no token pooling"),
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1, "class_token": False, "global_pool": "avg"}, "token",
     "has no class token"),
])
def test_global_pool_a_model_cannot_give_is_one_line(name, args, pool, words):
    model = create_backbone(name, model_args=args)
    with pytest.raises(ConfigError, match=f"'export.global_pool': '{pool}' .*{words}") as e:
        check_global_pool(model, pool)
    assert "\n" not in str(e.value)


def test_global_pool_bad_value_is_one_line_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"'export.global_pool': 'mean' \(expected one of: token, avg, max, avgmax\)"):
        load_config(ROOT / "configs" / "dino_vit_tiny_cpu.yaml", ["export.global_pool=mean"])
    shards = make_shards(tmp_path / "data")
    with pytest.raises(ConfigError, match="export.global_pool.*no class token"):  # refused before any step
        pretrain(tiny_config(tmp_path / "run", shards, "export.global_pool=token", "model.args.class_token=false",
                             "model.args.global_pool=avg"))
    assert not (tmp_path / "run" / "checkpoints").exists()

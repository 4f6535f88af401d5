"""benchmarks/gpu_check.sh --rehearse: every part of the GPU check runs on the CPU with tiny sizes and writes its rows.

torch.compile is not rehearsed (its CPU build of the tiny DINO ViT alone took about 50 s here): the three compile
rows are there, each with a ``skipped`` reason and null measurements."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import SHARED_DATA
from tests.fixtures.launch import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'ssl'}:{ROOT}",
       "SHARED_DATA": os.environ.get("SHARED_DATA", str(SHARED_DATA))}  # ../shared/data, else this workplace's copy
NUMBERS = ("images_per_s", "step_s", "mfu", "peak_memory_gb", "knn_top1")
STEP_ROWS = [f"{m}/{mode}" for mode in ("eager", "compile") for m in ("dino_vit_s16", "dino_swin_t", "simclr_vit_s16")]


def _sh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    p = _sh("--rehearse", "--out", str(out), timeout=240)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_rehearsal_writes_every_row_with_every_field(rehearsal):
    out, rows = rehearsal
    names = [r["name"] for r in rows]
    assert set(STEP_ROWS + ["dino_vit_s16/fsdp", "data_pipeline", "dinov2_vit_tiny/cifar10_knn"]) <= set(names)
    for r in rows:
        for k in NUMBERS:
            assert r[k] is None or isinstance(r[k], (int, float)) and not isinstance(r[k], bool), (r["name"], k)
        assert isinstance(r["compile"], bool) and isinstance(r["fsdp"], bool), r["name"]
        for k in ("name", "device", "torch"):
            assert isinstance(r[k], str) and r[k], (r["name"], k)
        assert r["cuda"] is None or isinstance(r["cuda"], str)
    by = {r["name"]: r for r in rows}
    for name in STEP_ROWS[:3] + ["dino_vit_s16/fsdp"]:  # measured on the CPU
        r = by[name]
        assert r["images_per_s"] > 0 and r["step_s"] > 0 and r["peak_memory_gb"] > 0 and r["flops_per_step"] > 0
        assert r["mfu"] is None and r["compile"] is False  # no CPU peak is stated
    for name in STEP_ROWS[3:]:  # compile: not rehearsed, and says so
        assert by[name]["compile"] is True and by[name]["skipped"] and by[name]["images_per_s"] is None
    assert by["dino_vit_s16/fsdp"]["fsdp"] is True and by["dino_vit_s16/fsdp"]["distributed"] == "FSDP"
    assert sum(r["fsdp"] for r in rows) == 1
    assert by["data_pipeline"]["images_per_s"] > 0
    learn = by["dinov2_vit_tiny/cifar10_knn"]
    assert isinstance(learn["knn_top1"], float) and 0 <= learn["knn_top1"] <= 1
    assert isinstance(learn["knn_top1_random_init"], float) and learn["steps"] == 2


def test_rehearsal_markdown_lists_every_row_and_the_versions(rehearsal):
    out, rows = rehearsal
    md = (out / "gpu_check.md").read_text()
    for r in rows:
        assert f"| {r['name']} |" in md
    assert f"torch {torch.__version__}" in md and f"CUDA {torch.version.cuda}" in md and rows[0]["device"] in md


def test_bad_flag_is_one_line_and_exit_2():
    p = _sh("--bogus")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown argument '--bogus'" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA device")
def test_without_rehearse_and_without_cuda_it_refuses_in_one_line(tmp_path):
    p = _sh("--out", str(tmp_path / "o"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no CUDA device" in p.stderr
    assert not (tmp_path / "o").exists()

"""Per-step schedules: endpoints, warmup, monotonicity (DINO's cosine_scheduler semantics)."""

import math

import pytest

from selfsup.optim.schedules import cosine, linear_warmup, scaled_lr, warmup_cosine


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(500, 100, 0.04, 0.4) == pytest.approx(0.4)  # held after the end


def test_warmup_cosine_matches_dino_reference():
    # facebookresearch/dino utils.cosine_scheduler: linear warmup from 0, then
    # final + 0.5 * (base - final) * (1 + cos(pi * i / len(iters))).
    base, final, total, warm = 1e-3, 1e-6, 50, 10
    ref = [base * i / warm for i in range(warm)]
    ref += [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / (total - warm))) for i in range(total - warm)]
    ours = [warmup_cosine(s, total, warm, base, final) for s in range(total)]
    assert ours == pytest.approx(ref)


def test_warmup_cosine_with_a_start_is_the_evaluation_schedule():
    # fine-tuning and detection: the first update already moves (lr / warmup), then the same cosine to 0
    lr, total, warm = 5e-4, 40, 4
    ours = [warmup_cosine(s, total, warm, peak=lr, end=0.0, start=lr / warm) for s in range(total)]
    assert ours[0] == pytest.approx(lr / warm) and all(a < b for a, b in zip(ours[:warm], ours[1:warm + 1]))
    after = [0.5 * lr * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in range(warm, total)]
    assert ours[warm:] == pytest.approx(after) and ours[warm] == pytest.approx(lr)


def test_teacher_temp_warmup():
    vals = [linear_warmup(s, 30, 0.04, 0.07) for s in range(40)]
    assert vals[0] == pytest.approx(0.04) and vals[30] == pytest.approx(0.07) and vals[-1] == pytest.approx(0.07)
    assert all(a <= b for a, b in zip(vals, vals[1:]))


def test_lr_scaling_rule():
    assert scaled_lr(5e-4, 1024) == pytest.approx(2e-3)

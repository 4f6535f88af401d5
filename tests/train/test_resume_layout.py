"""Which data position a resumed process starts from: exact on the same layout, the interrupted epoch's start
on another one (train.resume_elastic)."""

from __future__ import annotations

import json

import pytest

from selfsup.errors import DataError
from selfsup.train.resume import load_resume_state


def _checkpoint(tmp_path, world: int, workers: int, positions: list[dict[str, list[int]]], global_batch: int = 16):
    for rank in range(world):
        data = {"num_workers": workers, "world_size": world, "rank": rank, "positions": positions[rank],
                "skipped": {}, "batches": 7, "next_worker": 1 % workers}
        state = {"step": 11, "samples_seen": 88, "bad_steps_total": 0, "bad_steps_in_row": 0, "data": data,
                 "global_batch": global_batch}
        (tmp_path / f"train_state_{rank}.json").write_text(json.dumps(state))
    return tmp_path


def test_same_layout_resumes_each_worker_exactly(tmp_path):
    ckpt = _checkpoint(tmp_path, 2, 2, [{"0": [1, 12], "1": [1, 10]}, {"0": [2, 3], "1": [1, 14]}])
    state, position, relayout = load_resume_state(ckpt, rank=1, world_size=2, num_workers=2, global_batch=16,
                                                  elastic=True)
    assert not relayout and state.step == 11
    assert position.start_positions() == {0: (2, 3), 1: (1, 14)} and position.next_worker == 1


def test_elastic_restarts_the_earliest_interrupted_epoch_on_every_new_worker(tmp_path):
    ckpt = _checkpoint(tmp_path, 2, 2, [{"0": [1, 12], "1": [2, 1]}, {"0": [2, 3], "1": [2, 14]}])
    for rank in range(3):  # three processes now, one worker each; rank 2 had no file of its own
        state, position, relayout = load_resume_state(ckpt, rank=rank, world_size=3, num_workers=1,
                                                      global_batch=16, elastic=True)
        assert relayout and state.step == 11 and state.global_batch == 16
        assert position.start_positions() == {0: (1, 0)} and position.world_size == 3 and position.rank == rank


def test_other_layout_without_elastic_names_the_option(tmp_path):
    ckpt = _checkpoint(tmp_path, 2, 2, [{"0": [0, 4]}, {"0": [0, 4]}])
    with pytest.raises(DataError, match="num_workers=2 but this run has num_workers=1.*train.resume_elastic"):
        load_resume_state(ckpt, rank=0, world_size=2, num_workers=1, global_batch=16, elastic=False)


def test_fresh_start_has_an_empty_position(tmp_path):
    state, position, relayout = load_resume_state(None, rank=0, world_size=1, num_workers=2, global_batch=32,
                                                  elastic=False)
    assert position.start_positions() == {} and position.next_worker == 0  # the loader starts at epoch 0
    assert not relayout and state.step == 0 and state.global_batch == 32

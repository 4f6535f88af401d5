"""One CLI error wrapper for every command; the method registry never hides an import error."""

from __future__ import annotations

import sys

import pytest

import selfsup.registry as registry
from selfsup.errors import CheckpointWriteError, ConfigError, run_cli


def _raise(e: BaseException):
    def command() -> int:
        raise e

    return command


def test_run_cli_prints_one_line_and_returns_the_error_exit_code(capsys):
    assert run_cli("selfsup-eval", _raise(ConfigError("bad value for 'x': 1"))) == 2
    assert capsys.readouterr().err == "selfsup-eval: error: bad value for 'x': 1\n"
    assert run_cli("selfsup", _raise(CheckpointWriteError("disk full"))) == 1
    assert run_cli("selfsup", lambda: None) == 0


def test_run_cli_writes_the_line_and_its_newline_in_one_write(monkeypatch):
    """Under DDP every process writes the same line to one pipe; a line written in two parts (print writes the text,
    then the newline, straight through) could join two processes' lines into one."""
    writes: list[str] = []

    class Recorder:
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

        def flush(self) -> None:
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stderr", Recorder())
    run_cli("selfsup", _raise(ConfigError("bad")))
    assert writes == ["selfsup: error: bad\n", "<flush>"]


def test_run_cli_unwraps_an_error_re_raised_from_a_dataloader_worker(capsys):
    # torch re-raises a worker's exception as its type with the worker's traceback as the message
    wrapped = RuntimeError("Caught DataError in DataLoader worker process 0.\nTraceback (most recent call last):\n"
                           '  File "x.py", line 1\nselfsup.errors.DataError: shard-000.tar: 3 of 10 samples bad\n')
    assert run_cli("selfsup", _raise(wrapped)) == 2
    assert capsys.readouterr().err == "selfsup: error: shard-000.tar: 3 of 10 samples bad\n"


def test_run_cli_keeps_the_traceback_of_a_bug():
    with pytest.raises(ZeroDivisionError):
        run_cli("selfsup", _raise(ZeroDivisionError("a bug")))


def test_a_missing_dependency_of_a_method_surfaces_as_an_import_error(monkeypatch):
    """A method whose module cannot import (here: its ``_queue`` dependency is missing) must not read as
    "unknown method 'moby'": the ImportError names what is missing. The builder imports the method's module."""
    monkeypatch.delitem(sys.modules, "selfsup.methods._moby_model", raising=False)
    monkeypatch.setitem(sys.modules, "selfsup.methods._queue", None)  # import of it raises ModuleNotFoundError
    assert "moby" in registry.specs()  # the spec (config, ranges) needs none of it
    with pytest.raises(ModuleNotFoundError, match="selfsup.methods._queue"):
        registry.get_builder("moby")(make_backbone=None, n_global=2, target_drop_path_rate=0.0)


def test_unknown_method_is_a_config_error_and_other_methods_still_build(monkeypatch):
    with pytest.raises(ConfigError, match="'method.name': 'byol'.*dino, dinov2, distill, moby, mocov3, simclr"):
        registry.get_builder("byol")
    monkeypatch.setitem(sys.modules, "selfsup.methods._queue", None)  # moby's dependency is missing ...
    monkeypatch.delitem(sys.modules, "selfsup.methods._simclr_model", raising=False)
    build = registry.get_builder("simclr")
    assert build.__name__ == "build_simclr"  # ... SimCLR does not need it
    from selfsup.models.backbone import create_backbone
    from tests.conftest import TINY_VIT

    simclr = build(make_backbone=lambda: create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]),
                   n_global=2, proj_hidden_dim=8, out_dim=4, temperature=0.1)
    assert type(simclr).__name__ == "SimCLR"


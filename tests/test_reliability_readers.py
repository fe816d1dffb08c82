"""Readers against a live trainer (issue 23): eval, export and play read a private copy of the checkpoint
(hard links), so a keep_last rotation deleting it mid-read no longer ends in "Can't find
'adapter_config.json'"; a run dir whose latest checkpoint vanishes while being pinned takes the next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import aha.trained
from aha.cli import main
from reliability_kit import SMOKE, refused, tree

EVAL = ["--limit", "1", "--max-new-tokens", "4", "--task", "countdown"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("readers") / "run"
    assert main([*SMOKE, f"output_dir={run}", "max_steps=3", "save_every=1", "keep_last=5"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _rotate_on_first_link(monkeypatch, victim: Path) -> None:
    """The trainer's rotation, at the worst moment: right after the reader chose `victim`."""
    real = aha.trained._link_or_copy

    def link(src, dest):
        if victim.exists():
            shutil.rmtree(victim)
        return real(src, dest)
    monkeypatch.setattr(aha.trained, "_link_or_copy", link)


def _rotate_while_loading(monkeypatch, victim: Path) -> None:
    """The rotation while the base model loads: the checkpoint's files are gone before the adapter is read."""
    real = aha.trained._with_adapter

    def with_adapter(path, *a, **k):
        shutil.rmtree(victim)
        return real(path, *a, **k)
    monkeypatch.setattr(aha.trained, "_with_adapter", with_adapter)


def test_a_checkpoint_deleted_while_loading_still_loads_from_its_links(run, tmp_path, monkeypatch, capsys):
    step3 = run / "checkpoints" / "step-3"
    _rotate_while_loading(monkeypatch, step3)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(run), *EVAL]) == 0
    err = capsys.readouterr().err
    assert "removed while it was evaluated" in err and (tmp_path / "eval-countdown-test-step-3.json").exists()
    assert not step3.exists()  # the JSON did not recreate a bogus step-3
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".aha-pin-")]  # links removed


def test_eval_of_a_run_dir_takes_the_next_checkpoint_when_the_latest_vanishes(run, tmp_path, monkeypatch, capsys):
    _rotate_on_first_link(monkeypatch, run / "checkpoints" / "step-3")
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run), *EVAL, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 1


def test_a_named_checkpoint_that_vanishes_is_one_line_naming_the_run_dir(run, tmp_path, monkeypatch, capsys):
    step3 = run / "checkpoints" / "step-3"
    _rotate_on_first_link(monkeypatch, step3)
    refused(capsys, ["eval", "--checkpoint", str(step3), *EVAL, "--json", str(tmp_path / "e.json")],
            "removed while being read", f"pass the run directory {run}")


def test_export_survives_the_rotation(run, tmp_path, monkeypatch, capsys):
    _rotate_while_loading(monkeypatch, run / "checkpoints" / "step-3")
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_reading_leaves_the_run_directory_as_it_was(run, tmp_path, capsys):
    before = tree(run)
    assert main(["eval", "--checkpoint", str(run), *EVAL, "--json", str(tmp_path / "e.json")]) == 0
    assert tree(run) == before

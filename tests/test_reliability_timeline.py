"""One timeline per run directory (issue 23): resuming from an earlier checkpoint while later ones
exist moves those aside (checkpoints/abandoned-TIME-from-step-K/, bytes unchanged), so the next
--resume, eval, export and play see the timeline last trained, and the logs agree with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aha.ckptdir import latest, list_checkpoints
from aha.cli import main
from aha.log import read_jsonl
from reliability_kit import SMOKE, tree

RUN_ARGS = [*SMOKE, "save_every=1"]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("timeline") / "run"
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=4", "keep_last=5"]) == 0
    return run


def _steps(run: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run)]


@pytest.mark.parametrize("keep_last", [5, 1])
def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(four_steps, tmp_path, capsys, keep_last):
    run = tmp_path / "run"
    shutil.copytree(four_steps, run)
    old = {name: tree(run / "checkpoints" / name) for name in ("step-3", "step-4")}
    step2 = run / "checkpoints" / "step-2"
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=3", f"keep_last={keep_last}", "--resume", str(step2)]) == 0
    err = capsys.readouterr().err
    (aside,) = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert aside.name.endswith("-from-step-2") and f"moved to {aside}" in err and "step-3, step-4" in err
    # nothing lost: the abandoned timeline's checkpoints are there, byte for byte
    assert {name: tree(aside / name) for name in ("step-3", "step-4")} == old
    # the run's own timeline: checkpoints up to the new step-3, logs ending at step 3
    assert _steps(run) == (["step-1", "step-2", "step-3"] if keep_last == 5 else ["step-3"])
    assert latest(run) == run / "checkpoints" / "step-3"
    assert json.loads((latest(run) / "meta.json").read_text())["step"] == 3
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert tree(latest(run)) != old["step-3"]  # the new step-3, not the abandoned one
    # the next --resume continues this timeline (it used to say max_steps was already reached)
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=4", f"keep_last={keep_last}", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err and _steps(run)[-1] == "step-4"
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resuming_the_latest_checkpoint_moves_nothing(four_steps, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(four_steps, run)
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=5", "keep_last=5", "--resume"]) == 0
    assert "abandoned" not in capsys.readouterr().err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert _steps(run) == ["step-1", "step-2", "step-3", "step-4", "step-5"]

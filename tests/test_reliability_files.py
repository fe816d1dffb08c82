"""Never lose or poison a run (issue 14), part 1: atomic rewrites of run files, the non-finite
guard, empty inputs. A refused command prints one line, exits 2 and leaves the disk as it was."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import aha.train
from aha import fsio, guards
from aha.log import RunLogger, read_jsonl
from reliability_kit import tree, refused, SMOKE, poisoned, always_nan, RewardTask, use_task, cfg_for, all_checkpoint_values_finite


# ---------------------------------------------------------------------------- 1. atomic rewrites

def big_run(run: Path, steps: int = 400, per_step: int = 40) -> None:
    """A run directory with long logs (about 5 MB of completions) and no checkpoint."""
    run.mkdir(parents=True)
    pad = "x" * 250
    with (run / "completions.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            for i in range(per_step):
                f.write(json.dumps({"step": s, "prompt_id": f"p{i}", "completion": pad, "reward": 0.5}) + "\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1}) + "\n"
                                               for s in range(1, steps + 1)))
    (run / "eval_completions.jsonl").write_text("")


def test_an_interrupted_resume_trim_loses_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    big_run(run)
    before = tree(run)
    real = os.replace
    for fault in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        def boom(*a, fault=fault):
            raise fault
        monkeypatch.setattr(fsio.os, "replace", boom)  # between writing the new file and swapping it in
        with pytest.raises(type(fault)):
            RunLogger(run, resume_step=100)
        assert tree(run) == before  # the old logs whole, no temporary file left
    monkeypatch.setattr(fsio.os, "replace", real)
    RunLogger(run, resume_step=100)
    rows = read_jsonl(run / "completions.jsonl")
    assert len(rows) == 100 * 40 and rows[-1]["step"] == 100


def test_killing_a_resume_mid_trim_leaves_old_or_new_logs_whole(tmp_path):
    """kill -9 at several moments of the trim of a large log: each time the file is the old one or
    the trimmed one, never truncated; the next start removes the temporary file."""
    run = tmp_path / "run"
    big_run(run, steps=1200)
    old = (run / "completions.jsonl").read_bytes()
    trimmed = b"".join(line for line in old.splitlines(keepends=True) if json.loads(line)["step"] <= 600)
    code = f"from aha.log import RunLogger; RunLogger({str(run)!r}, resume_step=600)"
    for delay in (0.15, 0.3, 0.45, 0.6, 0.8):
        p = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        p.kill()
        p.wait()
        assert (run / "completions.jsonl").read_bytes() in (old, trimmed)
        if (run / "completions.jsonl").read_bytes() == trimmed:
            break
    fsio.clean_stale(run)
    assert not [p for p in run.iterdir() if fsio.TMP_MARK in p.name]


def test_config_yaml_and_reports_are_replaced_atomically(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    monkeypatch.setattr(fsio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        fsio.atomic_write_text(target, "new: 2\n")
    assert target.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


# ---------------------------------------------------------------------------- 2. non-finite values

def test_nan_and_inf_rewards_skip_the_update_and_never_reach_a_checkpoint(tmp_path, monkeypatch, capsys):
    use_task(monkeypatch, RewardTask(flaky=poisoned))
    run = aha.train.train(cfg_for(tmp_path / "nan", "max_steps=6", "save_every=1", "keep_last=10",
                                  "max_nonfinite_steps=0"))
    err = capsys.readouterr().err
    rows = read_jsonl(run / "metrics.jsonl")
    skipped = [r["nonfinite_skipped"] for r in rows]
    assert 1.0 in skipped and 0.0 in skipped  # poisoned steps skipped, clean ones trained
    assert err.count("aha: warning: step") == sum(skipped)
    assert "non-finite reward 'flaky'" in err and "skipped this optimizer step" in err
    assert all(r["grad_norm"] is None for r in rows if r["nonfinite_skipped"])
    assert any(r["grad_norm"] and r["grad_norm"] > 0 for r in rows if not r["nonfinite_skipped"])
    assert all_checkpoint_values_finite(run)


def test_k_non_finite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch, capsys):
    use_task(monkeypatch, RewardTask(broken=always_nan))
    out = tmp_path / "stop"
    line = refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=9", "save_every=1", "max_nonfinite_steps=3"],
                   "3 steps in a row", "reward 'broken'", "max_nonfinite_steps", after_steps=True)
    assert "every checkpoint is finite" in line
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert all_checkpoint_values_finite(out)  # steps 1-2 were saved, unchanged weights


def test_an_overflowing_update_is_rolled_back(tmp_path, monkeypatch, capsys):
    """lr=1e30 puts weights near 1e30 (finite) after one step: the next forward pass overflows and,
    unguarded, the sampler fails. Each step is undone instead, warned and counted."""
    use_task(monkeypatch, RewardTask())
    run = aha.train.train(cfg_for(tmp_path / "lr", "lr=1e30", "max_steps=2", "save_every=1",
                                  "max_nonfinite_steps=0"))
    assert "overflowed the weights" in capsys.readouterr().err
    assert [r["nonfinite_skipped"] for r in read_jsonl(run / "metrics.jsonl")] == [1.0, 1.0]
    assert all_checkpoint_values_finite(run)


def test_guard_pieces():
    scores = [(1.0, {"a": 1.0, "b": 0.0}), (math.nan, {"a": 1.0, "b": math.nan}), (math.inf, {"a": math.inf, "b": 0})]
    assert guards.nonfinite_inputs(scores, torch.zeros(3)) == ("reward 'b' in 1 of 3 completions, "
                                                               "reward 'a' in 1 of 3 completions")
    assert guards.nonfinite_inputs([(1e38, {}), (-1e38, {})], torch.tensor([math.inf, 0])).startswith("advantages")
    assert guards.nonfinite_inputs(scores[:1], torch.zeros(1)) is None
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.tensor([1.0, math.inf, 0.0])
    assert guards.guarded_step(opt, [w], torch.tensor(math.inf)) == "loss or gradient"
    assert torch.equal(w.detach(), torch.ones(3)) and not opt.state
    g = guards.NonFiniteGuard(2, verbose=False)
    assert g.record(1, "x") == 1.0 and g.record(2, None) == 0.0 and g.record(3, "x") == 1.0
    with pytest.raises(guards.NonFiniteError, match="2 steps in a row"):
        g.record(4, "x")


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path, monkeypatch):
    from aha import checkpoint
    from aha.model import load_policy

    pol = load_policy("random:tiny-qwen2", device="cpu")
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    with torch.no_grad():
        next(p for p in pol.model.parameters() if p.requires_grad)[0] = math.nan
    with pytest.raises(guards.NonFiniteError, match="non-finite"):
        checkpoint.save(tmp_path, 1, pol.model, pol.tokenizer, opt, sched, {"epoch": 0, "cursor": 0}, "", 3)
    assert not (tmp_path / "checkpoints").exists()
    # and one written before this guard existed is refused on resume, naming it
    monkeypatch.setattr(guards, "require_finite", lambda *a: None)
    path = checkpoint.save(tmp_path, 1, pol.model, pol.tokenizer, opt, sched, {"epoch": 0, "cursor": 0}, "x: 1", 3)
    with pytest.raises(checkpoint.CheckpointError, match="step-1/adapter_model.safetensors holds non-finite weights"):
        checkpoint.load(path, pol.model, opt, sched)


# ---------------------------------------------------------------------------- 3. empty inputs

def test_an_empty_data_file_is_refused_before_overwrite_touches_the_old_run(tmp_path, capsys):
    run = tmp_path / "run"
    big_run(run, steps=5)
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    before = tree(run)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    refused(capsys, [*SMOKE, f"output_dir={run}", f"task_options.data={empty}", "--overwrite"],
            "0 train examples", str(empty))
    assert tree(run) == before


@pytest.mark.parametrize("option, split", [("n_train=0", "train"), ("n_test=0", "test")])
def test_a_split_with_no_examples_is_refused_at_once(tmp_path, capsys, monkeypatch, option, split):
    out = tmp_path / "run"
    monkeypatch.setattr(aha.train, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))  # not a clock
    refused(capsys, [*SMOKE, f"output_dir={out}", f"task_options.{option}", "eval_every=1"], f"0 {split} examples")
    assert not out.exists()


def test_eval_on_an_empty_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    refused(capsys, ["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--data", str(empty),
                     "--json", str(tmp_path / "out.json")], "0 test examples")
    assert sorted(os.listdir(tmp_path)) == ["test.jsonl"]


def test_replace_dir_swaps_a_directory_in_whole(tmp_path):
    final = tmp_path / "out"
    for content in ("old", "new"):  # first into nothing, then over the old one
        tmp = tmp_path / f".tmp-{content}"
        tmp.mkdir()
        (tmp / "f.txt").write_text(content)
        assert fsio.replace_dir(tmp, final) == final
        assert (final / "f.txt").read_text() == content and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing aside left behind

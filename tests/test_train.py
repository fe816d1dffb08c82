"""The trainer end to end on CPU: smoke run, exact resume, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aha.config import load_config
from aha.log import read_jsonl
from aha.train import train

TIMING = {"step_time", "gen_time", "score_time", "update_time", "tokens_per_s"}


def toy_cfg(out: Path, *extra: str):
    return load_config("smoke", [f"output_dir={out}", "task=toy", "deterministic=true", "tensorboard=false",
                                 "rollout.max_new_tokens=12", "lr=0.01", "probe_every=2", *extra])


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_smoke_preset_via_cli_writes_the_run(tmp_path: Path):
    out = tmp_path / "run"
    r = run_cli("train", "-c", "configs/smoke.yaml", f"output_dir={out}", cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    required = {"reward", "accuracy", "format_rate", "completion_len", "reflection_rate", "frac_zero_std", "kl",
                "entropy", "grad_norm", "lr", "step_time", "gen_time", "reward/answer"}
    assert required <= rows[0].keys()
    assert (out / "config.yaml").exists() and (out / "completions.jsonl").stat().st_size > 0
    assert list((out / "tb").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-3"]
    assert (out / "checkpoints/step-3/adapter_model.safetensors").exists()
    # a second run into the same directory refuses instead of destroying it
    again = run_cli("train", "-c", "configs/smoke.yaml", f"output_dir={out}", cwd=Path(__file__).resolve().parents[1])
    assert again.returncode != 0 and "--resume" in again.stderr
    assert len(read_jsonl(out / "metrics.jsonl")) == 3


def _deterministic(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_gives_the_same_metrics_as_a_straight_run(tmp_path: Path, toy_task):
    straight = train(toy_cfg(tmp_path / "a", "max_steps=6", "save_every=3"))
    split = tmp_path / "b"
    train(toy_cfg(split, "max_steps=3", "save_every=3"))
    train(toy_cfg(split, "max_steps=6", "save_every=3"), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert _deterministic(a) == _deterministic(b)
    assert any(r["grad_norm"] > 0 for r in a)  # the weights really moved
    from safetensors.torch import load_file
    wa = load_file(straight / "checkpoints/step-6/adapter_model.safetensors")
    wb = load_file(split / "checkpoints/step-6/adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    probes = [r for r in read_jsonl(split / "completions.jsonl") if r.get("probe")]
    assert [r["step"] for r in probes] == [1, 2, 3, 4, 6]  # 3 was the first half's last step


def test_resume_from_an_explicit_checkpoint_and_full_finetune(tmp_path: Path, toy_task):
    run = train(toy_cfg(tmp_path / "f", "finetune=full", "max_steps=2", "save_every=1"))
    assert (run / "checkpoints/step-1/model.safetensors").exists()
    train(toy_cfg(tmp_path / "f", "finetune=full", "max_steps=3", "save_every=1"),
          resume=str(run / "checkpoints/step-1"))
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["max_stepz=3"], "max_stepz"),
    (["max_steps=abc"], "max_steps"),
    (["model=/nonexistent/model.gguf"], "does not exist"),
    (["model=/nonexistent/dir"], "does not exist"),
    (["finetune=qlora"], "CUDA"),
    (["model=random:no-such-arch"], "no-such-arch"),
])
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path: Path, args, message):
    r = run_cli("train", "-c", "smoke", f"output_dir={tmp_path / 'r'}", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_corrupt_and_partial_checkpoints_are_refused(tmp_path: Path):
    out = tmp_path / "run"
    assert run_cli("train", "-c", "smoke", f"output_dir={out}", "max_steps=2", "save_every=1").returncode == 0
    step2 = out / "checkpoints/step-2"
    (step2 / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    r = run_cli("train", "-c", "smoke", f"output_dir={out}", "max_steps=4", "--resume")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    (step2 / "meta.json").unlink()
    r = run_cli("train", "-c", "smoke", f"output_dir={out}", "max_steps=4", "--resume", str(step2))
    assert r.returncode == 2 and "incomplete" in r.stderr
    r = run_cli("train", "-c", "smoke", f"output_dir={out}", "--resume", str(tmp_path / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    # nothing that was on disk was lost
    assert (out / "checkpoints/step-1/meta.json").exists() and len(read_jsonl(out / "metrics.jsonl")) == 2


def test_torch_resume_refuses_a_jax_checkpoint(tmp_path):
    from aha import checkpoint
    from aha.errors import CheckpointError

    ckpt = tmp_path / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    for f in ("adapter_model.safetensors", "trainer_state.pt", "config.yaml"):
        (ckpt / f).write_bytes(b"x")
    (ckpt / "meta.json").write_text('{"step": 2, "complete": true, "backend": "jax"}')
    with pytest.raises(CheckpointError, match="backend=jax"):
        checkpoint.verify(ckpt)


def test_full_finetuning_on_half_precision_weights_warns(tmp_path, capsys):
    cfg = load_config("smoke", ["finetune=full", "dtype=bfloat16", "max_steps=1", "save_every=0", "probe_every=0",
                                f"output_dir={tmp_path}", "tensorboard=false"])
    train(cfg)
    assert "updates below their precision are lost" in capsys.readouterr().err


# ---- issue 12: the held-out baseline, collapse and the no-signal warning


def test_no_signal_warns_once_after_k_steps(tmp_path: Path, monkeypatch, capsys):
    from aha.tasks import TASKS

    monkeypatch.setitem(TASKS, "flat", "conftest:EqualRewardTask")  # every completion gets the same reward
    out = train(toy_cfg(tmp_path / "flat", "task=flat", "max_steps=5", "save_every=0", "warn_no_signal_steps=3",
                        "probe_every=0"))
    err = capsys.readouterr().err
    assert err.count("no group has carried a learning signal for 3 steps") == 1
    assert "rewards that are all equal" in err and "sampling too narrow" in err and "reward hacking" in err
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["frac_zero_std"] == 1.0 for r in rows) and all("answer_collapse" in r for r in rows)


def test_toy_task_with_signal_does_not_warn(tmp_path: Path, toy_task, capsys):
    train(toy_cfg(tmp_path / "toy", "max_steps=3", "save_every=0", "warn_no_signal_steps=1"))
    assert "learning signal" not in capsys.readouterr().err


def test_eval_runs_at_step_0_and_last_step_and_resume_stays_exact(tmp_path: Path, toy_task):
    ev = ("eval_every=2", "eval_limit=3")
    straight = train(toy_cfg(tmp_path / "a", "max_steps=5", "save_every=3", *ev))
    split = tmp_path / "b"
    train(toy_cfg(split, "max_steps=3", "save_every=3", *ev))
    train(toy_cfg(split, "max_steps=5", "save_every=3", *ev), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    no_eval = lambda rows: [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in _deterministic(rows)]  # noqa: E731
    assert no_eval(a) == no_eval(b)  # evaluating does not disturb training
    evals = [r for r in a if "eval/accuracy" in r]
    # the split run also evaluated at step 3, its first half's last step; the shared evals agree
    assert _deterministic([r for r in b if "eval/accuracy" in r and r["step"] != 3]) == _deterministic(evals)
    assert [r["step"] for r in evals] == [0, 2, 4, 5]  # the untrained policy, every 2 steps, the last step
    assert {"eval/accuracy", "eval/accuracy_lenient", "eval/n", "eval/format_rate"} <= evals[0].keys()
    assert evals[0]["eval/n"] == 3 and set(evals[0]) - {"step"} <= {k for k in evals[0] if k.startswith("eval/")}
    rows = read_jsonl(straight / "eval_completions.jsonl")
    assert sorted({r["step"] for r in rows}) == [0, 2, 4, 5] and len(rows) == 12


# ---------------------------------------------------------------------------- resume compares configs

def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path: Path, toy_task, capsys):
    run = train(toy_cfg(tmp_path / "r", "max_steps=2", "save_every=2"))
    before = _snapshot(run)
    capsys.readouterr()
    assert train(toy_cfg(run, "max_steps=2"), resume="latest") == run
    err = capsys.readouterr().err
    assert "already reached max_steps=2; nothing to train (pass max_steps=N with N > 2" in err
    assert _snapshot(run) == before  # logs not trimmed, config.yaml and tb/ not rewritten


def test_resume_compares_the_checkpoint_config(tmp_path: Path, toy_task, capsys):
    from aha.errors import CheckpointError, ConfigError

    run = train(toy_cfg(tmp_path / "r", "max_steps=2", "save_every=2"))
    before = _snapshot(run)
    # A parameter shape changed: one line naming the key and both values; nothing on disk changes.
    with pytest.raises(ConfigError) as err:
        train(toy_cfg(run, "max_steps=4", "lora.r=8", "lora.target_modules=q_proj"), resume="latest")
    message = str(err.value)
    assert "\n" not in message and "lora.r 16 -> 8" in message and "lora.target_modules" in message
    assert "corrupt" not in message and _snapshot(run) == before
    # The CLI: exit 2, one line, no traceback, nothing written (refused before the task is even built).
    r = run_cli("train", "-c", "smoke", f"output_dir={run}", "task=toy", "deterministic=true", "tensorboard=false",
                "rollout.max_new_tokens=12", "lr=0.01", "probe_every=2", "model=random:tiny-llama", "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith("aha: note:")]  # task=toy's note
    assert len(lines) == 1 and "model random:tiny-qwen2 -> random:tiny-llama" in lines[0]
    assert _snapshot(run) == before
    # Behaviour changes are allowed, with one warning line naming them.
    capsys.readouterr()
    train(toy_cfg(run, "max_steps=3", "prompts_per_step=4"), resume="latest")
    warning = [line for line in capsys.readouterr().err.splitlines() if "changed settings" in line]
    assert len(warning) == 1 and "max_steps 2 -> 3" in warning[0] and "prompts_per_step 2 -> 4" in warning[0]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    # A config.yaml that cannot be read is what "corrupt" is for.
    (run / "checkpoints/step-3/config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(toy_cfg(run, "max_steps=4"), resume="latest")

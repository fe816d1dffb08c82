"""Data-parallel GRPO under torchrun (gloo, 2 CPU processes): the same update as one process, and
a run that resumes under torchrun exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aha import distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "dist_update_worker.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # PYTHONFAULTHANDLER: a rank that dies of a signal (SIGABRT, SIGSEGV) prints where its threads were
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "AHA_DEBUG": "1", "PYTHONFAULTHANDLER": "1"}


def _torchrun(*args: str, n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-8000:]


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["micro_batch_tokens=16"],  # several micro-batches, a different number on each rank
    ["algo.loss_agg=token", "algo.beta=0.1", "algo.mu=2"],  # KL to the adapter-less base, two inner steps
    ["--drop", "2", "--drop", "3", "algo.loss_agg=constant"],  # rank 1's groups all dropped: it idles
    # issue 16's variants: GSPO's sequence ratio with an entropy bonus; CISPO with TIS; REINFORCE++'s batch
    # baseline and scale (statistics over both ranks) with the dual clip and sequence-level MIS
    ["algo.ratio=sequence", "algo.epsilon_low=0.01", "algo.epsilon_high=0.02", "algo.mu=2", "algo.entropy_coef=0.05",
     "micro_batch_tokens=16"],
    ["algo.surrogate=reinforce", "algo.epsilon_low=1", "algo.epsilon_high=0.1", "algo.loss_agg=token", "algo.mu=2",
     "algo.rollout_correction=truncate", "algo.rollout_correction_cap=1.2"],
    ["--rewards", "algo.baseline=batch", "algo.scale_rewards=batch", "algo.dual_clip=1.5", "algo.mu=2",
     "algo.rollout_correction=mask", "algo.rollout_correction_level=sequence", "--drop", "1"],
])
def test_two_ranks_update_equals_one_rank(tmp_path, args):
    _run([sys.executable, str(WORKER), str(tmp_path / "one.pt"), *args])
    _run(_torchrun(str(WORKER), str(tmp_path / "two.pt"), *args))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    moved = 0
    for name, w in one["weights"].items():
        assert torch.allclose(w, two["weights"][name], atol=1e-6), name
        moved += int(w.abs().sum() > 0)
    assert moved > 0  # the update did something (LoRA B starts at zero)
    for k in ("loss", "grad_norm", "clip_frac", "entropy", "mismatch/kl", "mismatch/max_abs_logp_diff"):
        assert one["stats"][k] == pytest.approx(two["stats"][k], rel=1e-5, abs=1e-7), k
    assert one["stats"]["grad_norm"] > 0 and one["stats"]["mismatch/kl"] > 0
    assert torch.allclose(one["adv"], two["adv"], atol=1e-6)


def _train(out: Path, *extra: str) -> None:
    _run(_torchrun("-m", "aha", "train", "-c", "smoke", f"output_dir={out}", "tensorboard=false",
                   "deterministic=true", "probe_every=0", *extra))


@pytest.mark.slow
def test_torchrun_train_writes_once_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(straight, "max_steps=4")
    _train(resumed, "max_steps=2")
    state = torch.load(resumed / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # both ranks' sampling streams are in the checkpoint
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    _train(resumed, "max_steps=4", "--resume", "latest")

    def rows(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(straight), rows(resumed)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]  # rank 0 alone logs, once a step
    for ra, rb in zip(a, b):
        for k in ("reward", "loss", "grad_norm", "completion_len"):
            assert ra[k] == rb[k], (ra["step"], k)
    # Each step logs the completions of both ranks: prompts_per_step (2) x G (4).
    completions = [json.loads(line) for line in (straight / "completions.jsonl").read_text().splitlines()]
    assert sum(1 for c in completions if c["step"] == 1) == 8
    from safetensors.torch import load_file

    wa = load_file(straight / "checkpoints" / "step-4" / "adapter_model.safetensors")
    wb = load_file(resumed / "checkpoints" / "step-4" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_prompts_must_split_over_ranks(monkeypatch):
    from aha.config import ConfigError, load_config
    from aha.train import train

    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Dist(rank=0, world=3), "cpu"))
    with pytest.raises(ConfigError, match="multiple of --nproc-per-node"):
        train(load_config("smoke", ["prompts_per_step=4"]))


def test_shard_gives_each_rank_whole_contiguous_prompts():
    items = list(range(6))
    shares = [distributed.shard(items, distributed.Dist(rank=r, world=3)) for r in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5]]
    assert distributed.shard(items, distributed.Dist()) == items


def test_jax_backend_under_torchrun_is_refused(monkeypatch, capsys):
    from aha.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "-c", "smoke", "backend=jax"]) == 2
    assert "without torchrun" in capsys.readouterr().err


def test_world_size_without_torchrun_is_a_clear_error(monkeypatch):
    from aha.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.setup("cpu")


def test_checkpoint_keeps_each_ranks_rng_and_warns_on_another_world_size(tmp_path):
    from aha import checkpoint
    from aha.model import load_policy

    pol = load_policy("random:tiny-qwen2", "lora", device="cpu")
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    torch.manual_seed(1)
    rank0 = checkpoint.rng_state()
    torch.manual_seed(2)
    rank1 = checkpoint.rng_state()
    path = checkpoint.save(tmp_path, 3, pol.model, pol.tokenizer, opt, sched, {"epoch": 0, "cursor": 6}, "{}", 2,
                           rng_states=[rank0, rank1])
    torch.manual_seed(99)
    state = checkpoint.load(path, pol.model, opt, sched, rank=1, world=2)
    assert torch.equal(torch.get_rng_state(), rank1["torch"]) and state["cursor"] == 6
    with pytest.warns(UserWarning, match="not bit-exact"):
        checkpoint.load(path, pol.model, opt, sched, rank=0, world=1)

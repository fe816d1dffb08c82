"""What the reliability tests share (issue 14): the disk's state as hashes, the refused-command
check, a subprocess `aha`, and small tasks whose rewards are letters, NaN or inf."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import torch

import aha.train
from aha.cli import main
from aha.config import load_config
from aha.tasks.base import Example, Task

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under `root` with a hash of its bytes: the disk's state."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], *needles: str, after_steps: bool = False) -> str:
    """Run `aha ARGV` in-process: it must exit 2 with one line on stderr containing `needles`
    (`after_steps`: a run that stopped, so its progress lines come first; the error is the last)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert (after_steps or len(lines) == 1) and lines[-1].startswith("aha: error: "), err
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, **kw)


SMOKE = ["train", "-c", "smoke", "tensorboard=false", "probe_every=0", "rollout.max_new_tokens=8"]


# ---------------------------------------------------------------------------- test tasks

def letters(completion: str, ex: Example) -> float:
    return sum(c.isalpha() for c in completion) / max(len(completion), 1)


def poisoned(completion: str, ex: Example) -> float:
    """NaN for 3 of the 16 prompts, inf for 2: only steps drawing those are poisoned. 6 steps of 2
    prompts draw 12 of the 16, so at least one step is poisoned and at least one is clean."""
    i = int(ex.id.rsplit("/", 1)[1])
    return math.nan if i < 3 else math.inf if i < 5 else 0.0


def always_nan(completion: str, ex: Example) -> float:
    return math.nan


class RewardTask(Task):
    """16 train prompts; rewards as given (by default one with a signal for a random model)."""

    name = "rtask"

    def __init__(self, **rewards):
        self.rewards = {"letters": (letters, 1.0), **{k: (fn, 1.0) for k, fn in rewards.items()}}

    def examples(self, split: str):
        n = 16 if split == "train" else 2
        return [Example(id=f"r/{split}/{i}", prompt=f"{split} prompt {i}:", target=None) for i in range(n)]

    def is_correct(self, completion: str, ex: Example) -> bool:
        return False

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return False


def use_task(monkeypatch, task: Task) -> None:
    monkeypatch.setattr(aha.train, "get_task", lambda name, **o: task)


def cfg_for(out: Path, *extra: str):
    return load_config("smoke", [f"output_dir={out}", "tensorboard=false", "probe_every=0",
                                 "rollout.max_new_tokens=8", "deterministic=true", *extra])


def all_checkpoint_values_finite(run: Path) -> bool:
    from safetensors.torch import load_file

    ckpts = list((run / "checkpoints").glob("step-*"))
    assert ckpts
    for c in ckpts:
        for t in load_file(c / "adapter_model.safetensors").values():
            if not torch.isfinite(t).all():
                return False
        state = torch.load(c / "trainer_state.pt", weights_only=True)
        for st in state["optimizer"]["state"].values():
            if not all(torch.isfinite(v).all() for v in st.values() if torch.is_tensor(v)):
                return False
    return True

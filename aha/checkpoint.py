"""Checkpoints: atomic save, keep the last K, exact resume.

A checkpoint `checkpoints/step-N/` holds the weights (the LoRA adapter, or the full model), the
tokenizer, `config.yaml`, and `trainer_state.pt` (optimizer, scheduler, every RNG - of every
rank under torchrun - the data cursor, the step). It is written into a temporary directory and
renamed into place, and `meta.json` is its last file: a directory without it is not a checkpoint. Restoring all of that
makes "3 steps, resume, 3 steps" identical to "6 steps".
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from aha import fsio, guards
from aha.errors import CheckpointError
from aha.model import unwrap

STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
ADAPTER_FILE = "adapter_model.safetensors"
MODEL_FILE = "model.safetensors"
_STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(run_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
         scheduler: Any, trainer_state: dict[str, Any], config_yaml: str, keep_last: int,
         rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write checkpoint `step`. `rng_states`: every rank's `rng_state()` in rank order (default: this process's).

    Refuses (NonFiniteError) weights or optimizer state holding NaN or inf, before writing anything."""
    guards.require_finite([p for p in model.parameters() if p.requires_grad], f"checkpoint step-{step} (weights)")
    guards.require_finite(guards.optimizer_tensors(optimizer), f"checkpoint step-{step} (optimizer state)")
    with writing(run_dir, step) as tmp:
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json
        else:
            unwrap(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "config.yaml").write_text(config_yaml)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_states or [rng_state()], **trainer_state}, tmp / STATE_FILE)
    return commit(run_dir, tmp, step, keep_last)


@contextlib.contextmanager
def writing(run_dir: Path, step: int) -> Iterator[Path]:
    """`begin` a checkpoint; if writing it fails (full or read-only disk, Ctrl-C) its temporary
    directory is removed, and a write error becomes one line naming the path and the fix."""
    tmp = begin(run_dir, step)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError" or type(e) is RuntimeError:
            # torch.save and safetensors report a full disk as RuntimeError / SafetensorError
            cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
            raise CheckpointError(f"could not write checkpoint step-{step} under {tmp.parent}: {cause}; free "
                                  "disk space or make the output directory writable, then --resume") from e
        raise


def begin(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory to write checkpoint `step` into (then `commit` it)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{fsio.STALE_CKPT_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(run_dir: Path, tmp: Path, step: int, keep_last: int, **meta: Any) -> Path:
    """Write meta.json last, rename the directory into place, keep the last `keep_last`."""
    (tmp / META_FILE).write_text(json.dumps({"step": step, "complete": True, **meta}))
    final = Path(run_dir) / "checkpoints" / f"step-{step}"
    aside = final.with_name(f"{fsio.TRASH_PREFIX}{final.name}-{os.getpid()}")
    if final.exists():  # re-saving a step after a resume: swap the new one in, then delete the old
        fsio.remove_tree(aside)
        os.replace(final, aside)
    os.rename(tmp, final)
    fsio.fsync_dir(final.parent)
    fsio.remove_tree(aside)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        fsio.remove_tree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories (complete or not) ordered by step."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoint under {Path(run_dir) / 'checkpoints'} to resume from; "
                              "start without --resume, or pass --resume PATH")
    return ckpts[-1]


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's meta, or a CheckpointError saying what is wrong with it."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("backend", "torch") != "torch":
        raise CheckpointError(f"checkpoint {path} was written by the {meta['backend']} backend; resume it with "
                              f"backend={meta['backend']} (`aha eval --checkpoint` can still load its adapter)")
    weights = [f for f in (ADAPTER_FILE, MODEL_FILE) if (path / f).exists()]
    missing = [f for f in (STATE_FILE, "config.yaml") if not (path / f).exists()]
    if missing or not weights:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing) or 'its weights'}; "
                              "resume from an earlier one with --resume PATH")
    return meta


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint directory, or a CheckpointError if the directory is not a whole checkpoint."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path} is incomplete (no valid {META_FILE}); it was not fully written. "
                              "Resume from an earlier one with --resume PATH") from None


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNGs; returns the trainer state (step, cursor...)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    verify(path)
    try:
        if hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict

            if not (path / ADAPTER_FILE).exists():
                raise CheckpointError(f"checkpoint {path} holds full weights but this run uses LoRA "
                                      "(finetune=lora/qlora); resume with the run's own config")
            result = set_peft_model_state_dict(model, load_file(path / ADAPTER_FILE))
            bad = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
            if bad:
                raise CheckpointError(f"checkpoint {path}: adapter does not match this model ({bad[0]} ...)")
        else:
            if not (path / MODEL_FILE).exists():
                raise CheckpointError(f"checkpoint {path} holds a LoRA adapter but this run uses finetune=full")
            base = unwrap(model)
            missing, unexpected = base.load_state_dict(load_file(path / MODEL_FILE), strict=False)
            # Tied embeddings are saved once; anything else missing means the wrong model.
            missing = [k for k in missing if k not in _tied_keys(base)]
            if missing or unexpected:
                raise CheckpointError(f"checkpoint {path} does not match the model "
                                      f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); "
                              "resume from an earlier one with --resume PATH") from e
    if not guards.finite([p for p in model.parameters() if p.requires_grad]):
        raise CheckpointError(f"checkpoint {path} holds non-finite weights (NaN/inf, saved before aha refused "
                              "to save them); resume from an earlier one with --resume PATH")
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    rngs = state.pop("rng")
    rngs = [rngs] if isinstance(rngs, dict) else rngs  # checkpoints from before torchrun support hold one
    if len(rngs) == world:
        set_rng_state(rngs[rank])
    else:  # resuming on another number of processes: same weights and data order, fresh sampling streams
        import warnings

        warnings.warn(f"checkpoint {path} was written by {len(rngs)} process(es), this run has {world}: "
                      "the sampling RNGs restart from the seed and the step, so the run is not bit-exact")
        seed = int(state["step"]) * 7919 + rank
        random.seed(seed)
        torch.manual_seed(seed)
    return state


def _tied_keys(model: torch.nn.Module) -> set[str]:
    if getattr(model.config, "tie_word_embeddings", False):
        return {"lm_head.weight"}
    return set()

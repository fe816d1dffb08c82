"""Checkpoints: atomic save, keep the last K, exact resume.

A checkpoint `checkpoints/step-N/` holds the weights (the LoRA adapter, or the full model), the
tokenizer, `config.yaml`, and `trainer_state.pt` (optimizer, scheduler, every RNG - of every
rank under torchrun - the data cursor, the step). It is written into a temporary directory and
renamed into place, and `meta.json` is its last file: a directory without it is not a checkpoint. Restoring all of that
makes "3 steps, resume, 3 steps" identical to "6 steps".
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from aha import guards
from aha.ckptdir import ADAPTER_FILE, MODEL_FILE, commit, one_line, read_meta, writing
from aha.errors import CheckpointError
from aha.model import unwrap
from aha.seeding import resharded_sampling_seed, seed_rngs

STATE_FILE = "trainer_state.pt"


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


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Resume from a torch checkpoint, in place.

    Args:
        path: a checkpoint directory (`RUN_DIR/checkpoints/step-N`).
        model, optimizer, scheduler: built from the run's config as for a fresh run; their state
            is overwritten with the saved one.
        rank, world: this process under torchrun. Its saved RNG states are restored when the
            checkpoint was written by `world` processes; otherwise (with a warning) every rank's
            streams restart from `seeding.resharded_sampling_seed`, and the run is not bit-exact.
    Returns:
        The loop state saved with it: {"step", "epoch", "cursor"} (`aha.data.LoopState`).
    Raises:
        CheckpointError: a missing, incomplete, corrupt or other backend's checkpoint, or weights
            that do not fit `model` (LoRA vs full, another architecture).
    """
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
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {one_line(e)}); "
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
        seed_rngs(resharded_sampling_seed(int(state["step"]), rank))
    return state


def _tied_keys(model: torch.nn.Module) -> set[str]:
    if getattr(model.config, "tie_word_embeddings", False):
        return {"lm_head.weight"}
    return set()

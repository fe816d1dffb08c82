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
from aha.ckptdir import (ADAPTER_CONFIG, ADAPTER_FILE, MODEL_FILE, adapter_config_problem, commit, damaged,
                         earlier_hint, one_line, read_meta, weights_problem, writing)
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
    """The checkpoint's meta, or a CheckpointError naming the file that is missing or wrong (meta.json,
    the weights, adapter_config.json beside an adapter, trainer_state.pt, config.yaml) and the fix."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("backend", "torch") != "torch":
        raise CheckpointError(f"checkpoint {path} was written by the {meta['backend']} backend; resume it with "
                              f"backend={meta['backend']} (`aha eval --checkpoint` can still load its adapter)")
    weights = [f for f in (ADAPTER_FILE, MODEL_FILE) if (path / f).exists()]
    missing = [f for f in (STATE_FILE, "config.yaml") if not (path / f).exists()]
    if ADAPTER_FILE in weights:  # eval, export and play cannot load the adapter without its config
        problem = adapter_config_problem(path)
        if problem == "missing":
            missing.append(ADAPTER_CONFIG)
        elif problem:
            raise damaged(path / ADAPTER_CONFIG, problem, path)
    if missing or not weights:
        what = ", ".join(missing) + (" and " if missing and not weights else "") + \
            ("its weights" if not weights else "")
        raise CheckpointError(f"checkpoint {path} is missing {what}; {earlier_hint(path)}")
    for name in weights:  # the header only: a truncated or empty file is refused before any model loads
        problem = weights_problem(path / name)
        if problem:
            raise damaged(path / name, problem, path)
    read_state(path, meta["step"], mmap=True)  # memory-mapped: checking even a large optimizer state costs little
    return meta


def read_state(path: Path, step: int, mmap: bool = False) -> dict[str, Any]:
    """trainer_state.pt of checkpoint `path`, checked for what `load` needs: a dict holding `step`
    (== meta.json's), `epoch` and `cursor` (ints >= 0), the optimizer's and scheduler's state dicts
    and the RNG states. Raises CheckpointError naming the file and an earlier checkpoint."""
    file = path / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - pickle, zip, EOF and OS errors alike mean an unreadable file
        raise CheckpointError(f"{file} is unreadable ({type(e).__name__}: {one_line(e, 120)}); "
                              f"{earlier_hint(path)}") from e
    problem = state_problem(state, step)
    if problem:
        raise damaged(file, problem, path)
    return state


def state_problem(state: Any, step: int) -> str | None:
    """What is wrong with a loaded trainer state (a phrase after its path), or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not the trainer's state"
    for key in ("step", "epoch", "cursor"):
        if type(state.get(key)) is not int or state[key] < 0:
            return f"has no {key} (an integer >= 0)"
    if state["step"] != step:
        return f"is of step {state['step']}, but meta.json says {step}"
    optimizer = state.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict) and isinstance(groups, list)
            and groups and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        return "has no optimizer state"
    if not isinstance(state.get("scheduler"), dict):
        return "has no learning-rate scheduler state"
    rngs = state.get("rng")
    rngs = [rngs] if isinstance(rngs, dict) else rngs
    if not (isinstance(rngs, list) and rngs and all(isinstance(r, dict) and isinstance(r.get("python"), (list, tuple))
                                                    and torch.is_tensor(r.get("torch")) for r in rngs)):
        return "has no valid RNG states"
    return None


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
    meta = verify(path)
    state = read_state(path, meta["step"])  # checked before any weight is touched
    weights = path / (ADAPTER_FILE if hasattr(model, "peft_config") else MODEL_FILE)
    try:
        if hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict

            if not (path / ADAPTER_FILE).exists():
                raise CheckpointError(f"checkpoint {path} holds full weights but this run uses LoRA "
                                      "(finetune=lora/qlora); resume with the run's own config")
            result = set_peft_model_state_dict(model, load_file(weights))
            bad = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
            if bad:
                raise CheckpointError(f"checkpoint {path}: adapter does not match this model ({bad[0]} ...)")
            absent = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if absent:  # an adapter file without (some of) this model's LoRA weights would train from init
                raise CheckpointError(f"{weights} lacks {len(absent)} of this model's LoRA weights (e.g. {absent[0]}): "
                                      f"the file is damaged or of another config; {earlier_hint(path)}")
        else:
            if not (path / MODEL_FILE).exists():
                raise CheckpointError(f"checkpoint {path} holds a LoRA adapter but this run uses finetune=full")
            base = unwrap(model)
            missing, unexpected = base.load_state_dict(load_file(weights), strict=False)
            # Tied embeddings are saved once; anything else missing means the wrong model.
            missing = [k for k in missing if k not in _tied_keys(base)]
            if missing or unexpected:
                raise CheckpointError(f"checkpoint {path} does not match the model "
                                      f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    except (SafetensorError, RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{weights} is unreadable or does not fit this model ({type(e).__name__}: "
                              f"{one_line(e)}); {earlier_hint(path)}") from e
    if not guards.finite([p for p in model.parameters() if p.requires_grad]):
        raise CheckpointError(f"{weights} holds non-finite weights (NaN/inf, saved before aha refused "
                              f"to save them); {earlier_hint(path)}")
    try:
        optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
        rngs = state.pop("rng")
        rngs = [rngs] if isinstance(rngs, dict) else rngs  # checkpoints from before torchrun support hold one
        if len(rngs) == world:
            set_rng_state(rngs[rank])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:  # state of another model or damaged
        raise CheckpointError(f"{path / STATE_FILE} does not fit this run ({type(e).__name__}: {one_line(e, 120)}): "
                              f"the optimizer or RNG state is damaged or of another config; {earlier_hint(path)}") from e
    if len(rngs) != world:  # resuming on another number of processes: same weights and data order, fresh sampling streams
        import warnings

        warnings.warn(f"checkpoint {path} was written by {len(rngs)} process(es), this run has {world}: "
                      "the sampling RNGs restart from the seed and the step, so the run is not bit-exact")
        seed_rngs(resharded_sampling_seed(int(state["step"]), rank))
    return state


def _tied_keys(model: torch.nn.Module) -> set[str]:
    if getattr(model.config, "tie_word_embeddings", False):
        return {"lm_head.weight"}
    return set()

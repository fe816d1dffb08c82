"""Checkpoints of the JAX backend: the torch path's layout where it can be, so `aha eval --checkpoint`,
`aha play` and `aha report` work on a JAX run unchanged.

`checkpoints/step-N/` holds `adapter_model.safetensors` + `adapter_config.json` (the LoRA adapters
in peft's format: the torch path loads them onto the same base), the tokenizer, `config.yaml`,
`optimizer.npz` (every leaf of the optax state, in tree order), `jax_state.json` (step, data
cursor) and `meta.json`, written last. aha/ckptdir.py writes the directory as for the torch path: under
a temporary name, renamed into place, only the last `keep_last` kept. No RNG state is
saved: the loop derives each step's key from (seed, step), so a resumed run samples what the
uninterrupted one would have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from aha.ckptdir import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    META_FILE,
    commit,
    latest,
    list_checkpoints,
    read_meta,
    writing,
)
from aha.errors import CheckpointError
from aha.guards import NonFiniteError
from aha.jax import lora as lora_lib

OPT_FILE = "optimizer.npz"
STATE_FILE = "jax_state.json"

__all__ = ["latest", "list_checkpoints", "load", "save", "verify"]


def save(run_dir: Path, step: int, lora: Any, opt_state: Any, tokenizer: Any, trainer_state: dict[str, Any],
         config_yaml: str, keep_last: int, adapter_config: dict[str, Any]) -> Path:
    from safetensors.numpy import save_file

    weights = lora_lib.to_peft(jax.device_get(lora))
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(opt_state))]
    for what, arrays in (("weights", weights.values()), ("optimizer state", leaves)):
        if not all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.floating)):
            raise NonFiniteError(f"refusing to save checkpoint step-{step} ({what}): it holds non-finite values; "
                                 "the previous checkpoint is intact - resume from it with --resume, with a lower lr")
    with writing(run_dir, step) as tmp:
        save_file(weights, str(tmp / ADAPTER_FILE))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
        tokenizer.save_pretrained(tmp)
        (tmp / "config.yaml").write_text(config_yaml)
        np.savez(tmp / OPT_FILE, *leaves)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}))
    return commit(run_dir, tmp, step, keep_last, backend="jax")


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's meta, or a CheckpointError saying what is wrong with it."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("backend") != "jax":
        raise CheckpointError(f"checkpoint {path} was written by the torch backend; resume it with backend=torch "
                              "(its adapter can still be evaluated with `aha eval --checkpoint`)")
    missing = [f for f in (ADAPTER_FILE, OPT_FILE, STATE_FILE, "config.yaml") if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}; resume from an earlier one "
                              "with --resume PATH")
    return meta


def load(path: Path, lora_template: Any, opt_template: Any, targets: tuple[str, ...],
         model_cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(adapters, optimizer state, trainer state) from a checkpoint; the templates give the tree
    structures (a fresh run's), so a checkpoint of another model or rank is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    verify(path)
    try:
        lora = lora_lib.from_peft(load_file(str(path / ADAPTER_FILE)), model_cfg, targets)
        with np.load(path / OPT_FILE) as f:
            leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
        state = json.loads((path / STATE_FILE).read_text())
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or of another model ({type(e).__name__}: {e}); "
                              "resume from an earlier one with --resume PATH, or with the run's own config") from e
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(lora_template)]
    if shapes != [np.shape(x) for x in jax.tree_util.tree_leaves(lora)]:
        raise CheckpointError(f"checkpoint {path}: its adapters do not fit this model/LoRA rank; "
                              "resume with the run's own config")
    treedef = jax.tree_util.tree_structure(opt_template)
    if len(leaves) != treedef.num_leaves:
        raise CheckpointError(f"checkpoint {path}: optimizer state does not match this config")
    opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
    state.pop("step", None)
    return lora, opt_state, {"step": json.loads((path / META_FILE).read_text())["step"], **state}

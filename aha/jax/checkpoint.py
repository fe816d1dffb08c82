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
    adapter_config_problem,
    commit,
    damaged,
    earlier_hint,
    latest,
    list_checkpoints,
    one_line,
    read_meta,
    weights_problem,
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
    missing = [f for f in (ADAPTER_FILE, ADAPTER_CONFIG, OPT_FILE, STATE_FILE, "config.yaml") if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}; {earlier_hint(path)}")
    problem = adapter_config_problem(path)
    if problem:
        raise damaged(path / ADAPTER_CONFIG, problem, path)
    problem = weights_problem(path / ADAPTER_FILE)  # headers and small files only: before any model loads
    if problem:
        raise damaged(path / ADAPTER_FILE, problem, path)
    try:
        with np.load(path / OPT_FILE) as f:  # the zip directory only
            f.files  # noqa: B018
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, OSError alike
        raise CheckpointError(f"{path / OPT_FILE} is unreadable ({type(e).__name__}: {one_line(e, 100)}); "
                              f"{earlier_hint(path)}") from e
    read_state(path, meta["step"])
    return meta


def read_state(path: Path, step: int) -> dict[str, Any]:
    """jax_state.json, checked: an object with the data cursor (epoch, cursor: ints >= 0) of `step`."""
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({one_line(e, 80)}); {earlier_hint(path)}") from e
    if not isinstance(state, dict) or any(type(state.get(k)) is not int or state[k] < 0 for k in ("epoch", "cursor")):
        raise CheckpointError(f"{file} has no data cursor (integers epoch and cursor >= 0): the checkpoint is "
                              f"damaged; {earlier_hint(path)}")
    if state.get("step", step) != step:
        raise CheckpointError(f"{file} is of step {state.get('step')}, but meta.json says {step}: the checkpoint is "
                              f"damaged; {earlier_hint(path)}")
    return state


def load(path: Path, lora_template: Any, opt_template: Any, targets: tuple[str, ...],
         model_cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(adapters, optimizer state, trainer state) from a checkpoint; the templates give the tree
    structures (a fresh run's), so a checkpoint of another model or rank is a CheckpointError.
    Every file is checked before use: one line naming the file and an earlier checkpoint."""
    from safetensors.numpy import load_file

    path = Path(path)
    step = verify(path)["step"]

    def damaged(file: str, why: str, err: BaseException | None = None) -> CheckpointError:
        detail = f" ({type(err).__name__}: {one_line(err, 120)})" if err is not None else ""
        return CheckpointError(f"{path / file} {why}{detail}; {earlier_hint(path)}")

    state = read_state(path, step)
    try:
        lora = lora_lib.from_peft(load_file(str(path / ADAPTER_FILE)), model_cfg, targets)
    except Exception as e:  # noqa: BLE001 - a truncated file, a key of another model: the same fix
        raise damaged(ADAPTER_FILE, "is unreadable or of another model", e) from e
    try:
        with np.load(path / OPT_FILE) as f:
            leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, ValueError, OSError alike
        raise damaged(OPT_FILE, "is unreadable", e) from e
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(lora_template)]
    if shapes != [np.shape(x) for x in jax.tree_util.tree_leaves(lora)]:
        raise CheckpointError(f"{path / ADAPTER_FILE}: its adapters do not fit this model/LoRA rank; "
                              "resume with the run's own config")
    treedef = jax.tree_util.tree_structure(opt_template)
    template_shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(opt_template)]
    if [np.shape(x) for x in leaves] != template_shapes:
        raise CheckpointError(f"{path / OPT_FILE}: the optimizer state does not match this config "
                              f"({len(leaves)} arrays, {len(template_shapes)} expected, or other shapes); "
                              f"{earlier_hint(path)}")
    opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
    state.pop("step", None)
    return lora, opt_state, {"step": step, **state}

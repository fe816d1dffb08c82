"""Checkpoint directories, for both backends: the layout, the atomic write, which checkpoint a run
resumes from, and when a fresh run refuses to start. What goes *inside* a checkpoint is the
backend's own (aha/checkpoint.py for torch, aha/jax/checkpoint.py for JAX).

`RUN_DIR/checkpoints/step-N/` is written under a temporary name and renamed into place, and
`meta.json` is its last file: a directory without it is not a checkpoint. Only the last
`keep_last` are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from aha import fsio
from aha.errors import CheckpointError, ConfigError

META_FILE = "meta.json"
ADAPTER_FILE = "adapter_model.safetensors"  # LoRA adapters, in peft's format (both backends)
ADAPTER_CONFIG = "adapter_config.json"  # peft's description of them
MODEL_FILE = "model.safetensors"  # full fine-tuning's weights (torch)
_STEP_RE = re.compile(r"^step-(\d+)$")


def begin(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory to write checkpoint `step` into (then `commit` it)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{fsio.STALE_CKPT_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


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


def commit(run_dir: Path, tmp: Path, step: int, keep_last: int, **meta: Any) -> Path:
    """Write meta.json last, rename the directory into place, keep the last `keep_last`."""
    (tmp / META_FILE).write_text(json.dumps({"step": step, "complete": True, **meta}))
    # re-saving a step after a resume swaps the new one in, then deletes the old
    final = fsio.replace_dir(tmp, Path(run_dir) / "checkpoints" / f"step-{step}")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        fsio.remove_tree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories (complete or not) ordered by step."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path:
    """The highest-step checkpoint directory of a run; a CheckpointError when there is none."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoint under {Path(run_dir) / 'checkpoints'} to resume from; "
                              "start without --resume, or pass --resume PATH")
    return ckpts[-1]


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint directory, or a CheckpointError if the directory is not a whole checkpoint."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path} is incomplete (no valid {META_FILE}); it was not fully written. "
                              "Resume from an earlier one with --resume PATH") from None


def checkpoint_to_resume(run_dir: Path, resume: str | None, overwrite: bool,
                         verify: Callable[[Path], Any], cfg: Any = None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run.

    `resume`: None (fresh), "latest" (the run's highest step) or a checkpoint path; the checkpoint
    is checked by `verify`, the backend's own, and its config against `cfg` (`check_config`:
    ConfigError for a change the saved state cannot follow, a warning for other changes). A fresh
    run into a directory that already holds a run (metrics or checkpoints) is a ConfigError unless
    `overwrite`: nothing is lost by accident.
    """
    if resume is not None:
        path = latest(run_dir) if resume == "latest" else Path(resume)
        verify(path)
        warning = check_config(path, cfg.to_dict()) if cfg is not None else None
        if warning and os.environ.get("RANK", "0") == "0":
            print(f"aha: warning: {warning}", file=sys.stderr)
        return path
    has_run = (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0
    if not overwrite and (has_run or list_checkpoints(run_dir)):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, pick another "
                          f"output_dir=..., or pass --overwrite to replace it")
    return None


def finished_note(path: Path | None, cfg: Any) -> str | None:
    """The line to print, and stop on, when the checkpoint to resume already reached `cfg.max_steps`:
    nothing to train, and nothing in the run directory is touched. None otherwise (and for a fresh run)."""
    if path is None:
        return None
    step = read_meta(path)["step"]
    if step < cfg.max_steps:
        return None
    return (f"aha: the run in {cfg.output_dir} already reached max_steps={cfg.max_steps}; nothing to train "
            f"(pass max_steps=N with N > {step} to continue it)")


def check_config(path: Path, current: dict[str, Any]) -> str | None:
    """Compare the config a checkpoint was trained with (its config.yaml) with the current one
    (`Config.to_dict()`), before anything is loaded or written. A change the saved state cannot
    follow (model, fine-tuning mode, a parameter shape: `RESUME_REFUSED`) is a ConfigError
    naming each key with both values; other changes come back as one warning line (None if none).
    A config.yaml that cannot be read is a corrupt checkpoint."""
    import yaml

    from aha.errors import ConfigError

    path = Path(path)
    try:
        saved = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt (config.yaml: {one_line(e)}); "
                              "resume from an earlier one with --resume PATH") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt (config.yaml is not a mapping of config keys); "
                              "resume from an earlier one with --resume PATH")
    refused, changed = resume_diff(saved, current)
    if refused:
        raise ConfigError(f"cannot resume {path}: its saved state depends on settings that differ now: "
                          f"{', '.join(refused)}; resume with the checkpoint's values, or start a new run "
                          "(another output_dir=..., or --overwrite)")
    if changed:
        return (f"resuming {path} with changed settings, so the run does not continue the one saved: "
                f"{', '.join(changed)}")
    return None


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (torch's size-mismatch errors run to dozens)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# ---- resuming: what may differ between a checkpoint's config and the current one ----

# Changing these makes the saved weights or optimizer state mean something else (or not fit):
# the architecture, what is trained and its shapes, the LoRA scale, the optimizer's state layout.
RESUME_REFUSED = ("backend", "model", "finetune", "lora.r", "lora.alpha", "lora.target_modules", "lora.last_layers",
                  "optimizer")
# Changing these leaves what the run learns alone: where and how often it logs, evaluates and
# saves, how the work is batched or which engine samples (the same distribution).
RESUME_IGNORED = ("output_dir", "device", "tensorboard", "log_completions_every", "probe_every", "eval_every",
                  "eval_limit", "save_every", "keep_last", "micro_batch_tokens", "logprob_chunk", "rollout.batch_size",
                  "rollout.engine", "gradient_checkpointing", "deterministic", "warn_no_signal_steps",
                  "report_to", "report_table_every", "max_nonfinite_steps")
_OPAQUE = ("task_options",)  # compared as one value: its keys are the task's, absent means default


def resume_diff(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, changed) between a checkpoint's config and the current one, both as `to_dict()`
    gives them; each item reads "key old -> new". Refused: keys of RESUME_REFUSED, and the seed when
    the base weights are drawn from it (`random:<arch>` with adapters). Changed: every other
    difference outside RESUME_IGNORED (seed, task, G, prompts_per_step, max_steps, schedule, ...).
    A key one side lacks (a config written by another version of aha) is not compared."""
    old, new = _flatten(saved), _flatten(current)
    refused, changed = [], []
    for key in new:
        if key not in old or old[key] == new[key] or key in RESUME_IGNORED:
            continue
        item = f"{key} {_show(old[key])} -> {_show(new[key])}"
        seeded_base = (key == "seed" and str(new.get("model", "")).startswith("random:")
                       and new.get("finetune") != "full")
        if key in RESUME_REFUSED or seeded_base:
            refused.append(item + (" (the random base weights come from the seed)" if seeded_base else ""))
        else:
            changed.append(item)
    return refused, changed


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in _OPAQUE:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    """A value on one line: plain words as they are, anything else as JSON (quoted, escaped)."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(value, default=str, sort_keys=True)

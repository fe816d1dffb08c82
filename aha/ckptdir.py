"""Checkpoint directories, for both backends: the layout, the atomic write, which checkpoint a run
resumes from, and when a fresh run refuses to start. What goes *inside* a checkpoint is the
backend's own (aha/checkpoint.py for torch, aha/jax/checkpoint.py for JAX).

`RUN_DIR/checkpoints/step-N/` is written under a temporary name and renamed into place, and
`meta.json` is its last file: a directory without it is not a checkpoint. Only the last
`keep_last` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

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
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(run_dir: Path, tmp: Path, step: int, keep_last: int, **meta: Any) -> Path:
    """Write meta.json last, rename the directory into place, keep the last `keep_last`."""
    (tmp / META_FILE).write_text(json.dumps({"step": step, "complete": True, **meta}))
    final = Path(run_dir) / "checkpoints" / f"step-{step}"
    if final.exists():  # re-saving a step after a resume: replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
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


def check_config(path: Path, current: dict[str, Any]) -> str | None:
    """Compare the config a checkpoint was trained with (its config.yaml) with the current one
    (`Config.to_dict()`), before anything is loaded or written. A change the saved state cannot
    follow (model, fine-tuning mode, a parameter shape: `config.RESUME_REFUSED`) is a ConfigError
    naming each key with both values; other changes come back as one warning line (None if none).
    A config.yaml that cannot be read is a corrupt checkpoint."""
    import yaml

    from aha.config import resume_diff
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

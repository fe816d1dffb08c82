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
import time
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
        # tokenizers (Rust) raises a bare Exception for I/O errors: "No space left on device (os error 28)"
        rust_io = type(e) is Exception and "(os error " in str(e)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError" or type(e) is RuntimeError or rust_io:
            raise CheckpointError(write_failure(run_dir, step, e)) from e
        raise


LOW_SPACE = 64 * 2**20  # below this many free bytes after a failed write, the cause is a full disk


def write_failure(run_dir: Path, step: int, err: BaseException) -> str:
    """The one line for a checkpoint that could not be written: the path, the cause - "no space left" when
    the disk is full, whatever the library's wording (torch says "file write failed") - and the fix:
    --resume only when an earlier checkpoint exists to resume from."""
    root = Path(run_dir) / "checkpoints"
    cause = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).splitlines() or [""])[0]
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(root if root.exists() else run_dir).free
        if free < LOW_SPACE and "space" not in cause.lower():
            cause += f" (no space left on the device: {free / 2**20:.0f} MiB free)"
    earlier = [p for p in list_checkpoints(run_dir) if (step_of(p) or 0) < step and (p / META_FILE).is_file()]
    then = ("then continue from the last checkpoint with --resume" if earlier else
            "then start again: no checkpoint was saved yet, so there is nothing to --resume")
    return (f"could not write checkpoint step-{step} under {root}: {cause}; free disk space or make the output "
            f"directory writable, {then}")


def commit(run_dir: Path, tmp: Path, step: int, keep_last: int, **meta: Any) -> Path:
    """Write meta.json last, rename the directory into place, keep the last `keep_last`."""
    try:
        (tmp / META_FILE).write_text(json.dumps({"step": step, "complete": True, **meta}))
    except OSError as e:  # a full disk at the last, smallest file: the path, and nothing half-written left
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{tmp / META_FILE}: " + write_failure(run_dir, step, e)) from e
    # re-saving a step after a resume swaps the new one in, then deletes the old
    final = fsio.replace_dir(tmp, Path(run_dir) / "checkpoints" / f"step-{step}")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        fsio.remove_tree(old)
    return final


ABANDONED_PREFIX = "abandoned-"  # checkpoints/abandoned-TIME-from-step-K/: a timeline left by a resume


def set_aside_later(run_dir: Path, step: int) -> Path | None:
    """One timeline per run directory: resuming from step `step` while later checkpoints exist makes
    those another timeline (the logs are trimmed to `step` at the same moment). They are moved, not
    deleted, into checkpoints/abandoned-TIME-from-step-K/, where `--resume`, eval, export and play no
    longer see them. Returns that directory, or None when nothing was later. Call it holding the run
    lock, once every check has passed."""
    later = [p for p in list_checkpoints(run_dir) if (step_of(p) or 0) > step]
    if not later:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = Path(run_dir) / "checkpoints" / f"{ABANDONED_PREFIX}{stamp}-from-step-{step}"
    dest.mkdir(exist_ok=True)
    for p in later:
        os.replace(p, dest / p.name)
    fsio.fsync_dir(dest.parent)
    return dest


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


def read_meta(path: Path, flag: str = "--resume") -> dict[str, Any]:
    """meta.json of a checkpoint directory, checked: a JSON object with an integer `step` >= 0 (for
    --resume also matching the directory's step-N), `complete` true, a known `backend`. Anything else is a
    CheckpointError naming the file and an earlier checkpoint to use with `flag` (--resume for
    training, --checkpoint for eval/export/play)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; {earlier_hint(path, flag)}")
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {META_FILE}): it was not fully written; "
                              f"{earlier_hint(path, flag)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({one_line(e, 80)}): the checkpoint was not fully "
                              f"written or was damaged; {earlier_hint(path, flag)}") from None
    problem = meta_problem(meta, path)
    if not problem and flag == "--resume" and step_of(path) not in (None, meta["step"]):
        # the run would continue from the wrong step (eval, export and play do not care)
        problem = f"says step {meta['step']} but the directory is {path.name}"
    if problem:
        raise damaged(file, problem, path, flag)
    return meta


def meta_problem(meta: Any, path: Path) -> str | None:
    """What is wrong with a parsed meta.json (a phrase after its path), or None."""
    if not isinstance(meta, dict):
        return f"holds a {type(meta).__name__}, not a JSON object"
    step = meta.get("step")
    if type(step) is not int or step < 0:
        return f"has no step number ('step': {json.dumps(step)})"
    if meta.get("complete", True) is not True:
        return f"is not marked complete ('complete': {json.dumps(meta.get('complete'))})"
    if meta.get("backend", "torch") not in ("torch", "jax"):
        return f"names an unknown backend ({json.dumps(meta.get('backend'))}; torch or jax)"
    return None


def adapter_config_problem(path: Path) -> str | None:
    """What is wrong with the adapter_config.json in `path` ("missing", or a phrase after its path), or None."""
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file():
        return "missing"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"is not valid JSON ({one_line(e, 80)})"
    if not isinstance(data, dict) or not isinstance(data.get("r"), int):
        return "is not a LoRA adapter's config (no integer 'r')"
    return None


def weights_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file, from its header alone (a phrase after its path), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: unreadable either way
        return f"is unreadable ({type(e).__name__}: {one_line(e, 100)})"
    return None if keys else "holds no tensors"


def step_of(path: Path) -> int | None:
    """N of a step-N directory name, or None."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def damaged(file: Path, problem: str, checkpoint: Path, flag: str = "--resume") -> CheckpointError:
    """The one-line error for a checkpoint file that cannot be used: the file, what is wrong with it
    (a phrase after its path), and the fix (`earlier_hint`)."""
    return CheckpointError(f"{file} {problem}: the checkpoint is damaged; {earlier_hint(checkpoint, flag)}")


def earlier_hint(path: Path, flag: str = "--resume") -> str:
    """The fix for an unusable checkpoint: the latest earlier one of the same run with a valid
    meta.json (`FLAG PATH`), or how to go on without one."""
    path = Path(path)
    step = step_of(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if run is not None and step is not None:
        for other in reversed(list_checkpoints(run)):
            if (step_of(other) or 0) < step:
                try:
                    meta = json.loads((other / META_FILE).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, ValueError):
                    continue
                if meta_problem(meta, other) is None:
                    return f"use an earlier checkpoint: {flag} {other}"
    if flag == "--resume":
        return "no earlier checkpoint of this run is whole: pass another with --resume PATH, or start again with --overwrite"
    return f"no earlier checkpoint of this run is whole: pass another with {flag} PATH"


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
    step = read_meta(path)["step"]  # checked: an int
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
        raise CheckpointError(f"{path / 'config.yaml'} is corrupt ({one_line(e)}); "
                              f"{earlier_hint(path)}") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path / 'config.yaml'} is not a mapping of config keys: the checkpoint is damaged; "
                              f"{earlier_hint(path)}")
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

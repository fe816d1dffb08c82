"""What each subcommand does with its parsed arguments (aha/cli/parser.py defines them).

Heavy imports (torch, transformers) happen inside each command, so `aha --help` and
`aha countdown ...` start instantly.

    aha eval --checkpoint runs/x/checkpoints/step-100 --limit 50
    aha eval --model smollm2-135m --task gsm8k --data gsm8k/test.jsonl --limit 50 --json out.json
    aha eval --adapter DIR --task countdown --samples 8 --temperature 0.7     # pass@k, maj@k

With --checkpoint (or an adapter saved by aha, with config.yaml beside it) eval's and play's task,
its options, max_new_tokens and the engine default to the run's own config.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aha.errors import AhaError, ConfigError


def pick_preset() -> tuple[str, str]:
    """The preset that fits this machine, and why."""
    import torch

    if not torch.cuda.is_available():
        return "cpu-demo", "no CUDA device is visible"
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    name = torch.cuda.get_device_name(0)
    for preset, need in (("a100-h100", 40), ("rtx5090", 30), ("rtx4090", 22), ("gpu-16gb", 14)):
        if gib >= need:
            return preset, f"{name} has {gib:.0f} GiB (>= {need} GiB)"
    return "cpu-demo", f"{name} has only {gib:.0f} GiB, below the 14 GiB the smallest GPU preset needs"


def train(args: argparse.Namespace) -> int:
    from aha.config import load_config

    if args.resume is not None and args.overwrite:
        raise AhaError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    preset = args.config
    if preset is None:
        preset, why = pick_preset()
        print(f"aha: no -c given; using preset {preset!r} because {why}", file=sys.stderr)
    cfg = load_config(preset, args.overrides)
    args.run_dir = cfg.output_dir  # for the resume hint after an interruption (aha/cli/__init__.py)
    if cfg.backend == "jax":  # imported only when asked for: torch-only installs never import jax
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise AhaError("backend=jax shards over every device of the machine itself (jax.sharding); "
                           "run it as one process, without torchrun")
        if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
            raise AhaError("backend=jax needs jax and optax: pip install -e '.[jax]' (on a TPU VM: "
                           "pip install 'jax[tpu]' too; see docs/tpu.md)")
        from aha.jax.train import train as run
    else:
        from aha.train import train as run
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    before = _stat(metrics)
    run_dir = run(cfg, resume=args.resume, overwrite=args.overwrite)
    if args.resume is None or _stat(metrics) != before:  # a finished run resumed wrote nothing: its note said so
        print(f"aha: run written to {run_dir} (see `aha report {run_dir}`)", file=sys.stderr)
    return 0


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def countdown(args: argparse.Namespace) -> int:
    from aha.tasks.countdown import generate_puzzles, solve

    if args.countdown_cmd == "generate":
        puzzles = generate_puzzles(args.n, args.seed, min_nums=args.min_nums, max_nums=args.max_nums)
        lines = "".join(json.dumps(p) + "\n" for p in puzzles)
        if args.out:
            _write_atomic(Path(args.out), lines)
            print(f"aha: wrote {len(puzzles)} puzzles to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(lines)
        return 0
    solution = solve(args.nums, args.target)
    if solution is None:
        print(f"no solution: {args.nums} cannot make {args.target}")
        return 1
    print(f"{solution} = {args.target}")
    return 0


def report(args: argparse.Namespace) -> int:
    from aha.report import DEFAULT_THRESHOLDS, write_report

    if args.smooth < 0:
        raise ValueError("--smooth must be >= 0 (0 = automatic)")
    th = {k: getattr(args, f"{k}_threshold") for k in DEFAULT_THRESHOLDS}
    path = write_report(args.run_dir, args.out, args.smooth, th)
    print(f"aha: report written to {path}", file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    from aha.export import export as write_export

    write_export(args.source, args.out, adapter_only=args.adapter_only, dtype=args.dtype, model=args.model,
                 overwrite=args.overwrite)
    return 0


# ---------------------------------------------------------------------------- eval and play

def play(args: argparse.Namespace) -> int:
    from aha.play import Session, Settings
    from aha.trained import load_trained

    if args.min_think < 0 or args.max_think < 0 or args.max_new_tokens < 1:
        raise ConfigError("--min-think and --max-think must be >= 0, --max-new-tokens >= 1")
    if args.max_think and args.min_think > args.max_think:
        raise ConfigError(f"--min-think {args.min_think} exceeds --max-think {args.max_think}")
    if not (args.checkpoint or args.adapter or args.model):
        raise ConfigError("nothing to play with: pass --checkpoint DIR, --adapter DIR or --model NAME")
    task = None if args.raw else _task(args, _run_config(args), default_task="gsm8k")[0]
    policy = load_trained(args.checkpoint, args.adapter, args.model, args.device, args.dtype)
    session = Session(policy.model, policy.tokenizer, task, Settings(
        args.temperature, args.top_p, args.max_new_tokens, args.min_think, args.max_think, args.seed))
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        what = f"task {task.name}" if task is not None else "no template"
        print(f"aha play: {args.checkpoint or args.adapter or args.model}, {what}. /help for commands, "
              "Ctrl-D to leave.", file=sys.stderr)
    return session.loop(interactive, args.jsonl)


def eval(args: argparse.Namespace) -> int:  # noqa: A001  (the subcommand's name)
    from aha.eval import evaluate
    from aha.trained import load_trained

    if not (args.checkpoint or args.adapter or args.model):
        raise ConfigError("nothing to evaluate: pass --checkpoint DIR, --adapter DIR or --model NAME")
    if args.checkpoint and args.adapter:
        raise ConfigError("pass either --checkpoint or --adapter, not both")
    if args.samples < 1 or (args.limit is not None and args.limit < 1) or args.batch_size < 1:
        raise ConfigError("--samples, --limit and --batch-size must be >= 1")
    cfg = _run_config(args)
    task, name, options = _task(args, cfg, default_task=None)
    from aha.tasks.named_failures import NamedFailures

    task = NamedFailures(task)  # a judge that raises: one line naming it, the example and the completion
    from aha.preflight import overlap_warning, require_examples, split_overlap

    require_examples(task.examples(args.split), name, args.split, options)  # before loading any model
    # a "held-out" split holding prompts the model was trained on: said, and recorded in the JSON
    train = _trained_on(args, cfg, name, task)
    overlap = split_overlap(task, args.split, train=train)
    if overlap:
        print(overlap_warning(task, name, args.split, train=train), file=sys.stderr)
    rollout = cfg.get("rollout") or {}
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 1.0)
    max_new_tokens = args.max_new_tokens or int(rollout.get("max_new_tokens", 256))
    engine = args.engine or str(rollout.get("engine", "hf"))

    t0 = time.perf_counter()
    policy = load_trained(args.checkpoint, args.adapter, args.model, args.device, args.dtype)
    from aha.preflight import check_context
    from aha.rollout import render_prompt

    examples = task.examples(args.split)[:args.limit]  # past the model's context: one line, not an IndexError
    check_context(policy.tokenizer, policy.model.config, examples, max_new_tokens, render_prompt, args.split,
                  budget="--max-new-tokens ")
    t_load = time.perf_counter()
    result = evaluate(policy.model, policy.tokenizer, task, split=args.split, limit=args.limit,
                      batch_size=args.batch_size, max_new_tokens=max_new_tokens, engine=engine,
                      temperature=temperature, samples=args.samples, top_p=args.top_p, top_k=args.top_k,
                      seed=args.seed, save_completions=args.save_completions, progress=True)
    rows = result.pop("rows", None)
    record = {
        # JSON has no NaN (accuracy_with_steps when no completion wrote steps): null, as metrics.jsonl
        **{k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()},
        "model": args.model or cfg.get("model"), "checkpoint": args.checkpoint, "adapter": args.adapter,
        "task": name, "task_options": options, "split": args.split,
        "limit": args.limit, "samples": args.samples, "temperature": temperature, "top_p": args.top_p,
        "top_k": args.top_k, "seed": args.seed, "max_new_tokens": max_new_tokens, "engine": engine,
        "device": str(policy.device), "dtype": str(policy.dtype).removeprefix("torch."),
        "load_time": round(t_load - t0, 2), "eval_time": round(time.perf_counter() - t_load, 2),
    }
    if overlap:
        record["train_overlap"] = overlap[0]  # test examples whose prompt is also a train prompt
    if rows is not None:
        record["rows"] = rows
    out = _eval_json_path(args, name, getattr(policy, "checkpoint", None))
    print(format_table(record, _source_label(args)), file=sys.stderr if out == "-" else sys.stdout)
    text = json.dumps(record, indent=2, default=str) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        _write_atomic(Path(out), text)
        print(f"aha: results written to {out}", file=sys.stderr)
    return 0


def format_table(record: dict[str, Any], label: str) -> str:
    """eval's metrics as an aligned plain-text table, with a one-line header saying what was run."""
    sampling = ("greedy" if record["temperature"] == 0
                else f"{record['samples']} sample(s) at temperature {record['temperature']:g}")
    head = (f"aha eval: {label} on {record['task']}/{record['split']}, {record['n']} examples, {sampling}, "
            f"max_new_tokens {record['max_new_tokens']}, {record['eval_time']:.1f} s")
    keys = ["accuracy", "accuracy_lenient"] + [k for k in record if k.startswith(("pass@", "maj@"))]
    keys += ["format_rate", "completion_len", "reflection_rate", "truncated_rate"]
    keys += [k for k in ("steps_share", "steps_mean", "accuracy_with_steps", "accuracy_without_steps") if k in record]
    width = max(len(k) for k in keys)
    lines = [head, f"  {'metric'.ljust(width)}  value", f"  {'-' * width}  -------"]
    for k in keys:
        v = record[k]
        if v is None:  # accuracy_with_steps when no completion wrote steps
            lines.append(f"  {k.ljust(width)}  -")
        else:
            lines.append(f"  {k.ljust(width)}  {v:.1f}" if k == "completion_len" else f"  {k.ljust(width)}  {v:.4f}")
    return "\n".join(lines)


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config.yaml of the checkpoint or adapter being loaded ({} for a plain model)."""
    from aha.trained import read_run_config, resolve_adapter, resolve_checkpoint

    if args.checkpoint:
        return read_run_config(resolve_checkpoint(args.checkpoint))
    if args.adapter:
        return read_run_config(resolve_adapter(args.adapter))
    return {}


def _task(args: argparse.Namespace, cfg: dict[str, Any], default_task: str | None) -> tuple[Any, str, dict[str, Any]]:
    """(task, its name, its options): the command line over the run's config; the run's options of
    another task are dropped."""
    import yaml

    from aha.tasks import get_task

    name = args.task or cfg.get("task") or default_task
    if not name:
        raise ConfigError("which task? pass --task gsm8k or --task countdown (or --checkpoint, which knows its task)")
    options = dict(cfg.get("task_options") or {}) if name == cfg.get("task") else {}
    if args.data:
        options["data"] = args.data
    for item in args.task_option:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--task-option {item!r} is not key=value (e.g. --task-option template=chat)")
        options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    try:
        return get_task(name, **options), name, options
    except TypeError as e:  # an option the task's constructor does not take
        raise ConfigError(f"task {name!r} does not accept these options {sorted(options)}: {e}") from e


def _trained_on(args: argparse.Namespace, cfg: dict[str, Any], name: str, task: Any) -> list[Any]:
    """The train examples to compare the eval split with: the run's own (its config's task options, so
    a run trained on the file now evaluated is caught), else the task's train split unless --data
    names the file to score (one path serves every split: its "train" would be itself). [] = none."""
    from aha.tasks import get_task

    try:
        if cfg.get("task") == name:
            return list(get_task(name, **dict(cfg.get("task_options") or {})).examples("train"))
        return [] if args.data else list(task.examples("train"))
    except Exception:  # noqa: BLE001 - the run's data moved, no train split: nothing to compare
        return []


def _source_label(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return f"checkpoint {args.checkpoint}" + (f" (base {args.model})" if args.model else "")
    if args.adapter:
        return f"adapter {args.adapter}" + (f" (base {args.model})" if args.model else "")
    return f"model {args.model}"


def _eval_json_path(args: argparse.Namespace, task: str, checkpoint: Path | None = None) -> str:
    """--json, else eval-TASK-SPLIT.json beside what was evaluated: `checkpoint` (the one loaded, which a
    run dir resolved to) unless a trainer has rotated it away meanwhile - then the current directory."""
    if args.json:
        return args.json
    name = f"eval-{_file_word(task)}-{_file_word(args.split)}.json"
    if checkpoint is not None:
        if checkpoint.is_dir():
            return str(checkpoint / name)
        print(f"aha: note: {checkpoint} was removed while it was evaluated (keep_last); results go to the "
              "current directory", file=sys.stderr)
        return name.replace(".json", f"-{checkpoint.name}.json")
    if args.adapter:
        return str(Path(args.adapter) / name)
    return name


def _file_word(text: str) -> str:
    """`text` as one file-name word: a task given as /abs/path/my_task.py:MyTask becomes my_task.MyTask
    (not folders named after the path, and no colon, which some file systems refuse)."""
    import re

    file, sep, cls = text.rpartition(":")
    if sep and file.endswith(".py"):
        text = f"{Path(file).stem}.{cls}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "task"


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename (aha/fsio.py): never leave a half-written file."""
    from aha.fsio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)

"""`aha eval`: held-out accuracy of a model, a checkpoint or an adapter; writes JSON, prints a table.

    aha eval --checkpoint runs/x/checkpoints/step-100 --limit 50
    aha eval --model smollm2-135m --task gsm8k --data gsm8k/test.jsonl --limit 50 --json out.json
    aha eval --adapter DIR --task countdown --samples 8 --temperature 0.7     # pass@k, maj@k

With --checkpoint (or an adapter saved by aha, with config.yaml beside it) the task, its options,
max_new_tokens and the engine default to the run's own config. The model-source and task options
are shared with `aha play` (`add_model_arguments`, `add_task_arguments`, `build_task`).
Top-level imports stay light: `aha --help` must not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from aha.errors import ConfigError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to load (one of --checkpoint, --adapter, --model; --model may also "
                               "replace the base of a checkpoint or adapter)")
    src.add_argument("--checkpoint", metavar="DIR", help="a checkpoint dir (runs/NAME/checkpoints/step-N) "
                                                         "or a run dir (its latest checkpoint)")
    src.add_argument("--adapter", metavar="DIR", help="a LoRA adapter dir (adapter_config.json + weights)")
    src.add_argument("--model", metavar="M", help="hub id, local dir, .gguf, smollm2-135m or random:<arch>")
    src.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    src.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (default: auto)")


def add_task_arguments(p: argparse.ArgumentParser, default_task: str | None) -> None:
    t = p.add_argument_group("task (defaults to the checkpoint's own task and options)")
    t.add_argument("--task", default=None, help="gsm8k | countdown" + (f" (default: {default_task})"
                                                                        if default_task else ""))
    t.add_argument("--data", metavar="PATH", help="local data file for the task (sets the task option data=PATH)")
    t.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option, repeatable, e.g. template=chat or n_test=200 (values read as YAML)")


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config.yaml of the checkpoint or adapter being loaded ({} for a plain model)."""
    from aha.inference import read_run_config, resolve_adapter, resolve_checkpoint

    if args.checkpoint:
        return read_run_config(resolve_checkpoint(args.checkpoint))
    if args.adapter:
        return read_run_config(resolve_adapter(args.adapter))
    return {}


def task_spec(args: argparse.Namespace, cfg: dict[str, Any], default_task: str | None) -> tuple[str, dict[str, Any]]:
    """(task name, options): the command line over the run's config; options of another task are dropped."""
    import yaml

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
    return name, options


def build_task(name: str, options: dict[str, Any]) -> Any:
    from aha.tasks import get_task

    try:
        return get_task(name, **options)
    except TypeError as e:  # an option the task's constructor does not take
        raise ConfigError(f"task {name!r} does not accept these options {sorted(options)}: {e}") from e


def source_label(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return f"checkpoint {args.checkpoint}" + (f" (base {args.model})" if args.model else "")
    if args.adapter:
        return f"adapter {args.adapter}" + (f" (base {args.model})" if args.model else "")
    return f"model {args.model}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("pass@1 is greedy at temperature 0. With --samples K --temperature T: K completions per "
                "problem,\npass@k (unbiased, Chen et al. 2021) and maj@K (majority vote over the <answer> text).")
    add_model_arguments(p)
    add_task_arguments(p, default_task=None)
    p.add_argument("--split", default="test", help="task split to score (default: test)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N examples")
    p.add_argument("--samples", type=int, default=1, metavar="K", help="completions per problem (default: 1)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="0 = greedy (default with --samples 1; 1.0 with --samples K > 1)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="completion budget (default: the checkpoint's rollout.max_new_tokens, else 256)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="sequences generated at once (default: 16)")
    p.add_argument("--engine", default=None, help="rollout engine: hf | native | vllm "
                                                  "(default: the checkpoint's, else hf)")
    p.add_argument("--json", metavar="OUT", default=None,
                   help="where to write the results (default: eval-TASK-SPLIT.json in the checkpoint/adapter "
                        "dir, or in the current dir for --model; '-' = stdout, the table then goes to stderr)")
    p.add_argument("--save-completions", action="store_true", help="add every completion to the JSON (rows)")


def run(args: argparse.Namespace) -> int:
    from aha.eval import evaluate
    from aha.inference import load_trained

    if not (args.checkpoint or args.adapter or args.model):
        raise ConfigError("nothing to evaluate: pass --checkpoint DIR, --adapter DIR or --model NAME")
    if args.checkpoint and args.adapter:
        raise ConfigError("pass either --checkpoint or --adapter, not both")
    if args.samples < 1 or (args.limit is not None and args.limit < 1) or args.batch_size < 1:
        raise ConfigError("--samples, --limit and --batch-size must be >= 1")
    cfg = run_config(args)
    name, options = task_spec(args, cfg, default_task=None)
    task = build_task(name, options)
    from aha.guards import require_examples

    require_examples(task.examples(args.split), name, args.split, options)  # before loading any model
    rollout = cfg.get("rollout") or {}
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 1.0)
    max_new_tokens = args.max_new_tokens or int(rollout.get("max_new_tokens", 256))
    engine = args.engine or str(rollout.get("engine", "hf"))

    t0 = time.perf_counter()
    policy = load_trained(args.checkpoint, args.adapter, args.model, args.device, args.dtype)
    t_load = time.perf_counter()
    result = evaluate(policy.model, policy.tokenizer, task, split=args.split, limit=args.limit,
                      batch_size=args.batch_size, max_new_tokens=max_new_tokens, engine=engine,
                      temperature=temperature, samples=args.samples, top_p=args.top_p, top_k=args.top_k,
                      seed=args.seed, save_completions=args.save_completions, progress=True)
    rows = result.pop("rows", None)
    record = {
        **result,
        "model": args.model or cfg.get("model"), "checkpoint": args.checkpoint, "adapter": args.adapter,
        "task": name, "task_options": options, "split": args.split,
        "limit": args.limit, "samples": args.samples, "temperature": temperature, "top_p": args.top_p,
        "top_k": args.top_k, "seed": args.seed, "max_new_tokens": max_new_tokens, "engine": engine,
        "device": str(policy.device), "dtype": str(policy.dtype).removeprefix("torch."),
        "load_time": round(t_load - t0, 2), "eval_time": round(time.perf_counter() - t_load, 2),
    }
    if rows is not None:
        record["rows"] = rows
    out = _json_path(args, name)
    table_stream = sys.stderr if out == "-" else sys.stdout
    print(format_table(record, source_label(args)), file=table_stream)
    text = json.dumps(record, indent=2, default=str) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        from aha.fsio import atomic_write_text

        atomic_write_text(path, text)  # never leave a half-written result
        print(f"aha: results written to {path}", file=sys.stderr)
    return 0


def _json_path(args: argparse.Namespace, task: str) -> str:
    if args.json:
        return args.json
    name = f"eval-{task}-{args.split}.json"
    if args.checkpoint:
        from aha.inference import resolve_checkpoint

        return str(resolve_checkpoint(args.checkpoint) / name)
    if args.adapter:
        return str(Path(args.adapter) / name)
    return name


def format_table(record: dict[str, Any], label: str) -> str:
    """The metrics as an aligned plain-text table, with a one-line header saying what was run."""
    sampling = ("greedy" if record["temperature"] == 0
                else f"{record['samples']} sample(s) at temperature {record['temperature']:g}")
    head = (f"aha eval: {label} on {record['task']}/{record['split']}, {record['n']} examples, {sampling}, "
            f"max_new_tokens {record['max_new_tokens']}, {record['eval_time']:.1f} s")
    keys = ["accuracy"] + [k for k in record if k.startswith(("pass@", "maj@"))]
    keys += ["format_rate", "completion_len", "reflection_rate", "truncated_rate"]
    width = max(len(k) for k in keys)
    lines = [head, f"  {'metric'.ljust(width)}  value", f"  {'-' * width}  -------"]
    for k in keys:
        v = record[k]
        lines.append(f"  {k.ljust(width)}  {v:.1f}" if k == "completion_len" else f"  {k.ljust(width)}  {v:.4f}")
    return "\n".join(lines)

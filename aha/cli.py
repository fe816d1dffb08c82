"""The `aha` command: train | eval | play | report | countdown.

Heavy imports (torch, transformers) happen inside each command, so `aha --help` and
`aha countdown ...` start instantly. Expected failures (bad config, missing model or data,
corrupt checkpoint) print one clear line and exit 2; AHA_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from aha.errors import AhaError

# Subcommands whose arguments and behaviour live in their own module: add_arguments(p), run(args).
MODULE_COMMANDS = {
    "eval": ("aha.eval_cli", "accuracy of a model, checkpoint or adapter on a task's held-out split"),
    "play": ("aha.play", "chat with a checkpoint, adapter or model (also works with piped stdin)"),
    "report": ("aha.report", "plots and sample completions from a run directory"),
}


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


def cmd_train(args: argparse.Namespace) -> int:
    from aha.config import load_config

    if args.resume is not None and args.overwrite:
        raise AhaError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    preset = args.config
    if preset is None:
        preset, why = pick_preset()
        print(f"aha: no -c given; using preset {preset!r} because {why}", file=sys.stderr)
    cfg = load_config(preset, args.overrides)
    args.run_dir = cfg.output_dir  # for the resume hint after an interruption
    if cfg.backend == "jax":  # imported only when asked for: torch-only installs never import jax
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise AhaError("backend=jax shards over every device of the machine itself (jax.sharding); "
                           "run it as one process, without torchrun")
        if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
            raise AhaError("backend=jax needs jax and optax: pip install -e '.[jax]' (on a TPU VM: "
                           "pip install 'jax[tpu]' too; see docs/tpu.md)")
        from aha.jax.train import train
    else:
        from aha.train import train
    resume = None if args.resume is None else args.resume
    run_dir = train(cfg, resume=resume, overwrite=args.overwrite)
    print(f"aha: run written to {run_dir} (see `aha report {run_dir}`)", file=sys.stderr)
    return 0


def cmd_countdown(args: argparse.Namespace) -> int:
    from aha.tasks.countdown import generate_puzzles, solve

    if args.countdown_cmd == "generate":
        puzzles = generate_puzzles(args.n, args.seed, min_nums=args.min_nums, max_nums=args.max_nums)
        lines = "".join(json.dumps(p) + "\n" for p in puzzles)
        if args.out:
            from aha.fsio import atomic_write_text

            atomic_write_text(args.out, lines)  # never leave a half-written file
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aha", description="GRPO from a base model to a step-by-step reasoner.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run GRPO training",
                       description="Train with GRPO. Any config key can be set as key=value "
                                   "(nested: rollout.temperature=0.9).")
    p.add_argument("-c", "--config", help="preset name (configs/NAME.yaml) or YAML path; "
                                          "default: the preset that fits this machine")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of output_dir, or from CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    p.set_defaults(func=cmd_train)

    for name, (module, help_text) in MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)

    p = sub.add_parser("countdown", help="generate or solve Countdown puzzles")
    csub = p.add_subparsers(dest="countdown_cmd", required=True)
    g = csub.add_parser("generate", help="write seeded, solvable puzzles as JSONL (nums, target, solution)")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--min-nums", type=int, default=3)
    g.add_argument("--max-nums", type=int, default=4)
    g.add_argument("--out", help="output file (default: stdout)")
    s = csub.add_parser("solve", help="find an expression using each number once that equals the target")
    s.add_argument("nums", type=int, nargs="+")
    s.add_argument("--target", type=int, required=True)
    p.set_defaults(func=cmd_countdown)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Deprecation chatter from transformers/peft internals is not actionable for a user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    # key=value overrides may come after options too (`--overwrite lr=1e-5`), which argparse's
    # positional `nargs="*"` alone does not allow; collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        if args.resume and "=" in args.resume and not os.path.exists(args.resume):
            args.overrides.append(args.resume)  # `--resume max_steps=9`: an override, not a path
            args.resume = "latest"
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from aha.fsio import os_error_line
    from aha.rundir import Stopped

    try:
        return int(args.func(args) or 0)
    except (AhaError, FileNotFoundError, ValueError, OSError) as e:
        if os.environ.get("AHA_DEBUG"):
            raise
        # OSError: a full or read-only disk, a file where a directory should be: the path and the fix
        message = os_error_line(e) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else str(e)
        print("aha: error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()),
              file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / Ctrl-C during training: the step finished and was saved
        print(f"aha: {e}{resume_hint(args)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"aha: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130


def resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted `aha train`: the same command with --resume."""
    run_dir = getattr(args, "run_dir", None)
    if args.command != "train" or run_dir is None:
        return ""
    if not list(Path(run_dir).glob("checkpoints/step-*/meta.json")):
        return f"; no checkpoint was saved in {run_dir} yet"
    words = ["aha", "train", *(["-c", args.config] if args.config else []), *args.overrides, "--resume"]
    return f"; continue from the last checkpoint with: {shlex.join(words)}"


if __name__ == "__main__":
    sys.exit(main())

"""Every subcommand's arguments, in one place: `aha train | eval | play | report | export | countdown`.

Top-level imports stay light: `aha --help` must not import torch.
"""

from __future__ import annotations

import argparse

from aha.engines import ENGINES
from aha.play import HELP as PLAY_HELP  # the session's /commands
from aha.report import DEFAULT_THRESHOLDS

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aha", description="GRPO from a base model to a step-by-step reasoner.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_eval(sub)
    add_play(sub)
    add_report(sub)
    add_export(sub)
    add_countdown(sub)
    return parser


def _command(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run GRPO training",
                       description="Train with GRPO. Any config key can be set as key=value "
                                   "(nested: rollout.temperature=0.9).")
    p.add_argument("-c", "--config", help="preset name (configs/NAME.yaml) or YAML path; "
                                          "default: the preset that fits this machine")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of output_dir, or from CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """What to load, for eval and play (aha.trained.load_trained)."""
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


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "eval", "accuracy of a model, checkpoint or adapter on a task's held-out split")
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
    p.add_argument("--engine", default=None, choices=list(ENGINES),
                   help=f"rollout engine: {' | '.join(ENGINES)} (default: the checkpoint's, else hf)")
    p.add_argument("--json", metavar="OUT", default=None,
                   help="where to write the results (default: eval-TASK-SPLIT.json in the checkpoint/adapter "
                        "dir, or in the current dir for --model; '-' = stdout, the table then goes to stderr)")
    p.add_argument("--save-completions", action="store_true", help="add every completion to the JSON (rows)")


def add_play(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "play", "chat with a checkpoint, adapter or model (also works with piped stdin)")
    p.epilog = ("input: gsm8k takes the question as is; countdown takes '3 7 25 50 -> 75' (other text is sent "
                "raw);\n--raw sends every line without a template.\n\n" + PLAY_HELP)
    add_model_arguments(p)
    add_task_arguments(p, default_task="gsm8k")
    p.add_argument("--raw", action="store_true", help="no task template: send the text as typed")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512, metavar="N")
    p.add_argument("--min-think", type=int, default=0, metavar="N",
                   help="budget forcing: replace an early </think> with 'Wait' until N thinking tokens")
    p.add_argument("--max-think", type=int, default=0, metavar="N", help="budget forcing: force </think> at N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jsonl", action="store_true",
                   help="print one JSON object per answer (question, completion, answer) instead of the text")


def add_report(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "report", "plots and sample completions from a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output_dir (holds metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", help="where to write report.md and the PNGs (default: RUN_DIR/report)")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="moving-average window in steps (default: about 1/20 of the run, 1 to 25)")
    for key, default in DEFAULT_THRESHOLDS.items():
        flag = key.removesuffix("_rate").replace("_", "-")
        p.add_argument(f"--{flag}-threshold", type=float, default=default, dest=f"{key}_threshold", metavar="X",
                       help=f"the aha step of {key}: first step its smoothed value reaches this (default: {default})")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "export", "a run or checkpoint as a plain transformers model dir (LoRA merged) or a PEFT adapter")
    p.epilog = ("The merged model loads with AutoModelForCausalLM.from_pretrained(DIR); the adapter with\n"
                "peft's PeftModel.from_pretrained(base, DIR). QLoRA merges into the de-quantised base.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="a run dir (its latest checkpoint), a checkpoint dir, or a LoRA adapter dir")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be new or empty)")
    p.add_argument("--adapter-only", action="store_true", help="write a clean PEFT adapter, not a merged model")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' dtype (default: the base model's own; a full fine-tune's: the checkpoint's)")
    p.add_argument("--model", metavar="M", help="load this base instead of the recorded one (e.g. a local copy)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds files")


def add_countdown(sub: argparse._SubParsersAction) -> None:
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

"""One full GRPO step of aha - rollout, scoring, update - timed and split, with its peak memory, against
the same step through TRL's `GRPOTrainer` measured in the same run (bench/trl_baseline.py says how it is
configured to match).

    python bench/step.py -c cpu-demo rollout.engine=native --vs-trl --steps 3 --rounds 2 --threads 1 \
        --json bench/results/step-cpu.json
    python bench/step.py -c cpu-demo rollout.engine=native prompts_per_step=1 rollout.num_generations=4 \
        --scaling 128,256,512,1024 --steps 1 --threads 1 --json bench/results/step-cpu-scaling.json
    python bench/step.py -c rtx5090 model=random:qwen2.5-3b task=arith --vs-trl \
        --json bench/results/step-gpu.json        # CUDA: bf16, gradient checkpointing as the preset says

aha's step is the function the training loop calls, `aha.train.grpo_step`, on the learner (model,
optimizer, scheduler) `aha.train.build_learner` builds for `aha train` from the same config. Timed:
`--warmup` steps first (not counted), then the mean over `--steps` steps (of every `--rounds` round) of
the time from drawing the prompts to the end of the step (optimizer and scheduler step included), split
at `grpo_step`'s own phase marks into gen (draw prompts + tokenize + sample + decode), score (rewards and
the accuracy / format checks) and update (advantages + log-probs + loss + backward + clip + optimizer
step); CUDA is synchronized at each boundary. Both wall time and the process's CPU time are reported: with --threads 1
the CPU time is the step's own work, steadier than wall time on a machine shared with other jobs.
By default every completion is exactly max_new_tokens long on both sides (EOS ignored, as docs/design.md
"Timings" asks), so both do the same work whatever the sampled text; --natural-length lets EOS end them.
Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed steps (weights included); on CPU
the process's peak RSS (`ru_maxrss`: a high-water mark of the whole process, model loading and imports
included), which is why each side runs in its own subprocess (this file again, with --side).

`ratio_vs_trl` is TRL's mean step time over aha's: above 1 means aha is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from aha.config import Config, load_config
from aha.data import fresh_state, next_indices
from aha.model import resolve_device
from aha.sampling import SamplingParams
from aha.seeding import seed_rngs
from aha.tasks import get_task
from aha.train import build_learner, grpo_step

PHASES = ("gen", "score", "update")
TIMED = ("steps", *PHASES)


def clock() -> tuple[float, float]:
    """(wall time, CPU time of this process). With one thread, CPU time is the step's own work: unlike wall
    time it does not grow while other processes hold the cores, so it is the steadier figure on a busy machine."""
    return time.perf_counter(), time.process_time()


def run_aha(cfg: Config, steps: int, warmup: int, fixed_length: bool) -> dict[str, Any]:
    """warmup + steps GRPO steps: `aha.train.grpo_step` on the learner `aha.train.build_learner` builds,
    as `aha train` runs them (no logging, eval or checkpoints)."""
    seed_rngs(cfg.seed)
    task = get_task(cfg.task, **cfg.task_options)
    train_set = task.examples("train")
    learner = build_learner(cfg, cfg.device)
    device = next(learner.model.parameters()).device
    r = cfg.rollout
    sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, ignore_eos=fixed_length)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def synced_clock() -> tuple[float, float]:
        sync()  # CUDA work queued in a phase is counted in that phase
        return clock()

    state = fresh_state()
    out: dict[str, list[float]] = {k: [] for k in ("tokens", "sync", *TIMED, *(f"cpu_{k}" for k in TIMED))}
    learner.model.train()
    for i in range(warmup + steps):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = synced_clock()
        examples = [train_set[j] for j in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        res = grpo_step(learner, task, examples, cfg, sampling, clock=synced_clock)
        _, t1, t2, t3 = res.marks
        if i >= warmup:
            for key, (start, end) in zip(TIMED, ((t0, t3), (t0, t1), (t1, t2), (t2, t3))):
                out[key].append(end[0] - start[0])
                out[f"cpu_{key}"].append(end[1] - start[1])
            out["tokens"].append(float(sum(rec.length for rec in res.records)))
            # The engine's weight sync after the update (inside "update"; vLLM: adapter or full weights).
            out["sync"].append(getattr(learner.engine, "last_sync_s", 0.0))
        print(f"aha step {i + 1}/{warmup + steps}{' (warmup)' if i < warmup else ''}: {t3[0] - t0[0]:.2f}s",
              file=sys.stderr, flush=True)
    learner.engine.close()
    return out


def side_main(side: str, cfg: Config, args: argparse.Namespace) -> None:
    """In a subprocess: run one side and write its figures (times, tokens, peak memory) to args.out."""
    fixed_length = not args.natural_length
    if side == "aha":
        result = run_aha(cfg, args.steps, args.warmup, fixed_length)
    else:
        # bench/ is on sys.path: this file runs as a script.
        from trl_baseline import run_trl

        result = run_trl(cfg, args.steps, args.warmup, fixed_length, args.trl_rows_per_forward)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
        result["peak_mem_kind"] = "cuda max_memory_allocated over the timed steps"
    else:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        result["peak_mem_bytes"] = kib if sys.platform == "darwin" else kib * 1024
        result["peak_mem_kind"] = "cpu peak RSS of the process (ru_maxrss)"
    Path(args.out).write_text(json.dumps(result))


def run_side(side: str, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """One side in a fresh subprocess (so that its peak memory is its own); its raw figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{side}.json"
        cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--trl-rows-per-forward", str(args.trl_rows_per_forward),
               "--out", str(out),
               *(["--natural-length"] if args.natural_length else [])]
        cmd += (["-c", args.config] if args.config else []) + overrides
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean per phase over every timed step of every round; the highest peak memory of the rounds."""
    pooled = {k: [x for run in runs for x in run[k]] for k in runs[0] if isinstance(runs[0][k], list)}
    out = {"step_time": mean(pooled["steps"]), "step_time_min": min(pooled["steps"]),
           **{f"{p}_time": mean(pooled[p]) for p in PHASES}, "tokens_per_step": mean(pooled["tokens"]),
           "step_cpu_time": mean(pooled["cpu_steps"]), **{f"{p}_cpu_time": mean(pooled[f"cpu_{p}"]) for p in PHASES},
           "peak_mem_bytes": max(run["peak_mem_bytes"] for run in runs), "peak_mem_kind": runs[0]["peak_mem_kind"],
           "step_times": pooled["steps"]}
    if pooled.get("sync"):
        out["sync_time"] = mean(pooled["sync"])
    if "version" in runs[0]:
        out["version"] = runs[0]["version"]
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def compare(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """aha (and with --vs-trl, TRL) on one configuration, --rounds times; with TRL the sides alternate
    (aha, trl, trl, aha, ...) so that a burst of load from other processes does not land on one side only."""
    sides = ["aha", "trl"] if args.vs_trl else ["aha"]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for i in range(args.rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            runs[side].append(run_side(side, args, overrides))
    row: dict[str, Any] = {side: summarize(runs[side]) for side in sides}
    if args.vs_trl:
        aha, trl = row["aha"], row["trl"]
        row["ratio_vs_trl"] = trl["step_time"] / aha["step_time"]
        row["ratio_vs_trl_min"] = trl["step_time_min"] / aha["step_time_min"]
        row["ratio_vs_trl_cpu"] = trl["step_cpu_time"] / aha["step_cpu_time"]
        row["ratio_by_phase"] = {p: trl[f"{p}_time"] / max(aha[f"{p}_time"], 1e-9) for p in PHASES}
        row["peak_mem_ratio_vs_trl"] = trl["peak_mem_bytes"] / aha["peak_mem_bytes"]
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_row(label: str, row: dict[str, Any]) -> None:
    for side in ("aha", "trl"):
        if side in row:
            s = row[side]
            print(f"{label}{side:4s} step {s['step_time']:7.2f}s (min {s['step_time_min']:.2f}) = gen "
                  f"{s['gen_time']:6.2f} + score {s['score_time']:5.3f} + update {s['update_time']:6.2f}   "
                  f"peak {gib(s['peak_mem_bytes'])}   {s['tokens_per_step']:.0f} completion tokens/step   "
                  f"CPU time {s['step_cpu_time']:.2f}s = {s['gen_cpu_time']:.2f} + {s['score_cpu_time']:.3f} + "
                  f"{s['update_cpu_time']:.2f}" + (f"   weight sync {s['sync_time']:.2f}s (in update)"
                                                   if s.get("sync_time") else ""))
    if "ratio_vs_trl" in row:
        by = ", ".join(f"{p} {v:.2f}x" for p, v in row["ratio_by_phase"].items())
        print(f"{label}aha vs TRL: {row['ratio_vs_trl']:.2f}x faster per step (TRL time / aha time; fastest steps "
              f"{row['ratio_vs_trl_min']:.2f}x, CPU time {row['ratio_vs_trl_cpu']:.2f}x; {by}); "
              f"TRL's peak memory {row['peak_mem_ratio_vs_trl']:.2f}x aha's")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", help="preset name or YAML path (as for `aha train -c`)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--vs-trl", action="store_true", help="also run the step through TRL's GRPOTrainer")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (their mean is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per side, alternating with TRL's")
    ap.add_argument("--natural-length", action="store_true", help="let EOS end completions (default: fixed length)")
    ap.add_argument("--scaling", default="", help="comma-separated completion lengths, e.g. 128,256,512,1024")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads on both sides (0: torch's default); on a busy machine 1 avoids "
                         "OpenMP threads waiting on each other for cores other processes hold")
    ap.add_argument("--trl-rows-per-forward", type=int, default=0,
                    help="TRL's per_device_train_batch_size, with gradient accumulation making up the step "
                         "(0: the whole step's batch in one forward/backward)")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--side", choices=("aha", "trl"), help=argparse.SUPPRESS)  # internal: one side, in a subprocess
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)  # validates the overrides before anything runs
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:
        side_main(args.side, cfg, args)
        return {}

    import transformers

    device = resolve_device(cfg.device)
    r = cfg.rollout
    result: dict[str, Any] = {
        "command": "python bench/step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": args.config, "overrides": args.overrides, "model": cfg.model, "device": device.type,
        "device_name": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "finetune": cfg.finetune, "engine": r.engine,
        "prompts_per_step": cfg.prompts_per_step, "num_generations": r.num_generations,
        "max_new_tokens": r.max_new_tokens, "fixed_length": not args.natural_length, "loss_agg": cfg.algo.loss_agg,
        "gradient_checkpointing": cfg.gradient_checkpointing, "micro_batch_tokens": cfg.micro_batch_tokens,
        "logprob_chunk": cfg.logprob_chunk, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(f"GRPO step of {cfg.model} ({cfg.finetune}) on {result['device_name']} ({device.type}, "
          f"{result['threads']} threads): {cfg.prompts_per_step} prompts x G={r.num_generations}, "
          f"{'exactly' if not args.natural_length else 'up to'} {r.max_new_tokens} new tokens, engine {r.engine}; "
          f"mean of {args.steps} steps after {args.warmup} warmup, {args.rounds} round(s)"
          + (", vs TRL GRPOTrainer (same config)" if args.vs_trl else ""),
          flush=True)
    if args.scaling:
        result["scaling"] = []
        for n in [int(x) for x in args.scaling.split(",")]:
            row = {"max_new_tokens": n, **compare(args, [*args.overrides, f"rollout.max_new_tokens={n}"])}
            result["scaling"].append(row)
            print_row(f"{n:5d} tokens  ", row)
            sys.stdout.flush()
    else:
        result.update(compare(args, args.overrides))
        print_row("", result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

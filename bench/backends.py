"""The torch and the JAX backend on the same run configuration: `aha train` itself, `backend=torch`
then `backend=jax`, each in its own process, timed by the loop's own per-step figures
(`gen_time`, `update_time`, `step_time`, `tokens_per_s` in metrics.jsonl).

    python bench/backends.py -c smoke model=random:qwen2.5-0.5b rollout.max_new_tokens=256 \
        --warmup 2 --steps 5 --json bench/results/backends.json

The first `--warmup` steps are left out: JAX compiles its sampler and update there (and torch warms
its allocator). Completions end at EOS on both sides, so the sides can sample different lengths:
compare `gen_tokens_per_s` and `update_s_per_1k_tokens` as well as the step time. The config must
suit both backends (LoRA on every layer, no vLLM; see `aha.validation.validate_jax`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from aha.config import load_config
from aha.errors import AhaError
from aha.log import read_jsonl

QUIET = ["probe_every=0", "eval_every=0", "log_completions_every=0", "tensorboard=false", "save_every=0"]


def run_backend(backend: str, preset: str, overrides: list[str], warmup: int, steps: int) -> dict[str, Any]:
    """`aha train` with this backend for warmup + steps steps; medians of the timed steps."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "aha", "train", "-c", preset, *overrides, *QUIET, f"backend={backend}",
               f"max_steps={warmup + steps}", f"output_dir={tmp}/run", "--overwrite"]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rows = [r for r in read_jsonl(Path(tmp) / "run" / "metrics.jsonl") if r["step"] > warmup]
    med = {k: statistics.median(r[k] for r in rows) for k in ("step_time", "gen_time", "update_time",
                                                              "tokens_per_s", "completion_len")}
    return {"step_time": med["step_time"], "gen_time": med["gen_time"], "update_time": med["update_time"],
            "gen_tokens_per_s": med["tokens_per_s"], "completion_len": med["completion_len"],
            "step_times": [r["step_time"] for r in rows]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="smoke")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, applied to both backends")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out (JAX compiles in them)")
    ap.add_argument("--steps", type=int, default=3, help="steps timed")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.config, [*args.overrides, "backend=jax"])  # both backends must accept it
    rows_per_step = cfg.prompts_per_step * cfg.rollout.num_generations
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "preset": args.config,
                              "overrides": args.overrides, "model": cfg.model, "rows_per_step": rows_per_step,
                              "max_new_tokens": cfg.rollout.max_new_tokens, "warmup": args.warmup,
                              "steps": args.steps, "host": platform.node(), "python": platform.python_version()}
    for backend in ("torch", "jax"):
        side = run_backend(backend, args.config, args.overrides, args.warmup, args.steps)
        tokens = side["completion_len"] * rows_per_step
        side["update_s_per_1k_tokens"] = 1000 * side["update_time"] / max(tokens, 1)
        result[backend] = side
    t, j = result["torch"], result["jax"]
    result["jax_speedup"] = {"step": t["step_time"] / j["step_time"],
                             "gen_tokens_per_s": j["gen_tokens_per_s"] / t["gen_tokens_per_s"],
                             "update_per_token": t["update_s_per_1k_tokens"] / j["update_s_per_1k_tokens"]}
    for name in ("torch", "jax"):
        s = result[name]
        print(f"{name:5s} step {s['step_time']:.2f}s = gen {s['gen_time']:.2f}s ({s['gen_tokens_per_s']:.0f} tok/s) "
              f"+ update {s['update_time']:.2f}s ({s['update_s_per_1k_tokens']:.2f}s per 1k tokens), "
              f"mean completion {s['completion_len']:.0f} tokens")
    sp = result["jax_speedup"]
    print(f"jax vs torch (above 1: jax faster): step {sp['step']:.2f}x, generation {sp['gen_tokens_per_s']:.2f}x, "
          f"update per token {sp['update_per_token']:.2f}x  [{cfg.model}, {rows_per_step} completions/step]")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    try:
        main()
    except AhaError as e:  # a config one of the backends cannot run: one line, exit 2
        raise SystemExit(f"bench/backends.py: {e}") from None

"""A run's fingerprint, for refactors that must not change what training does: every logged metric
but the wall-clock ones, the completions and eval completions, and a hash of every file of the last
checkpoint's weights, for a fixed set of 3-step runs covering the loops and the loss variants.

    python bench/parity.py --out before.json      # on the old tree
    python bench/parity.py --out after.json --compare before.json

Runs (each `aha train` in a subprocess of this interpreter, so `python -m` from a worktree tests that
tree): smoke (torch), cpu-demo (SmolLM2, eval_limit 20), the JAX smoke run, GSPO, CISPO + TIS (native
engine log-probs), DAPO refill, and smoke resumed at step 2 (must equal smoke). Figures depend on the
CPU's floating point: compare fingerprints taken on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = {"tokens_per_s", "step_time", "gen_time", "score_time", "update_time"}
RUNS = {
    "smoke": ["-c", "smoke"],
    "cpu-demo": ["-c", "cpu-demo", "max_steps=3", "eval_limit=20", "eval_every=2", "save_every=3"],
    "jax-smoke": ["-c", "smoke", "backend=jax"],
    "gspo": ["-c", "smoke", "algo.ratio=sequence", "algo.epsilon_low=3e-4", "algo.epsilon_high=4e-4"],
    "cispo-tis": ["-c", "smoke", "rollout.engine=native", "algo.surrogate=reinforce", "algo.epsilon_low=1.0",
                  "algo.loss_agg=token", "algo.rollout_correction=truncate"],
    "dapo-refill": ["-c", "smoke", "algo.drop_zero_std=true", "algo.max_refill_rounds=2", "algo.loss_agg=token",
                    "algo.overlong_buffer=8", "algo.mask_truncated=true", "task_options.shaping=false"],
}


def aha(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "AHA_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "aha", "train", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"aha train {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def fingerprint(run_dir: Path) -> dict:
    def rows(name: str) -> list:
        path = run_dir / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    metrics = [{k: v for k, v in row.items() if k not in TIMING and not k.startswith("time/")}
               for row in rows("metrics.jsonl")]
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = {}
    for f in sorted(ckpts[-1].rglob("*")) if ckpts else []:
        if f.is_file() and f.suffix in (".safetensors", ".npz", ".msgpack", ".pt", ".bin"):
            weights[str(f.relative_to(ckpts[-1]))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return {"metrics": metrics, "completions": rows("completions.jsonl"),
            "eval_completions": rows("eval_completions.jsonl"), "weights": weights}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="a fingerprint file to compare with; exit 1 on any difference")
    ap.add_argument("--only", nargs="*", help="run only these (names above)")
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in RUNS.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / name
            aha([*argv, f"output_dir={out}"])
            result[name] = fingerprint(out)
            print(f"{name}: {len(result[name]['metrics'])} metric rows, {len(result[name]['weights'])} weight files",
                  flush=True)
        if not args.only or "resume" in args.only:
            out = Path(tmp) / "resume"
            aha([*RUNS["smoke"], f"output_dir={out}", "max_steps=2", "save_every=2"])
            aha([*RUNS["smoke"], f"output_dir={out}", "--resume"])
            result["resume"] = fingerprint(out)
            print("resume: done", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        bad = [name for name in result if name in before and before[name] != result[name]]
        for name in bad:
            for key in result[name]:
                if before[name].get(key) != result[name][key]:
                    print(f"DIFFERS: {name} {key}")
        if "resume" in result and "smoke" in result:
            # The model's weights and the last step's metrics; trainer_state.pt pickles the optimizer state
            # loaded from the step-2 checkpoint, whose bytes (not values) differ from the uninterrupted run's.
            r, s = result["resume"], result["smoke"]
            same = (r["weights"]["adapter_model.safetensors"] == s["weights"]["adapter_model.safetensors"]
                    and r["metrics"][-1] == s["metrics"][-1])
            print(f"resume at step 2 == uninterrupted smoke (weights, step-3 metrics): {same}")
            bad += [] if same else ["resume"]
        print("identical" if not bad else f"{len(bad)} run(s) differ: {bad}")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

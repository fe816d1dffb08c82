"""The pieces of bench/gpu_check.py that import torch (or JAX), each run in a subprocess of its own so that
a crash, a hang or a GPU fault ends one section, not the check, and each process's peak memory is its own.

    python bench/gpu_workers.py env     --dest F [--site DIR]
    python bench/gpu_workers.py prepare --dest F --root DIR --device cuda --dtype bfloat16 ARCH ...
    python bench/gpu_workers.py script  --dest F -- SCRIPT ARGS ...     # a benchmark script, then its peak memory
    python bench/gpu_workers.py preset  --dest F --preset NAME -- key=value ...   # `aha train`, 2 steps

Each writes one JSON object to --dest. Peak memory: torch's `max_memory_allocated` / `max_memory_reserved`
(the tensors, and what the caching allocator holds: nvidia-smi sees that plus the CUDA context), JAX's
`peak_bytes_in_use`, or on the CPU the process's peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "triton", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "bitsandbytes",
            "trl", "datasets", "gguf", "jax", "jaxlib", "jax-cuda13-plugin", "optax", "numpy", "pyarrow", "pytest",
            "vllm"]  # vllm: not on the device's image; a carried wheel would be over 64 MiB


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def peak_memory(backend: str = "torch") -> dict[str, Any]:
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats()
        if stats:  # None on the CPU backend
            return {"peak_bytes": stats.get("peak_bytes_in_use"), "kind": "jax peak_bytes_in_use"}
    else:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                    "kind": "torch.cuda max_memory_allocated / max_memory_reserved"}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": kib * 1024, "kind": "cpu peak RSS of the process"}


# ---------------------------------------------------------------------------- env

def unmet_requirements(site: Path | None) -> list[str]:
    """What the wheels installed into `site` need and this machine does not have at a fitting version."""
    from packaging.requirements import Requirement

    problems = []
    for info in sorted(site.glob("*.dist-info")) if site and site.is_dir() else []:
        dist = md.Distribution.at(info)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            have = version(req.name)
            if have is None:
                problems.append(f"{dist.metadata['Name']} needs {req}: not installed")
            elif req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {req}: have {have}")
    return problems


def pin_mismatches() -> list[str]:
    """aha's own pins (pyproject.toml) that this machine's packages fall outside of: aha is not installed
    here (it runs from the checkout), so these are facts to know, not install failures."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [x for extra in project["optional-dependencies"].values() for x in extra]
    out = []
    for line in lines:
        req = Requirement(line)
        have = version(req.name)
        if have is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (here {have})")
    return sorted(set(out))


def worker_env(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "torch_cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(),
                            "versions": {name: version(name) for name in PACKAGES}}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, device_memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, device_count=torch.cuda.device_count())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                  "clocks.max.mem", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"{type(e).__name__}: {e}"
    info["unmet_requirements"] = unmet_requirements(Path(args.site) if args.site else None)
    info["aha_pins_not_met_here"] = pin_mismatches()
    jax = subprocess.run([sys.executable, "-c", "import jax, json; print(json.dumps({'version': jax.__version__, "
                          "'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()]}))"],
                         capture_output=True, text=True, timeout=120)
    info["jax"] = json.loads(jax.stdout) if jax.returncode == 0 else {"error": jax.stderr.strip()[-500:]}
    info["bitsandbytes"] = bnb_round_trip() if torch.cuda.is_available() else "needs CUDA"
    return info


def bnb_round_trip() -> dict[str, Any]:
    """bitsandbytes' CUDA library loads and NF4 quantizes and dequantizes a matrix on the GPU."""
    try:
        import bitsandbytes.functional as F
        import torch

        w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        q, state = F.quantize_4bit(w, quant_type="nf4")
        err = (F.dequantize_4bit(q, state) - w).abs().mean().item()
        return {"nf4_mean_abs_error": err, "ok": err < 0.2}
    except Exception as e:  # report, do not crash the env section: QLoRA's own tests say more
        return {"error": f"{type(e).__name__}: {e}"[:500]}


# ---------------------------------------------------------------------------- random checkpoints

def worker_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Random weights of each architecture, saved once as a model directory: every later section loads
    them in seconds instead of drawing billions of random numbers again (and QLoRA quantizes them while
    loading, as it would a hub model). Drawn on the device, where that takes milliseconds. A directory an
    earlier call on this machine completed (its DONE file written last) is used as it is."""
    import torch

    from aha.model import random_model, resolve_dtype

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    out: dict[str, Any] = {}
    for arch in args.archs:
        t0 = time.perf_counter()
        path = Path(args.root) / f"random-{arch}-{args.dtype}"
        done = path / "DONE"
        reused = done.is_file()
        if not reused:
            with device:
                model, tokenizer = random_model(arch, dtype)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            del model
            done.write_text(f"random:{arch} {args.dtype}\n")
        out[arch] = {"path": str(path), "seconds": time.perf_counter() - t0, "reused": reused,
                     "bytes": sum(f.stat().st_size for f in path.iterdir())}
        print(f"prepare: {arch} -> {path} in {out[arch]['seconds']:.1f}s" + (" (kept from an earlier call)" if reused
                                                                               else ""), flush=True)
    return {"models": out, "memory": peak_memory()}


# ---------------------------------------------------------------------------- a script, a preset

def worker_script(args: argparse.Namespace) -> dict[str, Any]:
    sys.argv = list(args.rest)
    runpy.run_path(args.rest[0], run_name="__main__")
    return {"memory": peak_memory()}


def worker_preset(args: argparse.Namespace) -> dict[str, Any]:
    """`aha train -c PRESET key=value ...` in this process; then its per-step figures and peak memory."""
    from aha.cli import main as aha_main
    from aha.config import load_config
    from aha.log import read_jsonl

    cfg = load_config(args.preset, args.rest)
    prompt = prompt_lengths(cfg)
    t0 = time.perf_counter()
    rc = aha_main(["train", "-c", args.preset, *args.rest, "--overwrite"])
    seconds = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"aha train exited {rc}")
    keys = ("step", "step_time", "gen_time", "update_time", "tokens_per_s", "completion_len")
    steps = [{k: r[k] for k in keys if k in r} for r in read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")]
    return {"backend": cfg.backend, "model": cfg.model, "finetune": cfg.finetune, "task": cfg.task,
            "engine": cfg.rollout.engine if cfg.backend == "torch" else "jax sampler",
            "rows": cfg.prompts_per_step * cfg.rollout.num_generations, "max_new_tokens": cfg.rollout.max_new_tokens,
            "lora_r": cfg.lora.r, "gradient_checkpointing": cfg.gradient_checkpointing,
            "micro_batch_tokens": cfg.micro_batch_tokens, "prompt_tokens": prompt, "steps": steps,
            "train_seconds": seconds, "memory": peak_memory(cfg.backend)}


def prompt_lengths(cfg: Any) -> dict[str, float]:
    """Token counts of the run's first prompts with its own tokenizer (a random model's byte tokenizer
    spends one token per byte: about 4x what a real tokenizer spends on English)."""
    from transformers import AutoTokenizer

    from aha.model import byte_tokenizer
    from aha.rollout import render_prompt
    from aha.tasks import get_task

    tok = AutoTokenizer.from_pretrained(cfg.model) if Path(cfg.model).is_dir() else byte_tokenizer()
    exs = get_task(cfg.task, **cfg.task_options).examples("train")[:32]
    n = [len(tok(render_prompt(tok, ex.prompt)).input_ids) for ex in exs]
    return {"mean": sum(n) / len(n), "max": max(n)}


WORKERS = {"env": worker_env, "prepare": worker_prepare, "script": worker_script, "preset": worker_preset}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worker", choices=WORKERS)
    ap.add_argument("--dest", required=True, help="write the result (JSON) here")
    ap.add_argument("--site", help="env: the folder the wheels were installed into")
    ap.add_argument("--root", help="prepare: where the model directories go")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--preset")
    ap.add_argument("archs", nargs="*", help="prepare: architectures (aha.model.ARCHS)")
    argv = sys.argv[1:] if argv is None else argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_intermixed_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.rest = rest
    sys.path.insert(0, str(REPO))
    result = WORKERS[args.worker](args)
    Path(args.dest).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

"""One prepared command for a GPU machine lent for a few minutes (an H100 or an H200): every CUDA path
checked and the GPU goals measured, most valuable first, in one device call that stops itself before the
call's limit, into one JSON, one log and the markdown for BENCHMARKS.md's GPU section.

    python bench/gpu_check.py --out DIR            # on the GPU machine (BENCHMARKS.md, "GPU", has the device calls)
    python bench/gpu_check.py --out DIR --only step,preset:a100-h100 --budget 200   # what an earlier call left
    python bench/gpu_check.py --out DIR --dry-run  # every section at tiny sizes on the CPU, in 2-3 minutes
    python bench/gpu_check.py --out DIR --simulate      # the GPU plan's timeline at assumed durations, at once
    python bench/gpu_check.py --render A.json B.json                  # the markdown again, from one or more calls

Sections, in order of value, each in subprocesses with its own time budget (one failing or hanging does
not stop the next), each recording its status, seconds, peak memory and figures:
  env         installs .gpu-wheels/ offline (bench/gpu_wheels.py) into a folder of its own; GPU, driver,
              versions, the wheels' requirements met here, aha's pins this machine falls outside of
  prepare     random weights of each architecture, drawn on the GPU, saved once under --models (kept
              between calls on one machine: a second call loads them; a fresh machine draws them again);
  cuda_tests  at the same time: `pytest -m cuda` (tests/test_cuda.py, 4 processes with pytest-xdist)
  preset:NAME also at the same time, once prepare is done: the small QLoRA presets (rtx5090 first); each
              GPU preset (configs/*.yaml without `device: cpu`, the JAX ones with backend jax on the GPU)
              is 2 steps of `aha train` on random weights of its architecture: step times, peak memory
  rollout     bench/rollout.py: random Qwen2.5-3B, 16 prompts x G=8 x 512 new tokens, bf16 - native vs HF
              tokens/s and the fraction of the memory-bandwidth floor (the card's, from its name)
  step        bench/step.py -c rtx5090 (Qwen2.5-3B QLoRA r64, 4 prompts x G=8, 512 tokens) with the native
              engine, against TRL's GRPOTrainer: step time and peak memory of each
  preset:NAME the other presets, as many at a time as the card's memory allows (80% of it: an H100 runs
              the two JAX presets, 50 + 30 GiB, one after the other; an H200 side by side)

rollout and step have the GPU to themselves. Peak memory is per process, so exact beside others; step
times beside others include waiting for the GPU (the JSON and the table say what ran alongside). Gsm8k
presets train on task=arith: the machine has no network for the GSM8K download, and a random model's byte
tokenizer spends a token per byte, so arith's ~265-byte prompts are closer to GSM8K's ~160-200 real tokens
than GSM8K's own ~640 bytes would be.

Time: a global --budget (530 s on a GPU, for a device call of timeout_s=570; 240 s dry) and LIMITS, each
section's own budget (its timeout, and the least time left to start it). A section with too little time
left is recorded "skipped: time budget"; one still running at its stage's end or the budget's end is
cut (pytest first gets SIGINT, so the tests that ran are reported). The JSON and markdown are rewritten
after every section (a call cut short returns what it measured), and the last line printed names exactly
what to run next: `rerun: python bench/gpu_check.py --only a,b --out DIR` (every skipped or cut section),
or `rerun: nothing`. --dry-run (run by tests/test_gpu_check.py): tiny random models of the same families,
a few tokens, the CPU; `finetune: qlora` becomes lora and the 4-bit test says "needs CUDA".
--simulate runs the scheduler (bench/gpu_jobs.py) on a virtual clock, each section lasting its assumed GPU
time (ASSUMED_S) and no process started: the plan's timeline and its rerun line, on any machine, in a second,
deterministic.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from gpu_report import flat_sections, markdown, merge, parse_junit  # noqa: E402
from gpu_jobs import Job, JobRunner  # noqa: E402
from gpu_wheels import install_offline  # noqa: E402

WORKERS = str(BENCH / "gpu_workers.py")
ARCH_OF = {"Qwen/Qwen2.5-3B": "qwen2.5-3b", "google/gemma-2-2b": "gemma2-2b"}  # a preset's model -> random arch
TINY = {"qwen2.5-3b": "tiny-qwen2", "gemma2-2b": "tiny-gemma2"}  # its dry-run stand-in
PRESET_ORDER = ["rtx5090", "gpu-16gb", "rtx4090", "a100-h100", "countdown-gemma2", "tpu-v3-8", "tpu-v2-8"]
PRESET_GIB = {"rtx5090": 12, "rtx4090": 10, "gpu-16gb": 8, "a100-h100": 50, "countdown-gemma2": 30,
              "tpu-v3-8": 50, "tpu-v2-8": 30}  # rough peaks, only to keep concurrent presets under the card's memory
BESIDE_TESTS_GIB = 16  # presets this small (the QLoRA ones) run beside the CUDA tests, whose 4 processes take ~16 GiB
# kind -> (timeout, least time left to start it), seconds; GPU and dry run. The GPU's timeouts are the plan's
# per-section budgets: env + the tests' stage + rollout + step = 45 + 215 + 110 + 160 = 530 = the budget, so
# an overrun early never starves the step; what the sections leave unspent goes to the later presets.
LIMITS = {"env": (45, 0), "prepare": (120, 0), "cuda_tests": (215, 60), "rollout": (110, 60), "step": (160, 90),
          "preset": (150, 100), "preset-jax": (200, 150)}  # a preset starts only with time to finish
DRY_LIMITS = {"env": (90, 0), "prepare": (90, 0), "cuda_tests": (150, 10), "rollout": (90, 5), "step": (120, 10),
              "preset": (90, 5), "preset-jax": (120, 10)}
# --simulate: each section's assumed GPU seconds on an H100 (BENCHMARKS.md, "GPU", says how each was reached:
# the CPU rehearsal's times with the model work scaled to the GPU, and cold compiles added).
ASSUMED_S = {"env": 25, "prepare": 40, "prepare-kept": 8, "cuda_tests": 190, "rollout": 105, "step": 150,
             "preset:rtx5090": 110, "preset:gpu-16gb": 90, "preset:rtx4090": 100, "preset:a100-h100": 140,
             "preset:countdown-gemma2": 110, "preset:tpu-v3-8": 170, "preset:tpu-v2-8": 150}
QUIET = ["eval_every=0", "probe_every=0", "log_completions_every=0", "tensorboard=false", "save_every=0",
         "max_steps=2"]


def gpu_presets() -> list[str]:
    names = [p.stem for p in sorted((REPO / "configs").glob("*.yaml"))
             if (yaml.safe_load(p.read_text()) or {}).get("device") != "cpu"]
    return sorted(names, key=lambda n: (PRESET_ORDER.index(n) if n in PRESET_ORDER else len(PRESET_ORDER), n))


class Check(JobRunner):
    """The GPU plan: what runs (the sections below), when (run()), and what is recorded (record, save)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dry, self.sim = args, args.dry_run, bool(getattr(args, "simulate", False))
        self.limits = DRY_LIMITS if self.dry else LIMITS
        self.budget = args.budget or (240.0 if self.dry else 530.0)
        self.t0, self.clock = time.monotonic(), 0.0  # --simulate: the virtual clock, advanced by the scheduler
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="aha-gpu-check-"))
        # Kept between calls on one machine (a second call loads the weights instead of drawing them, and
        # finds the compile caches warm); the dry run and --simulate keep nothing.
        keep = None if self.dry or self.sim else Path(getattr(args, "models", "") or default_models_dir())
        self.models_root = keep or self.scratch / "models"
        self.site = self.scratch / "site"
        self.logfile = open(self.out / "gpu_check.log", "w")
        self.models: dict[str, str] = {}  # arch -> saved directory (or random:<arch> if prepare failed)
        self.running: list[Job] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX takes what it uses, not 75% of the card
                    "AHA_CACHE": str(self.scratch / "cache"), "PYTHONPATH": os.pathsep.join(
                        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        if keep:  # Inductor's and XLA's compiled kernels, beside the weights: a second call compiles less
            self.env.update(TORCHINDUCTOR_CACHE_DIR=str(keep / "inductor-cache"),
                            JAX_COMPILATION_CACHE_DIR=str(keep / "jax-cache"))
        if self.dry:  # 2 shared cores: a second thread per process only waits (BENCHMARKS.md)
            self.env.update(OMP_NUM_THREADS="1", AHA_TEST_DEVICE="cpu")
        self.result: dict[str, Any] = {"check": {
            "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:]), "dry_run": self.dry,
            "simulated": self.sim, "budget_s": self.budget,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "jobs": args.jobs, "models": str(self.models_root)},
            "sections": {}}

    def assumed(self, name: str) -> float:
        """--simulate: a section's assumed GPU seconds. A rerun (--only) is taken to be on the warm machine
        of the first call, whose weights it loads instead of drawing them."""
        return ASSUMED_S["prepare-kept"] if name == "prepare" and self.args.only else ASSUMED_S.get(name, 60)

    def rerun_line(self) -> str:
        """The one command that runs every section this call skipped or cut, or 'nothing'."""
        order = ["cuda_tests", "rollout", "step"] + [f"preset:{p}" for p in PRESET_ORDER]  # the plan's, by value
        names = sorted((n for n, r in flat_sections(self.result) if r.get("rerun") and n not in ("env", "prepare")),
                       key=lambda n: order.index(n) if n in order else len(order))
        if not names:
            return "rerun: nothing (every section ran to its end)"
        return f"rerun: python bench/gpu_check.py --only {','.join(names)} --out {self.args.out}"

    def record(self, name: str, rec: dict[str, Any]) -> None:
        self.say(f"{name}: {rec['status']} ({rec['seconds']}s)")
        sections = self.result["sections"]
        if name.startswith("preset:"):
            sections.setdefault("presets", {})[name.split(":", 1)[1]] = rec
        else:
            sections[name] = rec
        self.save()

    def save(self) -> None:
        """Both files written whole or not at all (a temporary file, then a rename): a kill never leaves half."""
        self.result["check"]["wall_s"] = round(self.elapsed(), 1)
        for name, text in (("gpu_check.json", json.dumps(self.result, indent=1, default=str) + "\n"),
                           ("gpu_check.md", markdown(self.result))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def wanted(self, name: str) -> bool:
        only = [x for x in (self.args.only or "").split(",") if x]
        return not only or name in only or (name.startswith("preset:") and "presets" in only)

    # ------------------------------------------------------------------ the sections

    def run(self) -> int:
        self.section_env()
        memory = (self.result["sections"].get("env", {}).get("result") or {}).get("device_memory_bytes")
        card_gib = memory / 2**30 if memory else (self.args.card_gib if self.sim else 100.0)
        cap = 0.8 * card_gib  # H100 (79.6 GiB): 63.7; H200 (139.8 GiB): 111.9
        self.result["check"]["memory_cap_gib"] = round(cap, 1)
        self.result["check"]["result_file"] = result_file(self.result)
        presets = [p for p in gpu_presets() if self.wanted(f"preset:{p}")]
        archs = {self.arch_of(p) for p in presets} - {None}
        if self.wanted("rollout") or self.wanted("step"):
            archs.add("qwen2.5-3b")
        # Stage 1, correctness and the small presets' memory: the weights are prepared while the CUDA tests
        # run; the small presets join once the weights exist. It ends with the tests' budget.
        stage = [self.job_prepare(sorted(archs))] if archs else []
        beside = [p for p in presets if self.small(p)]
        if self.wanted("cuda_tests"):
            stage.append(self.job_cuda_tests())
        stage += [self.job_preset(p, after="prepare" if archs else "") for p in beside]
        until = self.elapsed() + self.limits["cuda_tests"][0] if self.wanted("cuda_tests") else math.inf
        self.run_jobs(stage, parallel=3 if self.dry else 2 + len(beside), cap_gib=cap, until=until)
        # Stages 2 and 3: the speed goals, each with the GPU to itself.
        if self.wanted("rollout"):
            self.run_jobs([self.job_rollout()])
        if self.wanted("step"):
            self.section_step()
        # Stage 4: the other presets, as many at a time as the memory cap allows, until the budget's end.
        self.run_jobs([self.job_preset(p) for p in presets if p not in beside],
                      parallel=self.args.jobs or (2 if self.dry else 4), cap_gib=cap)
        self.result["check"]["rerun"] = self.rerun_line()
        self.save()
        print("\n" + markdown(self.result))
        print(f"results: {self.out / 'gpu_check.json'} -> {self.result['check']['result_file']}")
        print(self.result["check"]["rerun"], flush=True)  # the last line: what the next call runs
        bad = [n for n, r in flat_sections(self.result) if not r["status"].startswith(("ok", "skipped"))]
        return 1 if bad else 0

    def small(self, preset: str) -> bool:
        """A torch preset small enough to run beside the CUDA tests (the QLoRA ones)."""
        cfg = yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text()) or {}
        return cfg.get("backend", "torch") == "torch" and PRESET_GIB.get(preset, 99) <= BESIDE_TESTS_GIB

    def section_env(self) -> None:
        install = install_offline(Path(self.args.wheels), self.site) if self.args.wheels else {"wheels": []}
        if not install["wheels"] and not self.dry:
            install["note"] = "no wheel folder: QLoRA (bitsandbytes) and the TRL baseline will fail; bench/gpu_wheels.py"
        self.say(f"install: {install}"[:300])
        if install.get("rc") == 0:  # after REPO on the path: the wheels shadow nothing of the machine's
            sys.path.insert(1, str(self.site))
            self.env["PYTHONPATH"] += os.pathsep + str(self.site)
        failed = {"failed": f"installing the wheels exited {install['rc']}"} if install.get("rc") else {}
        job = Job("env", [sys.executable, WORKERS, "env", "--dest", "{dest}", "--site", str(self.site)], "env",
                  parse=lambda j: {**json.loads(j.dest.read_text()), "install": install, **failed})
        self.run_jobs([job])

    def job_prepare(self, archs: list[str]) -> Job:
        names = [TINY[a] if self.dry else a for a in archs]

        def parse(job: Job) -> dict[str, Any]:
            res = json.loads(job.dest.read_text())
            for arch, name in zip(archs, names):
                if name in res["models"]:
                    self.models[arch] = res["models"][name]["path"]
            return res

        # Saved in bf16 either way (a section casts to its own dtype): the dry run reads the GPU's files' format.
        return Job("prepare", [sys.executable, WORKERS, "prepare", "--dest", "{dest}", "--root", str(self.models_root),
                               "--device", "cpu" if self.dry else "cuda", "--dtype", "bfloat16", *names], "prepare", parse,
                   gib=7)  # one model at a time on the GPU: Qwen2.5-3B's 6.2 GB

    def model(self, arch: str) -> str:
        """The saved random checkpoint of `arch`, or `random:<arch>` (slower) if prepare did not make it."""
        return self.models.get(arch) or f"random:{TINY[arch] if self.dry else arch}"

    def arch_of(self, preset: str) -> str | None:
        return ARCH_OF.get((yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text()) or {}).get("model"))

    def job_cuda_tests(self) -> Job:
        junit, peak = self.scratch / "cuda-tests.xml", self.scratch / "cuda-peak"
        files = [str(f.relative_to(REPO)) for f in sorted((REPO / "tests").glob("test_*.py"))
                 if "mark.cuda" in f.read_text()]  # every file with CUDA tests; the others need not be imported
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-q", "-rA", "-p", "no:cacheprovider",
               "--junitxml", str(junit)]
        if not self.dry and find_spec("xdist") is not None:
            cmd += ["-n", "4"]  # the tests compile kernels: 4 processes compile at once

        def parse(job: Job) -> dict[str, Any]:
            res = parse_junit(junit)
            peaks = [int(p.read_text()) for p in self.scratch.glob("cuda-peak*")]
            res["memory"] = {"peak_bytes": max(peaks) if peaks else None, "kind": "torch.cuda max_memory_allocated, "
                             "largest test process"}
            skipped = [t for t in res["tests"] if t["outcome"] == "skipped"]
            if not self.dry and skipped:  # on the GPU nothing may hide behind a skip
                res["failed"] = f"{len(skipped)} skipped on the GPU"
            if self.dry and any("needs CUDA" not in t.get("message", "") for t in skipped):
                res["failed"] = "a test skipped on the CPU for another reason than needing CUDA"
            return res

        return Job("cuda_tests", cmd, "cuda_tests", parse, env={"AHA_PEAK_FILE": str(peak)}, gib=BESIDE_TESTS_GIB)

    def job_rollout(self) -> Job:
        out = self.scratch / "rollout-bench.json"
        size = (["--device", "cpu", "--dtype", "float32", "--prompts", "2", "--group", "2", "--new-tokens", "8",
                 "--min-words", "5", "--max-words", "20", "--threads", "1"] if self.dry else
                ["--device", "cuda", "--dtype", "bfloat16", "--prompts", "16", "--group", "8", "--new-tokens", "512"])
        cmd = [sys.executable, WORKERS, "script", "--dest", "{dest}", "--", str(BENCH / "rollout.py"),
               "--model", self.model("qwen2.5-3b"), *size, "--repeats", "1", "--json", str(out)]

        def parse(job: Job) -> dict[str, Any]:
            res = json.loads(out.read_text())
            res["memory"] = json.loads(job.dest.read_text())["memory"]
            if res["device"] != "cuda":
                res["fraction_of_floor"] = "needs CUDA (a GPU's memory-bandwidth floor)"
            return res

        return Job("rollout", cmd, "rollout", parse)

    def step_job(self, vs_trl: bool) -> Job:
        out = self.scratch / "step-bench.json"
        overrides = [f"model={self.model('qwen2.5-3b')}", "task=arith", "rollout.engine=native"]
        if self.dry:  # qlora needs CUDA (bitsandbytes' 4-bit kernels): the same step with plain LoRA
            overrides += ["finetune=lora", "device=cpu", "prompts_per_step=1", "rollout.num_generations=2",
                          "rollout.max_new_tokens=8"]
        cmd = [sys.executable, str(BENCH / "step.py"), "-c", "rtx5090", *overrides, "--steps", "1", "--warmup", "1",
               "--json", str(out), *(["--vs-trl"] if vs_trl else []), *(["--threads", "1"] if self.dry else [])]
        return Job("step", cmd, "step", lambda j: json.loads(out.read_text()))

    def section_step(self) -> None:
        """aha vs TRL; if TRL cannot run here (missing, or failing), aha's side alone, and why."""
        vs_trl = find_spec("trl") is not None
        self.run_jobs([self.step_job(vs_trl)])
        rec = self.result["sections"]["step"]
        if not vs_trl:
            rec.setdefault("result", {})["trl"] = "not installed: bench/gpu_wheels.py (or pip install 'aha[bench]')"
        elif (rec["status"].startswith("failed") and "'trl'" in rec.get("log_tail", "")  # TRL's side failed
              and self.left() > self.limits["step"][1]):
            trl_failure = rec.get("log_tail", "")
            self.run_jobs([self.step_job(False)])
            rec = self.result["sections"]["step"]
            rec.setdefault("result", {})["trl"] = "failed with TRL: " + trl_failure[-1500:]
        self.save()

    def job_preset(self, preset: str, after: str = "") -> Job:
        cfg = yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text()) or {}
        arch, jax = self.arch_of(preset), cfg.get("backend") == "jax"
        overrides = [f"output_dir={self.scratch / 'runs' / preset}", *QUIET]
        notes = []
        if cfg.get("task") == "gsm8k":
            overrides.append("task=arith")
            notes.append("task arith (no network)")
        if self.dry:
            overrides += ["device=cpu", "prompts_per_step=1", "rollout.num_generations=2", "rollout.max_new_tokens=8"]
            if cfg.get("finetune") == "qlora":
                overrides.append("finetune=lora")
                notes.append("qlora -> lora: 4-bit needs CUDA")

        def cmd() -> list[str]:  # at its start: the weights prepare saved by then
            # an unknown model fails at once, and says so: add it to ARCH_OF
            model = f"model={self.model(arch)}" if arch else "model=random:unknown"
            return [sys.executable, WORKERS, "preset", "--dest", "{dest}", "--preset", preset, "--", *overrides, model]

        def parse(job: Job) -> dict[str, Any]:
            return {**json.loads(job.dest.read_text()), "notes": notes,
                    "arch": f"{TINY.get(arch)} for {arch}" if self.dry else arch}

        return Job(f"preset:{preset}", cmd, "preset-jax" if jax else "preset", parse, gib=PRESET_GIB.get(preset, 30),
                   after=after)


def result_file(result: dict[str, Any]) -> str:
    """bench/results/gpu-check-<card>-<date>.json: the card from its name ("NVIDIA H100 80GB HBM3" -> h100)."""
    name = (result["sections"].get("env", {}).get("result") or {}).get("device_name") or ""
    card = next((w.lower() for w in name.split() if w[:1].isalpha() and w[1:].isdigit()), None)
    card = card or ("simulated" if result["check"].get("simulated") else "dry-run" if result["check"]["dry_run"]
                    else "-".join(name.lower().split()) or "unknown")
    when = result["check"]["started"][:16].replace(" ", "-").replace(":", "")  # 2026-12-06-1245: one per call
    return f"bench/results/gpu-check-{card}-{when}.json"


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def default_models_dir() -> str:
    """Memory-backed /dev/shm where it has room for the ~11 GB of weights (loads in seconds), else the disk;
    wherever an earlier call on this machine put them first (its weights then fill part of /dev/shm)."""
    shm, disk = Path("/dev/shm/aha-gpu-models"), Path("/tmp/aha-gpu-models")
    if shm.is_dir() or disk.is_dir():
        return str(shm if shm.is_dir() else disk)
    return str(shm if shm.parent.is_dir() and shutil.disk_usage(shm.parent).free > 24 * 2**30 else disk)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where gpu_check.json, gpu_check.log and gpu_check.md go")
    ap.add_argument("--dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="seconds for the whole check (default 530: a device call of timeout_s=570; dry 240)")
    ap.add_argument("--only", default="", help="comma-separated sections: env is always run; e.g. "
                                                "cuda_tests,rollout,step,presets,preset:a100-h100")
    ap.add_argument("--jobs", type=int, default=0, help="later presets at a time (default 4 on a GPU, 2 dry)")
    ap.add_argument("--wheels", default=str(REPO / ".gpu-wheels"), help="wheel folder to install offline first")
    ap.add_argument("--models", default="", help="where the random weights and compile caches stay between calls "
                                                 "on one machine (GPU only; ~11 GB; default /dev/shm or /tmp)")
    ap.add_argument("--simulate", action="store_true",
                    help="no work: the scheduler on a virtual clock, each section lasting its assumed GPU time (ASSUMED_S)")
    ap.add_argument("--card-gib", type=float, default=79.6,
                    help="--simulate: the card's memory in GiB (H100 79.6, H200 139.8)")
    ap.add_argument("--render", nargs="+", metavar="JSON", help="print the markdown of these calls' JSONs, merged")
    args = ap.parse_args(argv)
    if args.render:
        print(markdown(merge(args.render)))
        return 0
    if not args.out:
        ap.error("--out is required")
    check = Check(args)
    signal.signal(signal.SIGTERM, interrupted)
    # Python's own Ctrl-C handler, also where a shell started this with SIGINT ignored: the sections' processes
    # then start with SIGINT's default (handlers are reset at exec, an ignored signal is not), which stop() needs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return check.run()
    except KeyboardInterrupt:  # stopped from outside: cut what runs, keep what was measured, say what is left
        check.abort()
        check.result["check"]["rerun"] = check.rerun_line()
        check.save()
        print(check.result["check"]["rerun"], flush=True)
        return 1
    finally:
        shutil.rmtree(check.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

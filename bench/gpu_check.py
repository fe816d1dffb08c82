"""One prepared command for a GPU machine lent for a few minutes: every CUDA path checked and the GPU
goals measured in at most 8 minutes, into one JSON, one log and the markdown for BENCHMARKS.md's GPU section.

    python bench/gpu_check.py --out DIR            # on the GPU machine (BENCHMARKS.md, "GPU", has the device call)
    python bench/gpu_check.py --out DIR --dry-run  # every section at tiny sizes on the CPU, in under 3 minutes
    python bench/gpu_check.py --out DIR --only preset:tpu-v3-8,preset:tpu-v2-8    # what an earlier call skipped
    python bench/gpu_check.py --render A.json B.json                  # the markdown again, from one or more calls

Sections, in priority order, each in subprocesses with its own timeout (one failing or hanging does not
stop the next), each recording its status, seconds, peak memory and figures:
  env         installs .gpu-wheels/ offline (bench/gpu_wheels.py) into a folder of its own; GPU, driver,
              versions, the wheels' requirements met here, aha's pins this machine falls outside of
  prepare     random weights of each architecture, drawn on the GPU, saved once (/dev/shm); meanwhile:
  cuda_tests  `pytest -m cuda` (tests/test_cuda.py, 4 processes with pytest-xdist where installed)
  rollout     bench/rollout.py: random Qwen2.5-3B, 16 prompts x G=8 x 512 new tokens, bf16 - native vs HF
              tokens/s and the fraction of the memory-bandwidth floor (H200: 4.8 TB/s)
  step        bench/step.py -c rtx5090 (Qwen2.5-3B QLoRA r64, 4 prompts x G=8, 512 tokens) with the native
              engine, against TRL's GRPOTrainer: step time and peak memory of each
  preset:NAME each GPU preset (configs/*.yaml without `device: cpu`, the JAX ones with backend jax on the
              GPU): 2 steps of `aha train` on random weights of its architecture; step times, peak memory

rollout and step have the GPU to themselves; the presets run --jobs at a time as the GPU's memory
allows (their peak memory is per process, so exact; their step times then include waiting for the
GPU, which the JSON and the table say). Gsm8k presets train on task=arith: the machine has no network
for the GSM8K download, and a random model's byte tokenizer spends a token per byte, so arith's
~265-byte prompts are closer to GSM8K's ~160-200 real tokens than GSM8K's own ~640 bytes would be.

Time: a global --budget (450 s on a GPU, 180 s dry); a section with less than its minimum left is
recorded "skipped: time budget" (one still running at the end is cut), and `--only` runs it in a later
call. The JSON and markdown are rewritten after every section: a call cut short returns what it measured.
--dry-run (run by tests/test_gpu_check.py): tiny random models of the same families, a few tokens, the
CPU; `finetune: qlora` becomes lora and the 4-bit test says "needs CUDA".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from gpu_report import flat_sections, markdown, merge, parse_junit  # noqa: E402
from gpu_wheels import install_offline  # noqa: E402

WORKERS = str(BENCH / "gpu_workers.py")
ARCH_OF = {"Qwen/Qwen2.5-3B": "qwen2.5-3b", "google/gemma-2-2b": "gemma2-2b"}  # a preset's model -> random arch
TINY = {"qwen2.5-3b": "tiny-qwen2", "gemma2-2b": "tiny-gemma2"}  # its dry-run stand-in
PRESET_ORDER = ["rtx5090", "gpu-16gb", "rtx4090", "a100-h100", "countdown-gemma2", "tpu-v3-8", "tpu-v2-8"]
PRESET_GIB = {"rtx5090": 12, "rtx4090": 10, "gpu-16gb": 8, "a100-h100": 50, "countdown-gemma2": 30,
              "tpu-v3-8": 50, "tpu-v2-8": 30}  # rough peaks, only to keep concurrent presets under the card's memory
# kind -> (timeout, least time left to start it), seconds; GPU and dry run.
LIMITS = {"env": (150, 0), "prepare": (200, 0), "cuda_tests": (180, 60), "rollout": (200, 60), "step": (260, 90),
          "preset": (170, 45), "preset-jax": (220, 90)}
DRY_LIMITS = {"env": (90, 0), "prepare": (90, 0), "cuda_tests": (150, 10), "rollout": (90, 5), "step": (120, 10),
              "preset": (90, 5), "preset-jax": (120, 10)}
QUIET = ["eval_every=0", "probe_every=0", "log_completions_every=0", "tensorboard=false", "save_every=0",
         "max_steps=2"]


@dataclass
class Job:
    name: str  # "rollout", "preset:rtx5090", ...
    cmd: list[str]
    kind: str  # a key of LIMITS
    parse: Callable[[Job], dict[str, Any]]  # the section's figures, read from its files
    env: dict[str, str] = field(default_factory=dict)
    gib: float = 0.0
    dest: Path = Path()
    proc: subprocess.Popen | None = None
    start: float = 0.0
    deadline: float = 0.0
    cut_by_budget: bool = False  # its deadline is the budget's end, not its own timeout
    log: Path = Path()
    with_: set[str] = field(default_factory=set)  # jobs that ran at the same time


def gpu_presets() -> list[str]:
    names = [p.stem for p in sorted((REPO / "configs").glob("*.yaml"))
             if (yaml.safe_load(p.read_text()) or {}).get("device") != "cpu"]
    return sorted(names, key=lambda n: (PRESET_ORDER.index(n) if n in PRESET_ORDER else len(PRESET_ORDER), n))


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry_run
        self.limits = DRY_LIMITS if self.dry else LIMITS
        self.budget = args.budget or (180.0 if self.dry else 450.0)
        self.t0 = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="aha-gpu-check-"))
        shm = Path("/dev/shm")
        big = not self.dry and shm.is_dir() and shutil.disk_usage(shm).free > 24 * 2**30
        self.models_root = Path(tempfile.mkdtemp(prefix="aha-gpu-models-", dir=shm)) if big else self.scratch / "models"
        self.site = self.scratch / "site"
        self.logfile = open(self.out / "gpu_check.log", "w")
        self.models: dict[str, str] = {}  # arch -> saved directory (or random:<arch> if prepare failed)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX takes what it uses, not 75% of the card
                    "AHA_CACHE": str(self.scratch / "cache"), "PYTHONPATH": os.pathsep.join(
                        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        if self.dry:  # 2 shared cores: a second thread per process only waits (BENCHMARKS.md)
            self.env.update(OMP_NUM_THREADS="1", AHA_TEST_DEVICE="cpu")
        self.result: dict[str, Any] = {"check": {
            "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:]), "dry_run": self.dry,
            "budget_s": self.budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "jobs": args.jobs},
            "sections": {}}

    # ------------------------------------------------------------------ running jobs

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        line = f"[gpu_check {time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def run_jobs(self, jobs: list[Job], parallel: int = 1, cap_gib: float = math.inf) -> None:
        """Start jobs in order, `parallel` at a time and within cap_gib of estimated GPU memory; each ends
        by itself or at min(its timeout, the budget left when it started)."""
        pending, running = list(jobs), []
        while pending or running:
            while pending and len(running) < parallel:
                job = pending[0]
                timeout, least = self.limits[job.kind]
                if self.left() < max(least, 5):
                    pending.pop(0)
                    self.record(job.name, {"status": "skipped: time budget", "seconds": 0.0,
                                           "rerun": f"--only {job.name}"})
                    continue
                if running and sum(j.gib for j in running) + job.gib > cap_gib:
                    break
                job.cut_by_budget = self.left() < timeout
                self.start(job, min(timeout, self.left()))
                for other in running:
                    other.with_.add(job.name)
                    job.with_.add(other.name)
                running.append(pending.pop(0))
            for job in [j for j in running if j.proc.poll() is not None or time.monotonic() > j.deadline]:
                running.remove(job)
                self.finish(job)
            time.sleep(0.2)

    def start(self, job: Job, timeout: float) -> None:
        job.dest = self.scratch / f"{job.name.replace(':', '-')}.json"
        job.log = self.scratch / f"{job.name.replace(':', '-')}.log"
        cmd = [c.replace("{dest}", str(job.dest)) for c in job.cmd]
        self.say(f"start {job.name} (timeout {timeout:.0f}s): {shlex.join(cmd)}")
        job.start, job.deadline = time.monotonic(), time.monotonic() + timeout
        with open(job.log, "w") as log:  # its own process group: a timeout ends every process it started
            job.proc = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **job.env}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self, job: Job) -> None:
        timed_out = job.proc.poll() is None
        if timed_out:
            os.killpg(job.proc.pid, signal.SIGTERM)
            try:
                job.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(job.proc.pid, signal.SIGKILL)
                job.proc.wait()
        seconds = time.monotonic() - job.start
        text = job.log.read_text(errors="replace")
        self.logfile.write(f"\n===== {job.name}: exit {job.proc.returncode}, {seconds:.1f}s =====\n{text[-400_000:]}\n")
        rec: dict[str, Any] = {"status": "ok", "seconds": round(seconds, 1)}
        if job.with_:
            rec["ran_with"] = sorted(job.with_)
        try:
            rec["result"] = job.parse(job)
        except Exception as e:  # a section that wrote nothing: its log says why
            if job.proc.returncode == 0:
                rec["status"] = f"failed: could not read its output ({type(e).__name__}: {e})"
        if timed_out:
            rec["status"] = f"timeout after {seconds:.0f}s" + (" (the time budget's end)" if job.cut_by_budget else "")
            if job.cut_by_budget:
                rec["rerun"] = f"--only {job.name}"
        elif job.proc.returncode != 0:
            rec["status"] = f"failed (exit {job.proc.returncode})"
        elif rec.get("result", {}).get("failed"):
            rec["status"] = f"failed: {rec['result']['failed']}"
        if rec["status"] != "ok":
            rec["log_tail"] = text[-4000:]
        self.record(job.name, rec)

    def record(self, name: str, rec: dict[str, Any]) -> None:
        self.say(f"{name}: {rec['status']} ({rec['seconds']}s)")
        sections = self.result["sections"]
        if name.startswith("preset:"):
            sections.setdefault("presets", {})[name.split(":", 1)[1]] = rec
        else:
            sections[name] = rec
        self.save()

    def save(self) -> None:
        self.result["check"]["wall_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.result))

    def wanted(self, name: str) -> bool:
        only = [x for x in (self.args.only or "").split(",") if x]
        return not only or name in only or (name.startswith("preset:") and "presets" in only)

    # ------------------------------------------------------------------ the sections

    def run(self) -> int:
        self.section_env()
        presets = [p for p in gpu_presets() if self.wanted(f"preset:{p}")]
        archs = {self.arch_of(p) for p in presets} - {None}
        if self.wanted("rollout") or self.wanted("step"):
            archs.add("qwen2.5-3b")
        first = [self.job_prepare(sorted(archs))] if archs else []
        if self.wanted("cuda_tests"):
            first.append(self.job_cuda_tests())
        self.run_jobs(first, parallel=2)
        if self.wanted("rollout"):
            self.run_jobs([self.job_rollout()])
        if self.wanted("step"):
            self.section_step()
        memory = self.result["sections"].get("env", {}).get("result", {}).get("device_memory_bytes")
        cap = 0.8 * memory / 2**30 if memory else 100.0
        self.run_jobs([self.job_preset(p) for p in presets], parallel=self.args.jobs or (2 if self.dry else 4),
                      cap_gib=cap)
        self.save()
        print("\n" + markdown(self.result))
        bad = [n for n, r in flat_sections(self.result) if not r["status"].startswith(("ok", "skipped"))]
        return 1 if bad else 0

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
                               "--device", "cpu" if self.dry else "cuda", "--dtype", "bfloat16", *names], "prepare", parse)

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

        return Job("cuda_tests", cmd, "cuda_tests", parse, env={"AHA_PEAK_FILE": str(peak)})

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

    def job_preset(self, preset: str) -> Job:
        cfg = yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text()) or {}
        arch, jax = self.arch_of(preset), cfg.get("backend") == "jax"
        overrides = [f"output_dir={self.scratch / 'runs' / preset}", *QUIET]
        notes = []
        if arch is None:
            overrides.append("model=random:unknown")  # fails at once, and says so: add the model to ARCH_OF
        else:
            overrides.append(f"model={self.model(arch)}")
        if cfg.get("task") == "gsm8k":
            overrides.append("task=arith")
            notes.append("task arith (no network)")
        if self.dry:
            overrides += ["device=cpu", "prompts_per_step=1", "rollout.num_generations=2", "rollout.max_new_tokens=8"]
            if cfg.get("finetune") == "qlora":
                overrides.append("finetune=lora")
                notes.append("qlora -> lora: 4-bit needs CUDA")
        cmd = [sys.executable, WORKERS, "preset", "--dest", "{dest}", "--preset", preset, "--", *overrides]

        def parse(job: Job) -> dict[str, Any]:
            return {**json.loads(job.dest.read_text()), "notes": notes,
                    "arch": f"{TINY.get(arch)} for {arch}" if self.dry else arch}

        return Job(f"preset:{preset}", cmd, "preset-jax" if jax else "preset", parse, gib=PRESET_GIB.get(preset, 30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where gpu_check.json, gpu_check.log and gpu_check.md go")
    ap.add_argument("--dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds for the whole check (default 450, dry 180)")
    ap.add_argument("--only", default="", help="comma-separated sections: env is always run; e.g. "
                                                "cuda_tests,rollout,step,presets,preset:a100-h100")
    ap.add_argument("--jobs", type=int, default=0, help="presets at a time (default 4 on a GPU, 2 dry)")
    ap.add_argument("--wheels", default=str(REPO / ".gpu-wheels"), help="wheel folder to install offline first")
    ap.add_argument("--render", nargs="+", metavar="JSON", help="print the markdown of these calls' JSONs, merged")
    args = ap.parse_args(argv)
    if args.render:
        print(markdown(merge(args.render)))
        return 0
    if not args.out:
        ap.error("--out is required")
    check = Check(args)
    try:
        return check.run()
    finally:
        shutil.rmtree(check.scratch, ignore_errors=True)
        if check.models_root.parent != check.scratch:
            shutil.rmtree(check.models_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

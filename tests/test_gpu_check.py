"""bench/gpu_check.py (the prepared check for a GPU machine) and bench/gpu_wheels.py (what it carries there):
the dry run of every section on the CPU, so the check cannot rot between GPU runs, and its pieces - the
scheduler's budgets, stages and timeouts, the plan's simulated timeline and rerun line, the markdown, the
merge of two calls, the wheel folder's checks - and tests/test_cuda.py's memory bound at its GPU sizes."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aha.model import random_model

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check")
gpu_report = load("gpu_report")
gpu_wheels = load("gpu_wheels")


@pytest.mark.slow
def test_dry_run_runs_every_section_and_writes_json_log_and_table(tmp_path: Path):
    out = tmp_path / "out"
    # --wheels "": no install here (CI has no wheel folder); a generous budget: a loaded CI machine is slow.
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--wheels", "", "--budget", "600",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    s = result["sections"]
    assert set(s) == {"env", "prepare", "cuda_tests", "rollout", "step", "presets"}
    assert set(s["presets"]) == set(gpu_check.gpu_presets())
    statuses = {name: rec["status"] for name, rec in gpu_report.flat_sections(result)}
    assert set(statuses.values()) == {"ok"}, statuses
    assert s["env"]["result"]["versions"]["torch"] and s["env"]["result"]["cuda_available"] is False
    tests = s["cuda_tests"]["result"]
    assert tests["failed"] == 0 and tests["passed"] >= 7
    skipped = [t for t in tests["tests"] if t["outcome"] == "skipped"]  # only QLoRA's 4-bit part, after its LoRA run
    assert [t["name"] for t in skipped] == ["test_qlora_loads_4bit_rolls_out_and_updates"]
    assert "needs CUDA" in skipped[0]["message"]
    assert {"hf", "native"} <= set(s["rollout"]["result"]["engines"])
    assert s["rollout"]["result"]["fraction_of_floor"].startswith("needs CUDA")
    assert s["step"]["result"]["aha"]["step_time"] > 0
    for name, rec in s["presets"].items():
        steps = rec["result"]["steps"]
        assert [x["step"] for x in steps] == [1, 2] and all(x["step_time"] > 0 for x in steps), name
        assert rec["result"]["memory"]["peak_bytes"] > 0
    assert {rec["result"]["backend"] for rec in s["presets"].values()} == {"torch", "jax"}
    table = (out / "gpu_check.md").read_text()
    assert "| preset |" in table and "| engine |" in table and table.strip() in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "rerun: nothing (every section ran to its end)"
    assert "===== cuda_tests" in (out / "gpu_check.log").read_text()


def test_every_gpu_preset_has_a_random_architecture():
    presets = gpu_check.gpu_presets()
    assert {"rtx5090", "rtx4090", "gpu-16gb", "a100-h100", "countdown-gemma2", "tpu-v2-8", "tpu-v3-8"} <= set(presets)
    assert "cpu-demo" not in presets and "smoke" not in presets
    check = object.__new__(gpu_check.Check)
    for p in presets:
        arch = check.arch_of(p)
        assert arch in gpu_check.TINY, f"{p}: add its model to ARCH_OF/TINY so the check can draw random weights"


def check_for(tmp_path: Path, budget: float) -> "gpu_check.Check":
    args = argparse.Namespace(dry_run=True, budget=budget, out=str(tmp_path), only="", jobs=2, wheels="", simulate=False)
    return gpu_check.Check(args)


def sleeper(name: str, seconds: float, kind: str = "preset") -> "gpu_check.Job":
    cmd = [sys.executable, "-c", f"import time, json, sys; time.sleep({seconds}); open(sys.argv[1], 'w').write('{{}}')",
           "{dest}"]
    return gpu_check.Job(name, cmd, kind, parse=lambda j: json.loads(j.dest.read_text()))


def test_jobs_time_out_skip_when_the_budget_is_spent_and_say_what_ran_together(tmp_path: Path):
    # Generous margins, so a busy machine (a slow Python start, a slow stop) cannot change the outcome:
    # a 0.1 s job has 5 s; the step needs 28 of the 30 s budget, which the 5 s timeout has already spent.
    check = check_for(tmp_path, budget=30)
    check.limits = {"preset": (5.0, 0.0), "step": (30.0, 28.0)}
    check.run_jobs([sleeper("preset:a", 0.1), sleeper("preset:b", 120)], parallel=2)
    check.run_jobs([sleeper("step", 0.1, kind="step")])  # needs 28 s left: skipped
    s = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert s["presets"]["a"]["status"] == "ok" and s["presets"]["a"]["ran_with"] == ["preset:b"]
    # its own timeout, not the budget's end (the seconds in the text are the wall time until it stopped)
    assert s["presets"]["b"]["status"].startswith("timeout after") and "cut" not in s["presets"]["b"]["status"]
    assert s["step"]["status"] == "skipped: time budget" and s["step"]["rerun"] is True
    assert "rerun" not in s["presets"]["a"] and s["presets"]["b"]["rerun"] is False  # its own timeout: not a cut
    assert check.rerun_line() == f"rerun: python bench/gpu_check.py --only step --out {tmp_path}"


def test_a_stage_end_cuts_a_job_and_names_it_on_the_rerun_line_and_after_waits(tmp_path: Path):
    check = check_for(tmp_path, budget=60)
    check.limits = {"preset": (30.0, 0.0), "prepare": (30.0, 0.0)}
    first = sleeper("prepare", 0.5, kind="prepare")
    later = sleeper("preset:b", 0.1)
    later.after = "prepare"
    check.run_jobs([later, first, sleeper("preset:c", 30)], parallel=3, until=check.elapsed() + 10)
    s = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert s["presets"]["b"]["status"] == "ok" and "preset:c" in s["presets"]["b"]["ran_with"]
    assert later.start >= first.start + 0.4  # it waited for prepare, though listed first
    assert s["presets"]["c"]["status"].startswith("timeout after") and s["presets"]["c"]["rerun"] is True
    assert check.rerun_line().endswith(f"--only preset:c --out {tmp_path}")


def test_the_gpu_plan_simulated_fits_one_call_and_names_what_the_second_runs(tmp_path: Path):
    """The GPU plan at its assumed durations (ASSUMED_S, an H100), on a virtual clock: the first call measures in
    order of value and stops well inside the device call, its last line names what was left; the second
    call, on the warm machine, runs exactly that within the device time left (BENCHMARKS.md, "GPU")."""
    def call(*args: str) -> tuple[dict, list[str]]:
        r = subprocess.run([sys.executable, "bench/gpu_check.py", "--simulate", "--wheels", "", "--out",
                            str(tmp_path), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        lines = r.stdout.strip().splitlines()
        return json.loads((tmp_path / "gpu_check.json").read_text()), lines

    first, lines = call()
    status = {n: r["status"] for n, r in gpu_report.flat_sections(first)}
    for name in ("env", "prepare", "cuda_tests", "rollout", "step", "preset:rtx5090", "preset:gpu-16gb",
                 "preset:rtx4090"):
        assert status[name] == "ok", status
    left = [n for n, st in status.items() if st.startswith("skipped")]
    assert left == ["preset:a100-h100", "preset:countdown-gemma2", "preset:tpu-v3-8", "preset:tpu-v2-8"], status
    assert first["check"]["wall_s"] < 530 - 50  # the rest would not finish a preset: none started (472.5 s)
    assert lines[-1] == f"rerun: python bench/gpu_check.py --only {','.join(left)} --out {tmp_path}"
    second, lines = call("--only", ",".join(left), "--budget", "216")  # budget_left_s - 60
    assert second["sections"]["presets"]["a100-h100"]["status"] == "ok"  # H100: 50 GiB, then no room for a JAX one
    assert second["check"]["wall_s"] <= 216 and lines[-1].startswith("rerun: python bench/gpu_check.py --only ")
    assert lines[-1].endswith(f"--only {','.join(left[1:])} --out {tmp_path}")  # the rest, in the plan's order


def test_a_failing_section_records_its_log_and_the_next_still_runs(tmp_path: Path):
    check = check_for(tmp_path, budget=60)
    bad = gpu_check.Job("rollout", [sys.executable, "-c", "raise SystemExit('no GPU here')"], "rollout",
                        parse=lambda j: json.loads(j.dest.read_text()))
    check.run_jobs([bad, sleeper("step", 0.1, kind="step")])
    s = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert s["rollout"]["status"] == "failed (exit 1)" and "no GPU here" in s["rollout"]["log_tail"]
    assert s["step"]["status"] == "ok"


GPU_RESULT = {
    "check": {"command": "python bench/gpu_check.py --out /tmp/o", "started": "2026-12-01", "wall_s": 431.0},
    "sections": {
        "env": {"status": "ok", "seconds": 20.0, "result": {
            "device_name": "NVIDIA H200", "device_memory_bytes": 150 * 2**30, "nvidia_smi": "NVIDIA H200, 580.1",
            "versions": {"torch": "2.11.0", "transformers": "5.17.0", "trl": "1.16.0", "jax": "0.11.2"}}},
        "rollout": {"status": "ok", "seconds": 90.0, "result": {
            "model": "/dev/shm/x/random-qwen2.5-3b", "dtype": "bfloat16", "prompts": 16, "group": 8, "new_tokens": 512,
            "prompt_tokens": {"min": 120, "max": 540}, "ratio_vs_hf": {"hf": 1.0, "native": 9.5},
            "engines": {"hf": {"tokens_per_s": 1000.0}, "native": {"tokens_per_s": 9500.0}},
            "fraction_of_floor": {"hf": 0.06, "native": 0.55}, "memory": {"peak_bytes": 20 * 2**30}}},
        "step": {"status": "ok", "seconds": 150.0, "result": {
            "model": "/dev/shm/x/random-qwen2.5-3b", "finetune": "qlora", "prompts_per_step": 4, "num_generations": 8,
            "max_new_tokens": 512, "engine": "native", "ratio_vs_trl": 4.2, "peak_mem_ratio_vs_trl": 1.5,
            "ratio_by_phase": {"gen": 8.0, "score": 1.0, "update": 2.0},
            "aha": {"step_time": 5.0, "gen_time": 2.0, "update_time": 3.0, "peak_mem_bytes": 7 * 2**30},
            "trl": {"step_time": 21.0, "gen_time": 15.0, "update_time": 6.0, "peak_mem_bytes": 10 * 2**30,
                    "version": "1.16.0"}}},
        "presets": {
            "a100-h100": {"status": "ok", "seconds": 80.0, "ran_with": ["preset:rtx5090"], "result": {
                "arch": "qwen2.5-3b", "model": "x", "backend": "torch", "finetune": "lora", "lora_r": 64, "rows": 128,
                "max_new_tokens": 768, "prompt_tokens": {"mean": 265.0}, "notes": ["task arith (no network)"],
                "steps": [{"step": 1, "step_time": 30.0}, {"step": 2, "step_time": 25.0}],
                "memory": {"peak_bytes": 30 * 2**30, "peak_reserved_bytes": 33 * 2**30}}},
            "tpu-v2-8": {"status": "skipped: time budget", "seconds": 0.0, "rerun": "--only preset:tpu-v2-8"}}}}


def test_markdown_table_for_benchmarks_md():
    md = gpu_report.markdown(GPU_RESULT)
    assert md.startswith("### NVIDIA H200, 150.00 GiB")
    assert "| native | 9500 | 9.50x | 55.0% |" in md
    assert "| TRL / aha | **4.20x** | 8.00x | 2.00x | 1.50x |" in md and "| aha | 5.00 s |" in md
    assert "| a100-h100 | qwen2.5-3b (torch) | lora r64 | 128 x 768 | 265 | 30.0 s | 25.0 s | 30.00 GiB (33.00 GiB " \
           "reserved) | task arith (no network); ran alongside preset:rtx5090 |" in md
    assert "| preset:tpu-v2-8 | skipped: time budget | 0.0 | - |" in md


def test_render_merges_a_second_call_over_what_the_first_skipped(tmp_path: Path):
    second = {"check": {"command": "python bench/gpu_check.py --only preset:tpu-v2-8"}, "sections": {
        "env": {"status": "ok", "seconds": 5.0, "result": GPU_RESULT["sections"]["env"]["result"]},
        "rollout": {"status": "skipped: time budget", "seconds": 0.0},
        "presets": {"tpu-v2-8": {"status": "ok", "seconds": 60.0}}}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(GPU_RESULT))
    b.write_text(json.dumps(second))
    merged = gpu_report.merge([str(a), str(b)])
    assert merged["sections"]["presets"]["tpu-v2-8"]["status"] == "ok"
    assert merged["sections"]["rollout"]["status"] == "ok"  # the skip did not replace the measurement
    assert merged["check"]["command"] == GPU_RESULT["check"]["command"]


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)


def test_wheel_folder_check_finds_what_the_install_would_trip_on(tmp_path: Path):
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "torch", "pytest; extra == 'dev'", "win32api; sys_platform == 'win32'"])
    fake_wheel(tmp_path, "beta", "2.0", [])
    problems, sizes = gpu_wheels.check(tmp_path, on_machine={"torch"})
    assert problems == [] and len(sizes) == 2  # extras and other platforms' needs do not count
    fake_wheel(tmp_path, "alpha", "1.1", ["gamma"])
    fake_wheel(tmp_path, "torch", "9.0", [])
    problems, _ = gpu_wheels.check(tmp_path, on_machine={"torch"})
    assert any("alpha twice" in p for p in problems)
    assert any("torch must come from the machine" in p for p in problems)
    assert any("needs gamma" in p for p in problems)


def test_install_line_is_offline_without_dependencies_into_its_own_folder():
    cmd = gpu_wheels.install_command(REPO / "no-such-folder", "/tmp/site")
    assert {"--no-index", "--no-deps"} <= set(cmd) and cmd[cmd.index("--target") + 1] == "/tmp/site"
    assert "--upgrade" not in cmd and not any(c.startswith(("torch", "jax")) for c in cmd)


def test_gpu_mode_runs_the_sizes_the_issue_asks_for(tmp_path: Path):
    """The commands a GPU call runs (only the dry run executes here): what each section measures."""
    args = argparse.Namespace(dry_run=False, budget=0, out=str(tmp_path), only="", jobs=0, wheels="", simulate=False,
                              models=str(tmp_path / "models"))
    check = gpu_check.Check(args)
    try:
        check.models = {"qwen2.5-3b": "/m/qwen", "gemma2-2b": "/m/gemma"}
        rollout = " ".join(check.job_rollout().cmd)
        assert "--model /m/qwen --device cuda --dtype bfloat16 --prompts 16 --group 8 --new-tokens 512" in rollout
        step = check.step_job(vs_trl=True).cmd
        assert step[2:4] == ["-c", "rtx5090"] and "--vs-trl" in step and "rollout.engine=native" in step
        assert not any(x.startswith(("finetune=", "device=")) for x in step)  # the preset's QLoRA, on CUDA
        for name in gpu_check.gpu_presets():
            cmd = check.job_preset(name).cmd()  # built at its start, once prepare saved the weights
            assert not any(x.startswith(("device=", "finetune=", "prompts_per_step=", "rollout.")) for x in cmd)
            assert "max_steps=2" in cmd and any(x.startswith("model=/m/") for x in cmd)
            assert check.job_preset(name).kind == ("preset-jax" if name.startswith("tpu") else "preset")
        assert "-m" in check.job_cuda_tests().cmd and "tests/test_cuda.py" in check.job_cuda_tests().cmd
        small = [p for p in gpu_check.gpu_presets() if check.small(p)]
        assert small == ["rtx5090", "gpu-16gb", "rtx4090"]  # beside the tests, the reference setup first
        stage1 = [check.job_prepare(["qwen2.5-3b"]), check.job_cuda_tests()] + [check.job_preset(p) for p in small]
        assert sum(j.gib for j in stage1) <= 0.8 * 79.6  # an H100 holds all of stage 1 at once
        assert check.budget == 530 and check.models_root == tmp_path / "models"  # kept for a second call
        assert sum(gpu_check.LIMITS[k][0] for k in ("env", "cuda_tests", "rollout", "step")) <= check.budget
        assert check.env["TORCHINDUCTOR_CACHE_DIR"].startswith(str(tmp_path / "models"))
    finally:
        import shutil

        shutil.rmtree(check.scratch, ignore_errors=True)


# ---------------------------------------------------------------------------- the CUDA memory bound, rehearsed

class MetaPeak(TorchDispatchMode):
    """Peak bytes of the storages that ops create inside the block, on the meta device (shapes, no data):
    each new output storage counts from its op until Python frees it, as torch's CUDA allocator counts it
    (less its 512-byte rounding). `keep`: tensors that exist before the block (their views are not new).
    The one data-dependent question a padded batch asks (transformers: "is the padding mask all ones?")
    is answered no, as on the GPU; any other `.item()` fails the rehearsal."""

    def __init__(self, keep=()):
        super().__init__()
        self.old = {t.untyped_storage()._cdata for t in keep}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            assert args[0].dtype == torch.bool and args[0].dim() == 0, f"a data-dependent {func} on {args[0]}"
            return False
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.old and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def test_cuda_logprob_memory_bound_holds_at_the_gpu_sizes():
    """tests/test_cuda.py's memory assertion, at its GPU sizes (Qwen2.5-0.5B, 4 x 512 tokens, vocab 151936),
    on the meta device: the same three passes, every allocation counted, in seconds and without the 10 GB
    the real tensors would take. If this fails, the CUDA test would fail on the GPU for the same reason."""
    test_cuda = load_test_cuda()
    with torch.device("meta"):
        ref, _ = random_model("qwen2.5-0.5b", torch.float32)
    bf16 = copy.deepcopy(ref).to(torch.bfloat16)
    rows, n = test_cuda.LOGPROB_ROWS, test_cuda.LOGPROB_PROMPT + test_cuda.LOGPROB_COMPLETION
    ids = torch.zeros(rows, n, dtype=torch.long, device="meta")
    mask = torch.ones_like(ids)
    res = test_cuda.logprob_passes(ref, bf16, ids, mask, test_cuda.LOGPROB_COMPLETION, MetaPeak)
    ok, text = test_cuda.head_saving_ok(res, rows, test_cuda.LOGPROB_COMPLETION, ref.config.vocab_size)
    assert ok, text
    # The tracker counts what it should: the chunked pass's peak holds at least the bf16 gradients it made
    # (every weight trains) and the full-logits pass at least its bf16 [B, T, vocab] logits on top.
    grads = sum(p.numel() * 2 for p in bf16.parameters())
    assert grads < res["chunked_bytes"] < res["naive_bytes"] - rows * n * ref.config.vocab_size * 2, text


def load_test_cuda():
    """tests/test_cuda.py as a module (not collected again: its tests run only under -m cuda)."""
    spec = importlib.util.spec_from_file_location("aha_test_cuda", REPO / "tests" / "test_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

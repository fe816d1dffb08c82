"""Never lose or poison a run (issue 14), one section per kind of fault: atomic rewrites of run
files, the non-finite guard, empty inputs, task options, file-system errors, --overwrite, one
trainer per run directory, cheap checks first; then signals, `aha play` and `aha eval` progress.

A refused command prints one line, exits 2 and leaves the disk as it was (`tree` before == after).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import aha.train
from aha import fsio, guards, rundir
from aha.cli import main
from aha.config import load_config
from aha.log import RunLogger, read_jsonl
from aha.tasks.base import Example, Task

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under `root` with a hash of its bytes: the disk's state."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], *needles: str, after_steps: bool = False) -> str:
    """Run `aha ARGV` in-process: it must exit 2 with one line on stderr containing `needles`
    (`after_steps`: a run that stopped, so its progress lines come first; the error is the last)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert (after_steps or len(lines) == 1) and lines[-1].startswith("aha: error: "), err
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, **kw)


SMOKE = ["train", "-c", "smoke", "tensorboard=false", "probe_every=0", "rollout.max_new_tokens=8"]


# ---------------------------------------------------------------------------- test tasks

def letters(completion: str, ex: Example) -> float:
    return sum(c.isalpha() for c in completion) / max(len(completion), 1)


def poisoned(completion: str, ex: Example) -> float:
    """NaN for 3 of the 16 prompts, inf for 2: only steps drawing those are poisoned. 6 steps of 2
    prompts draw 12 of the 16, so at least one step is poisoned and at least one is clean."""
    i = int(ex.id.rsplit("/", 1)[1])
    return math.nan if i < 3 else math.inf if i < 5 else 0.0


def always_nan(completion: str, ex: Example) -> float:
    return math.nan


class RewardTask(Task):
    """16 train prompts; rewards as given (by default one with a signal for a random model)."""

    name = "rtask"

    def __init__(self, **rewards):
        self.rewards = {"letters": (letters, 1.0), **{k: (fn, 1.0) for k, fn in rewards.items()}}

    def examples(self, split: str):
        n = 16 if split == "train" else 2
        return [Example(id=f"r/{split}/{i}", prompt=f"{split} prompt {i}:", target=None) for i in range(n)]

    def is_correct(self, completion: str, ex: Example) -> bool:
        return False

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return False


def use_task(monkeypatch, task: Task) -> None:
    monkeypatch.setattr(aha.train, "get_task", lambda name, **o: task)


def cfg_for(out: Path, *extra: str):
    return load_config("smoke", [f"output_dir={out}", "tensorboard=false", "probe_every=0",
                                 "rollout.max_new_tokens=8", "deterministic=true", *extra])


def all_checkpoint_values_finite(run: Path) -> bool:
    from safetensors.torch import load_file

    ckpts = list((run / "checkpoints").glob("step-*"))
    assert ckpts
    for c in ckpts:
        for t in load_file(c / "adapter_model.safetensors").values():
            if not torch.isfinite(t).all():
                return False
        state = torch.load(c / "trainer_state.pt", weights_only=True)
        for st in state["optimizer"]["state"].values():
            if not all(torch.isfinite(v).all() for v in st.values() if torch.is_tensor(v)):
                return False
    return True


# ---------------------------------------------------------------------------- 1. atomic rewrites

def big_run(run: Path, steps: int = 400, per_step: int = 40) -> None:
    """A run directory with long logs (about 5 MB of completions) and no checkpoint."""
    run.mkdir(parents=True)
    pad = "x" * 250
    with (run / "completions.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            for i in range(per_step):
                f.write(json.dumps({"step": s, "prompt_id": f"p{i}", "completion": pad, "reward": 0.5}) + "\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1}) + "\n"
                                               for s in range(1, steps + 1)))
    (run / "eval_completions.jsonl").write_text("")


def test_an_interrupted_resume_trim_loses_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    big_run(run)
    before = tree(run)
    real = os.replace
    for fault in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        def boom(*a, fault=fault):
            raise fault
        monkeypatch.setattr(fsio.os, "replace", boom)  # between writing the new file and swapping it in
        with pytest.raises(type(fault)):
            RunLogger(run, resume_step=100)
        assert tree(run) == before  # the old logs whole, no temporary file left
    monkeypatch.setattr(fsio.os, "replace", real)
    RunLogger(run, resume_step=100)
    rows = read_jsonl(run / "completions.jsonl")
    assert len(rows) == 100 * 40 and rows[-1]["step"] == 100


def test_killing_a_resume_mid_trim_leaves_old_or_new_logs_whole(tmp_path):
    """kill -9 at several moments of the trim of a large log: each time the file is the old one or
    the trimmed one, never truncated; the next start removes the temporary file."""
    run = tmp_path / "run"
    big_run(run, steps=1200)
    old = (run / "completions.jsonl").read_bytes()
    trimmed = b"".join(line for line in old.splitlines(keepends=True) if json.loads(line)["step"] <= 600)
    code = f"from aha.log import RunLogger; RunLogger({str(run)!r}, resume_step=600)"
    for delay in (0.15, 0.3, 0.45, 0.6, 0.8):
        p = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        p.kill()
        p.wait()
        assert (run / "completions.jsonl").read_bytes() in (old, trimmed)
        if (run / "completions.jsonl").read_bytes() == trimmed:
            break
    fsio.clean_stale(run)
    assert not [p for p in run.iterdir() if fsio.TMP_MARK in p.name]


def test_config_yaml_and_reports_are_replaced_atomically(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    monkeypatch.setattr(fsio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        fsio.atomic_write_text(target, "new: 2\n")
    assert target.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


# ---------------------------------------------------------------------------- 2. non-finite values

def test_nan_and_inf_rewards_skip_the_update_and_never_reach_a_checkpoint(tmp_path, monkeypatch, capsys):
    use_task(monkeypatch, RewardTask(flaky=poisoned))
    run = aha.train.train(cfg_for(tmp_path / "nan", "max_steps=6", "save_every=1", "keep_last=10",
                                  "max_nonfinite_steps=0"))
    err = capsys.readouterr().err
    rows = read_jsonl(run / "metrics.jsonl")
    skipped = [r["nonfinite_skipped"] for r in rows]
    assert 1.0 in skipped and 0.0 in skipped  # poisoned steps skipped, clean ones trained
    assert err.count("aha: warning: step") == sum(skipped)
    assert "non-finite reward 'flaky'" in err and "skipped this optimizer step" in err
    assert all(r["grad_norm"] is None for r in rows if r["nonfinite_skipped"])
    assert any(r["grad_norm"] and r["grad_norm"] > 0 for r in rows if not r["nonfinite_skipped"])
    assert all_checkpoint_values_finite(run)


def test_k_non_finite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch, capsys):
    use_task(monkeypatch, RewardTask(broken=always_nan))
    out = tmp_path / "stop"
    line = refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=9", "save_every=1", "max_nonfinite_steps=3"],
                   "3 steps in a row", "reward 'broken'", "max_nonfinite_steps", after_steps=True)
    assert "every checkpoint is finite" in line
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert all_checkpoint_values_finite(out)  # steps 1-2 were saved, unchanged weights


def test_an_overflowing_update_is_rolled_back(tmp_path, monkeypatch, capsys):
    """lr=1e30 puts weights near 1e30 (finite) after one step: the next forward pass overflows and,
    unguarded, the sampler fails. Each step is undone instead, warned and counted."""
    use_task(monkeypatch, RewardTask())
    run = aha.train.train(cfg_for(tmp_path / "lr", "lr=1e30", "max_steps=2", "save_every=1",
                                  "max_nonfinite_steps=0"))
    assert "overflowed the weights" in capsys.readouterr().err
    assert [r["nonfinite_skipped"] for r in read_jsonl(run / "metrics.jsonl")] == [1.0, 1.0]
    assert all_checkpoint_values_finite(run)


def test_guard_pieces():
    scores = [(1.0, {"a": 1.0, "b": 0.0}), (math.nan, {"a": 1.0, "b": math.nan}), (math.inf, {"a": math.inf, "b": 0})]
    assert guards.nonfinite_inputs(scores, torch.zeros(3)) == ("reward 'b' in 1 of 3 completions, "
                                                               "reward 'a' in 1 of 3 completions")
    assert guards.nonfinite_inputs([(1e38, {}), (-1e38, {})], torch.tensor([math.inf, 0])).startswith("advantages")
    assert guards.nonfinite_inputs(scores[:1], torch.zeros(1)) is None
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.tensor([1.0, math.inf, 0.0])
    assert guards.guarded_step(opt, [w], torch.tensor(math.inf)) == "loss or gradient"
    assert torch.equal(w.detach(), torch.ones(3)) and not opt.state
    g = guards.NonFiniteGuard(2, verbose=False)
    assert g.record(1, "x") == 1.0 and g.record(2, None) == 0.0 and g.record(3, "x") == 1.0
    with pytest.raises(guards.NonFiniteError, match="2 steps in a row"):
        g.record(4, "x")


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path, monkeypatch):
    from aha import checkpoint
    from aha.model import load_policy

    pol = load_policy("random:tiny-qwen2", device="cpu")
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    with torch.no_grad():
        next(p for p in pol.model.parameters() if p.requires_grad)[0] = math.nan
    with pytest.raises(guards.NonFiniteError, match="non-finite"):
        checkpoint.save(tmp_path, 1, pol.model, pol.tokenizer, opt, sched, {"epoch": 0, "cursor": 0}, "", 3)
    assert not (tmp_path / "checkpoints").exists()
    # and one written before this guard existed is refused on resume, naming it
    monkeypatch.setattr(guards, "require_finite", lambda *a: None)
    path = checkpoint.save(tmp_path, 1, pol.model, pol.tokenizer, opt, sched, {"epoch": 0, "cursor": 0}, "x: 1", 3)
    with pytest.raises(checkpoint.CheckpointError, match="step-1 holds non-finite weights"):
        checkpoint.load(path, pol.model, opt, sched)


# ---------------------------------------------------------------------------- 3. empty inputs

def test_an_empty_data_file_is_refused_before_overwrite_touches_the_old_run(tmp_path, capsys):
    run = tmp_path / "run"
    big_run(run, steps=5)
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    before = tree(run)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    refused(capsys, [*SMOKE, f"output_dir={run}", f"task_options.data={empty}", "--overwrite"],
            "0 train examples", str(empty))
    assert tree(run) == before


@pytest.mark.parametrize("option, split", [("n_train=0", "train"), ("n_test=0", "test")])
def test_a_split_with_no_examples_is_refused_at_once(tmp_path, capsys, option, split):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    refused(capsys, [*SMOKE, f"output_dir={out}", f"task_options.{option}", "eval_every=1"], f"0 {split} examples")
    assert time.perf_counter() - t0 < 30 and not out.exists()


def test_eval_on_an_empty_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    refused(capsys, ["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--data", str(empty),
                     "--json", str(tmp_path / "out.json")], "0 test examples")
    assert sorted(os.listdir(tmp_path)) == ["test.jsonl"]


# ---------------------------------------------------------------------------- 4. task options

def test_a_misspelt_task_option_is_one_line_listing_the_known_ones(tmp_path, capsys):
    out = tmp_path / "run"
    refused(capsys, [*SMOKE, f"output_dir={out}", "task_options.n_trian=5"],
            "'n_trian'", "did you mean 'n_train'", "n_test", "shaping")
    assert not out.exists()
    refused(capsys, ["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--task-option", "templat=chat"],
            "'templat'", "template")
    refused(capsys, [*SMOKE, f"output_dir={out}", "task_options.n_train=many"], "task_options.n_train", "integer")
    assert not out.exists()


def test_switching_task_on_the_command_line_drops_the_presets_task_options(capsys):
    cfg = load_config("smoke", ["task=gsm8k"])
    assert cfg.task_options == {}
    assert "task_options (n_train, n_test, shaping) are dropped" in capsys.readouterr().err
    cfg = load_config("smoke", ["task_options.template=chat", "task=gsm8k"])  # options given here are kept
    assert cfg.task_options == {"template": "chat"}
    assert load_config("smoke", ["task=countdown"]).task_options["n_train"] == 64  # same task: kept


# ---------------------------------------------------------------------------- 5. file-system errors

def test_a_file_where_the_output_directory_should_be(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    refused(capsys, [*SMOKE, f"output_dir={blocker}/run"], str(blocker), "a file stands where a directory")
    assert blocker.read_text() == "mine" and os.listdir(tmp_path) == ["file"]


def test_a_read_only_output_directory(tmp_path, capsys, monkeypatch):
    """A read-only run directory: simulated at the os level (root ignores chmod), then for real
    with a read-only bind mount where this machine allows one."""
    run = tmp_path / "ro"
    run.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    refused(capsys, [*SMOKE, f"output_dir={run}"], str(run), "read-only", "writable output directory")
    monkeypatch.setattr(os, "open", real_open)
    assert os.listdir(run) == []
    if subprocess.run(["mount", "--bind", "-o", "ro", str(run), str(run)], capture_output=True).returncode:
        return  # no mount privileges here: the simulation above stands
    try:
        r = cli(*SMOKE, f"output_dir={run}/sub")
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert "Read-only file system" in r.stderr and f"{run}/sub" in r.stderr
    finally:
        subprocess.run(["umount", str(run)], check=True)


def test_a_full_disk_during_a_checkpoint_leaves_no_temporary_directory(tmp_path, capsys, monkeypatch):
    import aha.checkpoint

    use_task(monkeypatch, RewardTask())
    out = tmp_path / "run"

    def full(obj, path, *a, **kw):
        raise RuntimeError(f"[enforce fail at inline_container.cc:659] . PytorchStreamWriter failed writing file "
                           f"data/0: file write failed ({path})")

    monkeypatch.setattr(aha.checkpoint.torch, "save", full)
    for _ in range(2):  # a retry leaves nothing behind either
        refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=1", "--overwrite"],
                "could not write checkpoint step-1", "free disk space", after_steps=True)
        assert os.listdir(out / "checkpoints") == []
    monkeypatch.setattr(aha.checkpoint.torch, "save", lambda obj, path, *a, **kw: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device", str(path))))
    refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=1", "--overwrite"], "No space left on device",
            after_steps=True)
    assert os.listdir(out / "checkpoints") == []


def test_stale_temporary_files_of_killed_writes_are_removed_at_the_next_start(tmp_path, monkeypatch):
    use_task(monkeypatch, RewardTask())
    run = aha.train.train(cfg_for(tmp_path / "run", "max_steps=1"))
    litter = [run / "checkpoints" / ".tmp-step-7-12345", run / f"metrics.jsonl{fsio.TMP_MARK}999",
              run / f"{fsio.TRASH_PREFIX}step-3-999"]
    litter[0].mkdir()
    litter[1].write_text("half")
    litter[2].mkdir()
    aha.train.train(cfg_for(run, "max_steps=2"), resume="latest")
    assert not any(p.exists() for p in litter)


# ---------------------------------------------------------------------------- 6. --overwrite

def test_overwrite_replaces_an_earlier_run_with_more_steps_whole(tmp_path, monkeypatch, capsys):
    use_task(monkeypatch, RewardTask())
    run = aha.train.train(cfg_for(tmp_path / "run", "max_steps=5", "save_every=1", "keep_last=2",
                                  "tensorboard=true"))
    (run / "report").mkdir()
    (run / "report" / "report.md").write_text("old report")
    (run / "notes.txt").write_text("the user's own file")
    aha.train.train(cfg_for(run, "max_steps=2", "save_every=1", "keep_last=3", "tensorboard=true"), overwrite=True)
    assert "kept notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert len(list((run / "tb").iterdir())) == 1 and not (run / "report").exists()
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    aha.train.train(cfg_for(run, "max_steps=3", "save_every=1", "keep_last=3"), resume="latest")
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_an_interrupted_overwrite_never_mixes_two_runs(tmp_path, monkeypatch):
    use_task(monkeypatch, RewardTask())
    run = aha.train.train(cfg_for(tmp_path / "run", "max_steps=3", "save_every=1"))
    real, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(rundir.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        aha.train.train(cfg_for(run, "max_steps=2"), overwrite=True)
    monkeypatch.setattr(rundir.os, "replace", real)
    # the logs and checkpoints go last: what is left still reads as the old run, whole
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert (run / "checkpoints" / "step-3" / "meta.json").exists()
    with pytest.raises(Exception, match="already holds a run"):
        aha.train.train(cfg_for(run, "max_steps=2"))
    aha.train.train(cfg_for(run, "max_steps=2"), overwrite=True)  # finishes the job
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert not [p for p in run.iterdir() if p.name.startswith(fsio.TRASH_PREFIX)]


# ---------------------------------------------------------------------------- 7. one trainer per run directory

def test_two_trainers_started_at_once(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "aha", *SMOKE, f"output_dir={out}", "max_steps=25", "save_every=5"]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1], p.pid) for p in procs]
    (ok,) = [r for r in results if r[0] == 0]
    (loser,) = [r for r in results if r[0] != 0]
    assert loser[0] == 2 and loser[1].count("\n") == 1, loser[1]
    assert f"in use by another trainer (pid {ok[2]})" in loser[1]
    r = cli(*SMOKE, f"output_dir={out}", "--resume", "--overwrite")
    assert r.returncode == 2 and "pass one of them" in r.stderr
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 26))
    assert not (out / ".lock").exists()


def test_a_crashed_trainer_does_not_leave_the_run_directory_locked(tmp_path):
    run = tmp_path / "run"
    code = (f"import time; from aha.rundir import RunLock; RunLock({str(run)!r}).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.RunDirError, match=f"pid {p.pid}"):
        rundir.RunLock(run).acquire()
    p.kill()  # kill -9: no cleanup ran; the kernel dropped the lock
    p.wait()
    with rundir.RunLock(run):
        assert (run / ".lock").read_text().strip() == str(os.getpid())
    assert not (run / ".lock").exists()


# ---------------------------------------------------------------------------- 8. cheapest checks first

def test_a_gpu_preset_on_a_cpu_only_machine_fails_within_seconds(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    r = cli("train", "-c", "rtx5090", f"output_dir={out}")
    assert time.perf_counter() - t0 < 20
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "finetune=qlora needs a CUDA GPU" in r.stderr and not out.exists()


@pytest.mark.parametrize("override, message", [
    ("device=cuda", "no CUDA GPU"),
    ("optimizer=adamw8bit", "optimizer=adamw8bit needs"),
    ("model=/no/such/model.gguf", "does not exist"),
    ("model=random:no-such-arch", "no-such-arch"),
])
def test_device_and_extras_are_checked_before_anything_slow(tmp_path, capsys, monkeypatch, override, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    def no_task(*a, **kw):
        raise AssertionError("the task (data) was reached before the device check")

    monkeypatch.setattr(aha.train, "get_task", no_task)
    refused(capsys, [*SMOKE, f"output_dir={tmp_path / 'r'}", override], message)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- signals

def test_sigterm_and_ctrl_c_save_a_checkpoint_and_say_where_to_resume(tmp_path, monkeypatch, capsys):
    for sig in (signal.SIGTERM, signal.SIGINT):
        calls = []

        def signalling(completion: str, ex: Example) -> float:
            calls.append(1)
            if len(calls) == 9:  # during step 2's scoring (8 completions a step)
                os.kill(os.getpid(), sig)
            return 0.0

        use_task(monkeypatch, RewardTask(sig=signalling))
        out = tmp_path / sig.name
        assert main([*SMOKE, f"output_dir={out}", "max_steps=9", "save_every=0"]) == 128 + sig
        err = capsys.readouterr().err
        assert f"{sig.name} received: finishing this step" in err
        assert f"stopped by {sig.name} after step 2; checkpoint saved to {out}/checkpoints/step-2" in err
        assert "continue from the last checkpoint with: aha train -c smoke" in err and "--resume" in err
        assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored
        assert main([*SMOKE, f"output_dir={out}", "max_steps=3", "save_every=0", "--resume"]) == 0
        assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_a_second_ctrl_c_stops_at_once_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    calls = []

    def twice(completion: str, ex: Example) -> float:
        calls.append(1)
        if len(calls) == 9:  # step 2: the first Ctrl-C asks for a clean stop, the second will not wait
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return 0.0

    use_task(monkeypatch, RewardTask(sig=twice))
    out = tmp_path / "run"
    assert main([*SMOKE, f"output_dir={out}", "max_steps=9", "save_every=1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aha: interrupted; continue from the last checkpoint with: aha train -c smoke")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"] and not (out / ".lock").exists()


def test_sigterm_to_a_training_process(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "aha", *SMOKE, f"output_dir={out}", "max_steps=200",
                          "save_every=0"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists()
                                         else []) < 2:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, err
    step = read_jsonl(out / "metrics.jsonl")[-1]["step"]
    assert f"checkpoint saved to {out}/checkpoints/step-{step}" in err and "--resume" in err
    assert (out / "checkpoints" / f"step-{step}" / "meta.json").exists()


# ---------------------------------------------------------------------------- play and eval

def test_play_stops_at_the_end_of_the_assistants_turn():
    from aha.play import stop_at

    assert stop_at("a\n</think>\n<answer>\n5\n</answer>\nUser: and 6?") == len("a\n</think>\n<answer>\n5\n</answer>")
    assert stop_at("it is 5.\nUser: what about") == len("it is 5.")
    assert stop_at("<answer>5</answer>", answer_end=False) is None and stop_at("no end yet") is None


def test_play_answers_differ_across_turns_and_leak_no_library_warning():
    cmd = [sys.executable, "-m", "aha", "play", "--model", "random:tiny-qwen2", "--raw", "--temperature", "1",
           "--max-new-tokens", "12", "--jsonl"]
    r = subprocess.run(cmd, input="hello\nhello\nhello\n", capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line)["completion"] for line in r.stdout.splitlines()]
    assert len(answers) == 3 and len(set(answers)) > 1  # one sampling stream, not re-seeded per answer
    assert "deprecated" not in r.stderr and "Warning" not in r.stderr
    again = subprocess.run(cmd, input="hello\nhello\nhello\n", capture_output=True, text=True, timeout=300, cwd=REPO)
    assert [json.loads(line)["completion"] for line in again.stdout.splitlines()] == answers  # --seed replays


def test_eval_prints_progress_lines_without_a_terminal(capsys, monkeypatch):
    from aha import eval as aha_eval
    from aha.model import load_policy

    monkeypatch.setattr(aha_eval.ProgressLines, "every", 0.0)
    pol = load_policy("random:tiny-qwen2", device="cpu")
    aha_eval.evaluate(pol.model, pol.tokenizer, RewardTask(), split="train", limit=6, batch_size=2,
                      max_new_tokens=4, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aha eval:")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"]

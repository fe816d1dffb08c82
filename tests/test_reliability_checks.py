"""Never lose or poison a run (issue 14), part 2: task options, file-system errors, --overwrite, one
trainer per run directory, cheapest checks first. A refused command prints one line, exits 2 and
leaves the disk as it was (`tree` before == after)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

import aha.train
from aha import fsio, rundir
from aha.config import load_config
from aha.log import read_jsonl
from reliability_kit import REPO, refused, cli, SMOKE, RewardTask, use_task, cfg_for


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

def test_a_gpu_preset_on_a_cpu_only_machine_fails_within_seconds(tmp_path, capsys, monkeypatch):
    """Refused before any data or model is touched (asserted by making both fail, not by a clock:
    a shared machine's wall time says nothing)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    monkeypatch.setattr(aha.train, "get_task", lambda *a, **k: pytest.fail("the task's data was loaded"))
    monkeypatch.setattr(aha.train, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    refused(capsys, ["train", "-c", "rtx5090", f"output_dir={out}"], "finetune=qlora needs a CUDA GPU")
    assert not out.exists()


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


def test_a_full_disk_at_the_first_checkpoint_does_not_advise_resume(tmp_path, capsys, monkeypatch):
    """torch says "file write failed" for a full disk: the line says "no space", and at the first
    checkpoint the fix is to start again (there is nothing to --resume)."""
    import shutil as shutil_mod

    import aha.checkpoint
    import aha.ckptdir

    use_task(monkeypatch, RewardTask())
    out = tmp_path / "run"
    monkeypatch.setattr(aha.checkpoint.torch, "save", lambda obj, path, *a, **kw: (_ for _ in ()).throw(
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")))
    monkeypatch.setattr(aha.ckptdir.shutil, "disk_usage", lambda p: shutil_mod._ntuple_diskusage(10**9, 10**9, 4096))
    line = refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=1"], "no space left on the device: 0 MiB free",
                   "no checkpoint was saved yet, so there is nothing to --resume", after_steps=True)
    assert "then continue" not in line


def test_a_failed_meta_json_write_names_its_path(tmp_path, capsys, monkeypatch):
    import aha.ckptdir

    use_task(monkeypatch, RewardTask())
    out = tmp_path / "run"
    real = aha.ckptdir.Path.write_text

    def write_text(self, *a, **k):
        if self.name == "meta.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)
    monkeypatch.setattr(aha.ckptdir.Path, "write_text", write_text)
    line = refused(capsys, [*SMOKE, f"output_dir={out}", "max_steps=2", "save_every=1"], "meta.json: could not write "
                   "checkpoint step-1", "No space left on device", after_steps=True)
    assert str(out / "checkpoints") in line and os.listdir(out / "checkpoints") == []

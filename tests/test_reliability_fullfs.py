"""A real full file system (issue 23): the other full-disk tests raise ENOSPC by hand; this one mounts a
small tmpfs, trains into it until a checkpoint write truly runs out of space, and checks the guarantee -
exit != 0, one line saying "no space" and naming the path, no traceback, and nothing that was on disk
before lost or torn (the earlier checkpoint still loads and evaluates).

Needs root to mount (CI runs as root): skipped only when not root; as root, a refused mount fails the
test rather than passing it silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from aha.log import read_jsonl
from reliability_kit import SMOKE, cli, tree

SIZE = "3M"  # a smoke run (one checkpoint) is ~0.46 MB: the first run fits with room to spare
# Free bytes left after the filler: room for a few log lines, not for a ~0.45 MB checkpoint. The three levels
# run out in different writers - the adapter's safetensors (~134 kB), the tokenizer (Rust: a bare Exception),
# torch.save of the trainer state (~295 kB) - each of which words a full disk its own way.
LEFT_FREE = (64 * 1024, 160 * 1024, 400 * 1024)


@pytest.fixture
def small_fs(tmp_path):
    """A SIZE tmpfs mounted under tmp_path, unmounted afterwards whatever happens."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (CI runs as root)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"running as root but `mount -t tmpfs` failed ({done.stderr.strip() or done.returncode}): this "
                    "machine cannot run the real full-disk test; give the container CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(mnt, leave: int) -> None:
    """Take all but `leave` bytes of the file system with one file."""
    free = shutil.disk_usage(mnt).free
    assert free > leave, f"{free} bytes free before filling: the first run took more than expected"
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * (free - leave))


@pytest.mark.slow
@pytest.mark.parametrize("left_free", LEFT_FREE)
def test_a_checkpoint_that_runs_out_of_a_real_disk_is_one_line_and_loses_nothing(small_fs, left_free):
    run = small_fs / "run"
    first = cli(*SMOKE, f"output_dir={run}", "max_steps=2", "save_every=2")
    assert first.returncode == 0, first.stderr
    assert (run / "checkpoints" / "step-2" / "meta.json").is_file()
    fill(small_fs, left_free)
    before = tree(small_fs)
    old_bytes = {str(p.relative_to(small_fs)): p.read_bytes() for p in run.glob("*.jsonl")}

    # resume: steps 3 and 4 train and log, the step-4 checkpoint meets the full disk
    second = cli(*SMOKE, f"output_dir={run}", "max_steps=4", "save_every=2", "--resume")
    assert second.returncode != 0, second.stderr
    assert "resumed from" in second.stderr and "Traceback" not in second.stderr, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("aha: error:")]
    assert len(errors) == 1 and errors[0] == second.stderr.strip().splitlines()[-1], second.stderr
    assert "no space" in errors[0].lower() and str(run / "checkpoints") in errors[0], errors[0]
    print(errors[0])
    assert "step-4" in errors[0] and "--resume" in errors[0], errors[0]

    # nothing that was there is lost or torn; the failed checkpoint left nothing half-written
    after = tree(small_fs)
    changed = {k for k in before if after.get(k) != before[k]}
    appended = {"run/metrics.jsonl", "run/completions.jsonl", "run/eval_completions.jsonl"}
    assert changed <= {*appended, "run/config.yaml"}, changed  # config.yaml: rewritten whole with max_steps=4
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 4
    for name in appended & set(before):
        assert (small_fs / name).read_bytes().startswith(old_bytes[name]), name
    assert {k for k in after if k.startswith("run/checkpoints/")} == \
        {k for k in before if k.startswith("run/checkpoints/")}
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")][:2] == [1, 2]
    # the earlier checkpoint still loads: evaluated, the results to stdout (the disk is full)
    evaluated = cli("eval", "--checkpoint", str(run / "checkpoints" / "step-2"), "--limit", "2", "--json", "-")
    assert evaluated.returncode == 0, evaluated.stderr
    assert tree(small_fs) == after  # eval wrote nothing


def test_the_tokenizers_bare_exception_for_a_full_disk_is_a_checkpoint_error(tmp_path):
    """Without root too: tokenizers (Rust) raises a plain Exception for an I/O error, which ended the run in a
    traceback; it is the one-line write failure now, and the temporary directory is gone. Other bare
    Exceptions (a bug, not the disk) still propagate as they are."""
    from aha.ckptdir import writing
    from aha.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"could not write checkpoint step-1 under .*No space left on device"):
        with writing(tmp_path, 1):
            raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - the library's own type
    with pytest.raises(Exception, match="^a bug$") as info:
        with writing(tmp_path, 1):
            raise Exception("a bug")  # noqa: TRY002
    assert type(info.value) is Exception
    assert list((tmp_path / "checkpoints").iterdir()) == []

import json
import subprocess
import sys


def aha(*args):
    return subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, timeout=120)


def test_countdown_generate_and_solve(tmp_path):
    out = tmp_path / "p.jsonl"
    r = aha("countdown", "generate", "--n", "20", "--seed", "7", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all({"nums", "target", "solution"} <= row.keys() for row in rows)
    again = aha("countdown", "generate", "--n", "20", "--seed", "7")
    assert [json.loads(line) for line in again.stdout.splitlines()] == rows
    r = aha("countdown", "solve", "3", "7", "25", "50", "--target", "75")
    assert r.returncode == 0 and r.stdout.strip().endswith("= 75")
    r = aha("countdown", "solve", "1", "1", "--target", "97")
    assert r.returncode == 1 and "no solution" in r.stdout


def test_train_without_config_says_which_preset_and_why(tmp_path):
    # no CUDA here: the CPU demo is chosen; a bad override stops it before any model is loaded
    r = aha("train", f"output_dir={tmp_path}", "max_stepz=1")
    assert "cpu-demo" in r.stderr and "no CUDA device" in r.stderr
    assert r.returncode == 2 and "max_stepz" in r.stderr


def test_help_lists_every_command():
    r = aha("--help")
    for cmd in ("train", "eval", "play", "report", "countdown"):
        assert cmd in r.stdout


def test_greedy_training_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    for setting in ("rollout.temperature=0", "rollout.top_k=1", "rollout.top_p=0"):
        r = aha("train", "-c", "smoke", f"output_dir={out}", setting)
        assert r.returncode == 2 and setting in r.stderr and "greedy" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()

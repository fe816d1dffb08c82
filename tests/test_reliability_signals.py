"""Never lose or poison a run (issue 14), part 3: SIGTERM and Ctrl-C save a checkpoint and say how
to resume; `aha play` stops at the end of the turn; `aha eval` prints progress without a terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from aha.cli import main
from aha.log import read_jsonl
from aha.tasks.base import Example
from reliability_kit import REPO, SMOKE, RewardTask, use_task


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
        before = signal.getsignal(sig)  # SIG_DFL / default_int_handler, or SIG_IGN under nohup or `&`
        assert main([*SMOKE, f"output_dir={out}", "max_steps=9", "save_every=0"]) == 128 + sig
        err = capsys.readouterr().err
        assert f"{sig.name} received: finishing this step" in err
        assert f"stopped by {sig.name} after step 2; checkpoint saved to {out}/checkpoints/step-2" in err
        assert "continue from the last checkpoint with: aha train -c smoke" in err and "--resume" in err
        assert signal.getsignal(sig) == before  # the caller's handlers restored
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
    deadline = time.time() + 600  # a bound on waiting, not a timing assertion: a busy machine may be slow
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

"""aha/loop.py, the bookkeeping both loops share, on a fake backend (no model): what it logs and when,
the no-signal warning, the non-finite stop, the checkpoint schedule and the stop after a signal, and
that on a data-parallel rank other than 0 it writes nothing but still joins the stop decision."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from aha import rundir
from aha.config import load_config
from aha.data import fresh_state
from aha.guards import NonFiniteError
from aha.loop import Backend, Bookkeeper, StepOutcome
from aha.records import CompletionRecord, StepTimes, UpdateStats


class FakeBackend:
    """Records what the bookkeeping asked of it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def backend(self) -> Backend:
        return Backend(held_out_eval=self.eval, probe=self.probe, save=self.save, close=self.close)

    def eval(self):
        self.calls.append(("eval",))
        return {"eval/accuracy": 0.5}, [{"prompt_id": "t0", "completion": "42"}]

    def probe(self):
        self.calls.append(("probe",))
        return {"prompt_id": "t0", "completion": "probe"}

    def save(self, step: int) -> Path:
        self.calls.append(("save", step))
        return Path(f"checkpoints/step-{step}")

    def close(self) -> None:
        self.calls.append(("close",))


def outcome(spread: bool = True, nonfinite: str | None = None) -> StepOutcome:
    """A step of 2 groups of 2 completions; `spread=False`: both groups' rewards equal (no signal)."""
    rewards = [1.0, 0.0, 1.0, 0.0] if spread else [1.0] * 4
    records = [CompletionRecord(f"p{i // 2}", f"text {i}", r, {"correctness": r}, r > 0, True, 5, False, str(r))
               for i, r in enumerate(rewards)]
    stats = UpdateStats.skipped(nonfinite) if nonfinite else UpdateStats(0.1, float("nan"), 0.0, 1.0, 0.5, 0.0)
    return StepOutcome(records, 0.0 if spread else 2.0, 2.0, stats, 1e-3, StepTimes.from_marks(0, 1, 2, 3),
                       {"mismatch/kl": float("nan")})


def open_book(tmp_path: Path, *keys: str, main: bool = True, all_sum=list) -> tuple[Bookkeeper, FakeBackend, dict]:
    cfg = load_config("smoke", [f"output_dir={tmp_path}", "tensorboard=false", *keys])
    fake, state = FakeBackend(), fresh_state()
    book = Bookkeeper(cfg, tmp_path, state, fake.backend(), "seed: 0\n", resumed=False, overwrite=False, main=main,
                      all_sum=all_sum)
    return book, fake, state


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_logs_evals_probes_and_saves_on_schedule(tmp_path: Path):
    book, fake, state = open_book(tmp_path, "max_steps=4", "eval_every=2", "probe_every=3", "save_every=3",
                                  "log_completions_every=2")
    book.baseline()
    for step in range(1, 5):
        book.after_step(step, outcome())
    book.close()
    metrics = rows(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert [("eval/accuracy" in m) for m in metrics] == [True, False, True, False, True]  # 0, every 2, the last
    assert metrics[1]["reward"] == 0.5 and metrics[1]["frac_zero_std"] == 0.0 and metrics[1]["step_time"] == 3
    logged = rows(tmp_path / "completions.jsonl")
    assert sorted({r["step"] for r in logged if r["completion"].startswith("text")}) == [2, 4]
    assert sorted(r["step"] for r in logged if r["completion"] == "probe") == [1, 3, 4]  # 1, every 3, the last
    assert [r["step"] for r in rows(tmp_path / "eval_completions.jsonl")] == [0, 2, 4]
    assert [c for c in fake.calls if c[0] in ("save", "close")] == [("save", 3), ("save", 4), ("close",)]
    assert state["step"] == 4


def test_warns_once_after_k_steps_without_signal(tmp_path: Path, capsys):
    book, _, _ = open_book(tmp_path, "max_steps=6", "save_every=0", "warn_no_signal_steps=2")
    for step, spread in enumerate([False, True, False, False, False, False], start=1):
        book.after_step(step, outcome(spread))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "no group has carried" in line]
    assert len(warnings) == 1 and "for 2 steps" in warnings[0]  # at steps 3-4, not again at 5-6, not at 1


def test_stops_after_max_nonfinite_steps_in_a_row(tmp_path: Path, capsys):
    book, fake, _ = open_book(tmp_path, "max_steps=9", "save_every=0", "max_nonfinite_steps=2")
    book.after_step(1, outcome(nonfinite="reward"))
    book.after_step(2, outcome())  # a finite step resets the streak
    book.after_step(3, outcome(nonfinite="reward"))
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        book.after_step(4, outcome(nonfinite="loss or gradient"))
    assert len([line for line in capsys.readouterr().err.splitlines() if "non-finite" in line]) == 2
    assert not [c for c in fake.calls if c[0] == "save"]  # nothing non-finite was checkpointed


def test_a_signal_saves_closes_and_stops(tmp_path: Path, monkeypatch):
    book, fake, state = open_book(tmp_path, "max_steps=5", "save_every=0")
    book.after_step(1, outcome())
    monkeypatch.setattr(rundir, "stop_signal", lambda: signal.SIGTERM)
    with pytest.raises(rundir.Stopped, match="stopped by SIGTERM after step 2; checkpoint saved to checkpoints/step-2"):
        book.after_step(2, outcome())
    assert fake.calls == [("probe",), ("save", 2), ("close",)] and state["step"] == 2


def test_a_signal_during_the_last_step_just_finishes(tmp_path: Path, monkeypatch):
    book, fake, _ = open_book(tmp_path, "max_steps=1", "save_every=0")
    monkeypatch.setattr(rundir, "stop_signal", lambda: signal.SIGINT)
    book.after_step(1, outcome())  # no Stopped: the run is complete, saved as any last step
    assert ("save", 1) in fake.calls and ("close",) not in fake.calls


def test_another_rank_writes_nothing_but_joins_the_stop(tmp_path: Path):
    """Rank > 0 (main=False): no run directory files, no eval or probe; the stop decision is the sum over
    ranks (here another rank was signalled), and the checkpoint is a collective it joins."""
    sums: list[list[float]] = []

    def all_sum(values: list[float]) -> list[float]:
        sums.append(list(values))
        return [1.0]  # rank 0 got SIGTERM

    book, fake, _ = open_book(tmp_path, "max_steps=5", "save_every=0", main=False, all_sum=all_sum)
    with pytest.raises(rundir.Stopped):
        book.after_step(1, outcome())
    assert sums == [[0.0]] and fake.calls == [("save", 1), ("close",)]
    assert not (tmp_path / "metrics.jsonl").exists()

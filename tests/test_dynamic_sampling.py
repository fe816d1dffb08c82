"""DAPO's dynamic sampling with refill (issue 16): groups with equal rewards are dropped and replaced by
groups from more prompts until a step has `prompts_per_step` groups with a reward spread."""

from __future__ import annotations

from pathlib import Path

import torch

from aha.dynamic_sampling import has_spread, keep_first
from aha.tasks.base import Example, Task
from conftest import letter_fraction


def test_keep_first_is_the_same_split_on_one_rank_and_on_two():
    one = [[[True, False, True, False], [False, True, True, True]]]  # flags[rank][round][group]
    two = [[[True, False], [False, True]], [[True, False], [True, True]]]  # the same draws, halves per rank
    kept_one = keep_first(one, 3, 0)
    assert kept_one == [True, False, True, False, False, True, False, False]
    r0, r1 = keep_first(two, 3, 0), keep_first(two, 3, 1)
    # in global draw order (round, then rank): r0's round 0, r1's round 0, r0's round 1, r1's round 1
    assert r0[:2] + r1[:2] + r0[2:] + r1[2:] == kept_one
    assert keep_first(one, 10, 0) == one[0][0] + one[0][1]  # fewer than wanted: every signal group


def test_has_spread():
    assert has_spread(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [False, True, False]


class MostlyFlatTask(Task):
    """32 prompts; only every 4th one's reward depends on the completion, the rest always pay 1.0."""

    name = "mostly_flat"
    rewards = {"letters": (letter_fraction, 1.0)}

    def examples(self, split):
        return [Example(id=f"flat/{split}/{i}", prompt=f"prompt {i}:", target=i % 4 == 0) for i in range(32)]

    def score(self, completion, ex):
        r = letter_fraction(completion, ex) if ex.target else 1.0
        return r, {"letters": r}

    def is_correct(self, completion, ex):
        return False

    def is_formatted(self, completion, ex):
        return False


def test_refill_yields_prompts_per_step_signal_groups(tmp_path: Path, monkeypatch):
    import aha.train
    from aha.config import load_config
    from aha.log import read_jsonl

    monkeypatch.setattr(aha.train, "get_task", lambda name, **o: MostlyFlatTask())
    used = []
    real = aha.train.policy_update

    def spy(model, ro, adv, rows, *args, **kw):
        used.append(len(rows))
        return real(model, ro, adv, rows, *args, **kw)

    monkeypatch.setattr(aha.train, "policy_update", spy)
    out = aha.train.train(load_config("smoke", [
        f"output_dir={tmp_path}", "task=flat", "tensorboard=false", "max_steps=4", "save_every=0", "probe_every=0",
        "rollout.max_new_tokens=8", "prompts_per_step=2", "algo.drop_zero_std=true", "algo.max_refill_rounds=6"]))
    rows = read_jsonl(out / "metrics.jsonl")
    G = 4
    for r, n_rows in zip(rows, used):
        # prompts_per_step groups with a spread, or the extra rounds ran out
        assert r["dynamic/kept_groups"] == 2 or r["dynamic/extra_rounds"] == 6
        assert n_rows == r["dynamic/kept_groups"] * G
        assert 0 < r["frac_zero_std"] < 1
    assert any(r["dynamic/extra_rounds"] > 0 for r in rows)  # 1 prompt in 4 has a spread: refills happen
    assert sum(r["dynamic/kept_groups"] for r in rows) >= 6
    # Without refill the same task mostly has too few groups.
    monkeypatch.setattr(aha.train, "policy_update", real)
    out = aha.train.train(load_config("smoke", [
        f"output_dir={tmp_path / 'no_refill'}", "task=flat", "tensorboard=false", "max_steps=4", "save_every=0",
        "probe_every=0", "rollout.max_new_tokens=8", "prompts_per_step=2", "algo.drop_zero_std=true"]))
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["dynamic/extra_rounds"] == 0 for r in rows) and sum(r["dynamic/kept_groups"] for r in rows) < 8

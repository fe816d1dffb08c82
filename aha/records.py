"""What a GRPO step reports, the same for both backends: one record per completion, the update's
statistics, and the step's metrics built from them (metrics.jsonl) - so `aha report` reads a torch
run and a JAX run alike, and a metric added here appears in both.

"Group" means GRPO's G completions of one prompt, here and everywhere in aha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from aha.metrics import reasoning_metrics, reflection_rate
from aha.tasks import Example, Task, reward_means


@dataclass
class CompletionRecord:
    """One sampled completion and how the task judged it."""

    prompt_id: str  # Example.id of its prompt
    completion: str  # the generated text (without the prompt)
    reward: float  # weighted sum of the task's rewards
    rewards: dict[str, float]  # reward name -> weighted value
    correct: bool  # Task.is_correct: the accuracy metric
    formatted: bool  # Task.is_formatted: the format_rate metric
    length: int  # completion tokens, EOS included
    truncated: bool  # hit max_new_tokens without EOS
    answer: str  # Task.final_answer, or the stripped text without one: what answer_collapse compares
    steps: int | None = None  # Task.reasoning_steps: intermediate results written; None = not defined

    def logged(self) -> dict[str, Any]:
        """The fields completions.jsonl keeps ("steps" only where the task defines them)."""
        row = {"prompt_id": self.prompt_id, "completion": self.completion, "reward": self.reward,
               "rewards": self.rewards, "correct": self.correct, "length": self.length}
        return row if self.steps is None else {**row, "steps": self.steps}


@dataclass
class UpdateStats:
    """What one policy update (mu optimizer steps on a step's rollouts) measured: scalars, and what
    was non-finite if a step was skipped (`metrics()` is what metrics.jsonl keeps)."""

    loss: float  # the last inner iteration's policy loss, summed over micro-batches (and ranks)
    kl: float  # KL to the reference, same sums; NaN when algo.beta == 0 (not computed)
    clip_frac: float  # fraction of tokens whose ratio was clipped, summed like the loss
    entropy: float  # mean per-token entropy of the sampling distribution (nats)
    grad_norm: float  # global gradient norm before clipping (of the last optimizer step)
    update_skipped: float  # 1.0 when no update was applied (all groups equal, or non-finite values), else 0.0
    nonfinite: str | None = None  # what was NaN/inf when an optimizer step was skipped (aha/guards.py)

    def metrics(self) -> dict[str, float]:
        """The figures metrics.jsonl keeps: the scalars, and `nonfinite_skipped` (1.0 when an optimizer
        step was skipped or rolled back for NaN/inf) in place of the description."""
        return {**{k: v for k, v in asdict(self).items() if k != "nonfinite"},
                "nonfinite_skipped": float(self.nonfinite is not None)}

    @classmethod
    def skipped(cls, nonfinite: str | None = None) -> UpdateStats:
        """No update: every group had equal rewards, or (`nonfinite`) a reward or advantage was NaN/inf."""
        nan = float("nan")
        zero = nan if nonfinite else 0.0
        return cls(loss=zero, kl=nan, clip_frac=zero, entropy=nan, grad_norm=zero, update_skipped=1.0,
                   nonfinite=nonfinite)


def completion_records(task: Task, examples: Sequence[Example], texts: Sequence[str],
                       scores: Sequence[tuple[float, dict[str, float]]], lengths: Any,
                       truncated: Any) -> list[CompletionRecord]:
    """One record per completion; `examples[i]` is the prompt of `texts[i]`. `lengths` (N,) and
    `truncated` (N,): a torch tensor, numpy array or list."""
    return [CompletionRecord(ex.id, text, total, parts, task.is_correct(text, ex), task.is_formatted(text, ex),
                             int(n), bool(tr), task.final_answer(text) or text.strip(), reasoning_steps(task, text, ex))
            for ex, text, (total, parts), n, tr in zip(examples, texts, scores, lengths, truncated)]


def reasoning_steps(task: Any, text: str, ex: Example) -> int | None:
    """`task.reasoning_steps(text, ex)`, or None for a task object without the method (duck-typed tasks
    that do not subclass Task, as eval allows)."""
    fn = getattr(task, "reasoning_steps", None)
    return fn(text, ex) if fn is not None else None


def answer_collapse(records: Sequence[CompletionRecord], G: int) -> float:
    """Share of groups (G adjacent records) whose completions all give the same final answer
    (`CompletionRecord.answer`). A collapsed group has nothing left to compare; unlike
    `frac_zero_std` it also shows a policy that agrees with itself while format details still
    make the rewards differ."""
    groups = [records[i:i + G] for i in range(0, len(records), G)]
    return sum(len({r.answer for r in g}) == 1 for g in groups) / max(len(groups), 1)


def probe_record(task: Task, ex: Example, text: str) -> dict[str, Any]:
    """completions.jsonl's line for the probe: a greedy completion of one fixed held-out prompt,
    logged at intervals so a report shows the same prompt early, middle and late in the run."""
    total, parts = task.score(text, ex)
    return {"prompt_id": ex.id, "completion": text, "reward": total, "rewards": parts,
            "correct": task.is_correct(text, ex), "probe": True}


def rollout_metrics(records: Sequence[CompletionRecord]) -> dict[str, float]:
    """Reward, accuracy, format and length figures of a step's completions (all ranks' records), the
    reflection rate, and the reasoning-steps figures (`aha.metrics.reasoning_metrics`) where the task
    defines steps."""
    rewards = torch.tensor([r.reward for r in records])
    lengths = torch.tensor([float(r.length) for r in records])
    n = len(records)
    return {
        "reward": rewards.mean().item(), "reward_std": rewards.std().item() if n > 1 else 0.0,
        **reward_means([r.rewards for r in records]),
        "accuracy": sum(r.correct for r in records) / n, "format_rate": sum(r.formatted for r in records) / n,
        "completion_len": lengths.mean().item(), "completion_len_max": lengths.max().item(),
        "truncated_rate": sum(r.truncated for r in records) / n,
        "reflection_rate": reflection_rate([r.completion for r in records]),
        **reasoning_metrics([r.steps for r in records], [r.correct for r in records]),
    }


@dataclass
class StepTimes:
    """Wall-clock seconds of a step's phases."""

    gen: float  # drawing prompts + rollout (tokenize, sample, decode)
    score: float  # rewards and the accuracy / format checks
    update: float  # advantages + log-probs + loss + backward + optimizer step

    @property
    def step(self) -> float:
        return self.gen + self.score + self.update

    @classmethod
    def from_marks(cls, start: float, rolled_out: float, scored: float, updated: float) -> StepTimes:
        """The phases between four clock readings: the step's start, after the rollout, after scoring,
        after the update."""
        return cls(gen=rolled_out - start, score=scored - rolled_out, update=updated - scored)


def step_metrics(records: Sequence[CompletionRecord], frac_zero_std: float, stats: UpdateStats, lr: float,
                 times: StepTimes, epoch: int, G: int) -> dict[str, float]:
    """One metrics.jsonl row (without the step and eval figures). `frac_zero_std`: the fraction of
    the step's groups whose rewards were all equal; `lr`: the last optimizer step's learning rate;
    `G`: completions per group (records come group by group)."""
    return {
        **rollout_metrics(records), "frac_zero_std": frac_zero_std, "answer_collapse": answer_collapse(records, G),
        **stats.metrics(), "lr": lr,
        "tokens_per_s": sum(r.length for r in records) / max(times.gen, 1e-9),
        "step_time": times.step, "gen_time": times.gen, "score_time": times.score,
        "update_time": times.update, "epoch": epoch,
    }


MISMATCH_KEYS = ("mismatch/kl", "mismatch/max_abs_logp_diff")  # update.Mismatch.metrics


def variant_metrics(mismatch: dict[str, float] | None, drop_zero_std: bool, extra_rounds: int, kept_groups: float,
                    overlong_penalty: float | None = None) -> dict[str, float]:
    """The step's figures beyond `step_metrics`, in one order for both backends: the rollout/trainer
    mismatch (`mismatch/*`, every step; NaN where the engine returns no log-probs, as the JAX sampler),
    DAPO's dynamic sampling (`dynamic/*`, under algo.drop_zero_std: refill rounds used, groups kept)
    and its overlong shaping (`reward/overlong_penalty`, the mean penalty, when it is on)."""
    out = dict(mismatch) if mismatch else dict.fromkeys(MISMATCH_KEYS, float("nan"))
    if drop_zero_std:
        out.update({"dynamic/extra_rounds": float(extra_rounds), "dynamic/kept_groups": kept_groups})
    if overlong_penalty is not None:
        out["reward/overlong_penalty"] = overlong_penalty
    return out

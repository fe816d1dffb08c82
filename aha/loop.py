"""What happens after a GRPO step, written once for both loops (aha/train.py, aha/jax/train.py): the
step's metrics row, the held-out eval when it is due (and the untrained policy's at step 0), the logs
(metrics.jsonl, completions.jsonl, the probe, the trackers, the progress bar), the no-signal warning,
the non-finite streak, the checkpoint, and the stop after SIGTERM / Ctrl-C.

Each loop keeps only its own step (rollout -> score -> advantages -> update) and hands this module
what came out of it (`StepOutcome`) plus what only the backend can do (`Backend`: held-out eval,
probe, save, close). Two loops once did all of this each, and drifted: a finished run made the torch loop load the
model and the JAX loop rewrite the run's logs; the JAX loop never warned of a run without signal.

Data-parallel (torch under torchrun): every rank calls `after_step` - the non-finite streak is per rank,
the stop decision and the checkpoint are collectives - and only rank 0 (`main`) writes logs.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from aha import rundir
from aha.config import Config
from aha.data import LoopState
from aha.guards import NonFiniteGuard
from aha.log import open_run
from aha.records import CompletionRecord, StepTimes, UpdateStats, step_metrics
from aha.schedule import eval_due

EvalRows = tuple[dict[str, float], list[dict[str, Any]]]  # (eval/* metrics, eval_completions.jsonl rows)


@dataclass
class StepOutcome:
    """What a backend's GRPO step hands to the bookkeeping. Figures are over every rank (rank 0 holds
    every rank's records); N = the step's completions."""

    records: Sequence[CompletionRecord]  # (N,) one per completion, group by group
    zero_std_groups: float  # groups whose G rewards were all equal (no signal)
    groups: float  # groups sampled this step
    stats: UpdateStats  # the update's figures
    lr: float  # the last optimizer step's learning rate
    times: StepTimes  # wall-clock seconds of rollout, scoring, update
    extra: dict[str, float]  # records.variant_metrics: mismatch/*, dynamic/*, overlong shaping


@dataclass
class Backend:
    """What only the backend can do for the bookkeeping."""

    held_out_eval: Callable[[], EvalRows]  # greedy accuracy of the current policy on the held-out problems
    probe: Callable[[], dict[str, Any]]  # a greedy completion of the first held-out prompt (records.probe_record)
    save: Callable[[int], Path | None]  # write the checkpoint of `step` (a collective); its path on rank 0
    close: Callable[[], None] = lambda: None  # release the rollout engine: at the end, or before a stop


class Bookkeeper:
    """One run's bookkeeping. Open it once every check has passed (it creates the run directory and
    opens the logs on rank 0: `log.open_run`), call `baseline()` before the first step, `after_step()`
    after each, `close()` at the end.

    `state` is the loop's `LoopState` (step, epoch, cursor), read for the metrics and advanced to the
    step just done before the checkpoint. `all_sum` sums floats over data-parallel ranks (on one
    process the default, `list`, is the identity): the stop decision is every rank's.
    """

    def __init__(self, cfg: Config, run_dir: Path, state: LoopState, backend: Backend, config_yaml: str, *,
                 resumed: bool, overwrite: bool, main: bool = True,
                 all_sum: Callable[[list[float]], list[float]] = list):
        self.cfg, self.state, self.backend, self.main, self.all_sum = cfg, state, backend, main, all_sum
        if main:  # every check has passed, so --overwrite replaces the old run now
            self.logger, self.progress = open_run(run_dir, cfg, config_yaml, state["step"], resumed, overwrite)
        self.no_signal = 0  # consecutive steps in which every group's rewards were equal
        self.nonfinite = NonFiniteGuard(cfg.max_nonfinite_steps, verbose=main)

    def held_out_eval(self, step: int) -> dict[str, float]:
        """Run the backend's held-out eval, write its completions (eval_completions.jsonl, for the report)
        and return its `eval/*` metrics."""
        metrics, rows = self.backend.held_out_eval()
        self.logger.log_eval_completions(step, rows)
        return metrics

    def baseline(self) -> None:
        """The untrained policy's held-out eval, as step 0: the baseline the run must beat."""
        if self.state["step"] == 0 and eval_due(0, self.cfg) and self.main:
            self.logger.log_metrics(0, self.held_out_eval(0))

    def after_step(self, step: int, out: StepOutcome) -> None:
        """6. Log step `step`: its metrics (+ held-out eval when due), its completions every
        `log_completions_every` steps, the probe's greedy completion (steps 1, every `probe_every`, the
        last), the progress bar, the warnings.
        7. Checkpoint it (the state saved is the state *after* this step) when due; after a SIGTERM or
        Ctrl-C, save now and stop (raises rundir.Stopped; a signal during the last step just finishes).
        Raises guards.NonFiniteError after `max_nonfinite_steps` skipped steps in a row."""
        cfg = self.cfg
        if self.main:
            metrics = step_metrics(out.records, out.zero_std_groups / out.groups, out.stats, out.lr, out.times,
                                   self.state["epoch"], cfg.rollout.num_generations)
            metrics.update(out.extra)
            if eval_due(step, cfg):
                metrics.update(self.held_out_eval(step))
            self.logger.log_metrics(step, metrics)
            if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                self.logger.log_completions(step, [r.logged() for r in out.records])
            if cfg.probe_every and (step == 1 or step % cfg.probe_every == 0 or step == cfg.max_steps):
                self.logger.log_completions(step, [self.backend.probe()])  # greedy: consumes no RNG
            self.progress.update(step, metrics)
            # A run whose groups all carry equal rewards learns nothing: say so while it runs.
            self.no_signal = self.no_signal + 1 if out.zero_std_groups == out.groups else 0
            if cfg.warn_no_signal_steps and self.no_signal == cfg.warn_no_signal_steps:
                print(no_signal_warning(self.no_signal, metrics), file=sys.stderr, flush=True)
        self.nonfinite.record(step, out.stats.nonfinite)  # one warning; a stop after max_nonfinite_steps in a row

        self.state["step"] = step
        stop = self.all_sum([float(rundir.stop_signal() is not None)])[0] > 0 and step < cfg.max_steps
        if stop or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
            saved = self.backend.save(step)
        if stop:
            self.backend.close()
            raise rundir.stopped(rundir.stop_signal() or signal.SIGTERM, step, saved)

    def close(self) -> None:
        """The run ended: release the engine, flush and close the logs."""
        self.backend.close()
        if self.main:
            self.progress.close()
            self.logger.close()


def no_signal_warning(steps: int, m: dict[str, float]) -> str:
    """The one-line warning for `steps` consecutive steps in which no group carried a signal."""
    return (f"aha: warning: no group has carried a learning signal for {steps} steps (every group's rewards "
            f"equal, so every advantage is 0 and nothing is learned; answer_collapse={m['answer_collapse']:.2f}, "
            f"entropy={m['entropy']:.3g}, reward={m['reward']:.3g}). Usual causes: rewards that are all equal "
            "(too hard or too easy, or a reward bug), sampling too narrow (low temperature or top_p/top_k, "
            "entropy collapsed: lower lr), reward hacking (every completion games the same reward); "
            "see completions.jsonl")

"""Run trackers: where a run's metrics go besides `metrics.jsonl` - TensorBoard, Weights & Biases,
Trackio - chosen by the config's `report_to` list.

Every tracker gets exactly what `metrics.jsonl` gets, under the same names (`reward`,
`reward/<name>`, `eval/accuracy`, ...; non-finite values are skipped, as JSONL writes null), the
resolved config once at the start, and every `report_table_every` steps a table of that step's
completions (prompt id, rewards, correct, length, text; the greedy probe row included). A tracker
is a small class with `log(step, metrics)`, `log_table(step, rows)` and `close()`; `RunLogger`
(log.py) fans out to them.

Each package is optional (`pip install 'aha[wandb]'`, `'aha[trackio]'`); `check_trackers` runs when
the config is loaded, so a missing one stops the run with the install command before any model
loads. The old `tensorboard: false` key still works: it removes `tensorboard` from `report_to`.

W&B reads its usual environment (WANDB_PROJECT, default "aha"; WANDB_ENTITY; WANDB_DIR, default
`output_dir`; WANDB_MODE=offline writes `<WANDB_DIR>/wandb/` without an account). A resumed run
continues the same W&B run (its id is kept in `output_dir/wandb/aha-run-id`); W&B keeps the first
values of steps that are logged twice.
Trackio logs locally (project TRACKIO_PROJECT, default "aha"; `trackio show` opens the dashboard).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from aha.errors import ConfigError

# report_to name -> (module that must be importable, how to install it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install 'aha[wandb]'"),
    "trackio": ("trackio", "pip install 'aha[trackio]'"),
}
TABLE_COLUMNS = ["step", "prompt_id", "probe", "reward", "correct", "length", "completion"]


def resolve_report_to(report_to: Sequence[str], tensorboard: bool = True) -> list[str]:
    """The trackers to open: `report_to` without duplicates, "none" meaning no tracker, and
    `tensorboard` dropped when the legacy `tensorboard` key is false."""
    names: list[str] = []
    for name in report_to:
        if name != "none" and name not in names and (tensorboard or name != "tensorboard"):
            names.append(name)
    return names


def check_trackers(report_to: Sequence[str], tensorboard: bool = True) -> None:
    """Raise a one-line ConfigError for an unknown tracker or one whose package is not installed.

    Args:
        report_to: the config's `report_to` list.
        tensorboard: the config's legacy `tensorboard` key.

    Raises:
        ConfigError: naming the tracker and the install command.
    """
    for name in report_to:
        if name != "none" and name not in TRACKERS:
            raise ConfigError(f"config key 'report_to': unknown tracker {name!r}; use any of "
                              f"{', '.join(TRACKERS)} (or none)")
    for name in resolve_report_to(report_to, tensorboard):
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to includes {name} but the {module} package is not installed: "
                              f"run `{install}` (or drop {name} from report_to)")


def open_trackers(report_to: Sequence[str], run_dir: Path, config: dict[str, Any], tensorboard: bool = True,
                  resume_step: int | None = None) -> list[Any]:
    """One tracker object per resolved `report_to` entry, each already given the config.

    Args:
        report_to, tensorboard: as in `check_trackers` (checked again here).
        run_dir: the run's output directory.
        config: the resolved config as a plain dict (`Config.to_dict()`).
        resume_step: the step a resumed run continues from, or None for a fresh run.
    """
    check_trackers(report_to, tensorboard)
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}
    return [kinds[name](Path(run_dir), config, resume_step) for name in resolve_report_to(report_to, tensorboard)]


def trackable(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (what JSONL writes as null is left out)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def table_rows(step: int, rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) of a completions table: TABLE_COLUMNS, then one `reward/<name>` column per
    reward of the step's rows."""
    reward_names = sorted({name for r in rows for name in (r.get("rewards") or {})})
    columns = TABLE_COLUMNS[:-1] + [f"reward/{n}" for n in reward_names] + TABLE_COLUMNS[-1:]
    data = [[step, str(r.get("prompt_id", "")), bool(r.get("probe", False)), float(r.get("reward", 0.0)),
             bool(r.get("correct", False)), int(r.get("length", 0))]
            + [float((r.get("rewards") or {}).get(n, 0.0)) for n in reward_names] + [str(r.get("completion", ""))]
            for r in rows]
    return columns, data


class TensorBoardTracker:
    """Scalars under the metric names; the config and the completions tables as text (markdown)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None = None):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        # purge_step discards events past the resumed step, as RunLogger trims the JSONL files.
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in trackable(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_table(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        columns, data = table_rows(step, rows)

        def cell(v: Any) -> str:
            text = f"{v:.3g}" if isinstance(v, float) else str(v)
            return text.replace("|", "\\|").replace("\n", "\\n")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
        self.writer.add_text("completions", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _RunTracker:
    """W&B and Trackio share one API: a run object with `log(data, step=...)` and `finish()`, and a
    `Table(columns=..., data=...)` type logged like a metric."""

    run: Any
    table: Any

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(trackable(metrics), step=step)

    def log_table(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        columns, data = table_rows(step, rows)
        self.run.log({"completions": self.table(columns=columns, data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbTracker(_RunTracker):
    """A W&B run in `run_dir/wandb/`: metrics at their step, `completions` tables, the config."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None = None):
        import wandb

        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb" / "aha-run-id"
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
        # WANDB_DIR, when set, is where the user keeps W&B's files (wandb.init's dir= would override it).
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "aha"), name=run_dir.name,
                              dir=os.environ.get("WANDB_DIR") or str(run_dir),
                              config=config, id=run_id, resume="allow" if run_id else None)
        self.table = wandb.Table
        self.teardown = wandb.teardown
        id_file.write_text(self.run.id)

    def close(self) -> None:
        self.run.finish()
        # W&B's service process writes the run's files asynchronously; shutting it down waits until
        # they are complete, so the run directory is whole when train() returns.
        self.teardown()


class TrackioTracker(_RunTracker):
    """A local Trackio run: metrics at their step, `completions` tables, the config."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None = None):
        import trackio

        # Trackio stores the config as JSON; the resolved config is plain YAML-safe data.
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "aha"), name=run_dir.name,
                                config=json.loads(json.dumps(config)),
                                resume="allow" if resume_step is not None else "never")
        self.table = trackio.Table

"""Run trackers (report_to): W&B in offline mode read back from its own files, TensorBoard, the
completions tables, the legacy `tensorboard` key, and one-line errors for missing packages."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
import time
import types
from pathlib import Path

import pytest

from aha.cli import main
from aha.config import load_config
from aha.errors import ConfigError
from aha.log import RunLogger, read_jsonl
from aha.trackers import check_trackers, resolve_report_to, table_rows


def wandb_records(path: Path):
    """The protobuf records of a W&B `.wandb` file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log framing - 32 KiB blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first,
    3 middle, 4 last); a block tail shorter than a chunk header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_dir: Path, run_id: str = "*") -> tuple[dict[str, object], dict[int, dict[str, object]]]:
    """(the run's config, step -> the values logged at that step) from `run_dir/wandb/`."""
    config, history = {}, {}
    files = sorted((run_dir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))
    assert files
    for r in (r for f in files for r in wandb_records(f)):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
    return config, history


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="pip install 'aha[wandb]' (part of the dev extra)")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb-config",
                       "WANDB_CACHE_DIR": tmp_path / "wb-cache", "WANDB_DATA_DIR": tmp_path / "wb-data",
                       "WANDB_PROJECT": "aha-test"}.items():
        monkeypatch.setenv(key, str(value))


def test_smoke_run_reports_to_tensorboard_and_wandb_offline(tmp_path, wandb_offline):
    run = tmp_path / "run"
    rc = main(["train", "-c", "smoke", f"output_dir={run}", "report_to=[tensorboard,wandb]", "report_table_every=2",
               "eval_every=3", "save_every=0"])
    assert rc == 0
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    config, history = wandb_history(run)
    # Every finite value of metrics.jsonl is in W&B under the same name at the same step.
    for row in rows:
        logged = history[row["step"]]
        for key, value in row.items():
            if key != "step" and value is not None:
                assert logged[key] == pytest.approx(value), key
    assert "reward/answer" in history[1] and "eval/accuracy" in history[0] and "eval/accuracy_lenient" in history[3]
    assert "kl" not in history[1]  # null in the JSONL (algo.beta=0): not sent
    # The resolved config, and a completions table at step 2 only (report_table_every=2).
    assert config["model"] == "random:tiny-qwen2" and config["report_to"] == ["tensorboard", "wandb"]
    assert config["rollout"]["num_generations"] == 4
    assert history[2]["completions/_type"] == "table-file" and "completions/_type" not in history[1]
    (table,) = (run / "wandb").glob("offline-run-*/files/media/table/completions_2_*.table.json")
    table = json.loads(table.read_text())
    # The step's 2 x 4 completions plus the greedy probe row (probe_every=10: step 1, 3 only -> not here).
    assert len(table["data"]) == 8 and table["columns"][:3] == ["step", "prompt_id", "probe"]
    assert "reward/answer" in table["columns"] and table["columns"][-1] == "completion"
    # TensorBoard got the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert [e.value for e in tb.Scalars("reward")] == pytest.approx([r["reward"] for r in rows if "reward" in r])
    assert {"config/text_summary", "completions/text_summary"} <= set(tb.Tags()["tensors"])


def test_resumed_run_continues_the_same_wandb_run(tmp_path, wandb_offline):
    run = tmp_path / "run"
    base = ["train", "-c", "smoke", f"output_dir={run}", "report_to=wandb", "probe_every=0", "save_every=1"]
    assert main(base + ["max_steps=2"]) == 0
    first = (run / "wandb" / "aha-run-id").read_text()
    time.sleep(1.1)  # W&B names a session's directory by the second: two in one second share (and clobber) one
    assert main(base + ["max_steps=3", "--resume"]) == 0
    assert (run / "wandb" / "aha-run-id").read_text() == first
    assert sorted(wandb_history(run, first)[1]) == [1, 2, 3]  # both sessions logged to one W&B run


def test_missing_tracker_package_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    rc = main(["train", "-c", "smoke", f"output_dir={tmp_path / 'run'}", "report_to=[tensorboard,trackio]"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "trackio package is not installed: run `pip install 'aha[trackio]'`" in err
    assert not (tmp_path / "run").exists()  # checked with the config, before anything is written
    with pytest.raises(ConfigError, match="unknown tracker 'wandbb'"):
        load_config("smoke", ["report_to=[wandbb]"])
    with pytest.raises(ConfigError, match="report_table_every"):
        load_config("smoke", ["report_table_every=-1"])


def test_legacy_tensorboard_key_and_none():
    assert resolve_report_to(["tensorboard"], tensorboard=True) == ["tensorboard"]
    assert resolve_report_to(["tensorboard", "wandb"], tensorboard=False) == ["wandb"]
    assert resolve_report_to(["none"]) == [] and resolve_report_to([]) == []
    assert resolve_report_to(["wandb", "wandb"]) == ["wandb"]
    check_trackers(["none"])
    assert load_config("smoke", ["report_to=none"]).report_to == ["none"]
    assert load_config("smoke").report_to == ["tensorboard"]


class Recorder:
    def __init__(self):
        self.calls = []

    def log(self, step, metrics):
        self.calls.append(("log", step, dict(metrics)))

    def log_table(self, step, rows):
        self.calls.append(("table", step, [r["prompt_id"] for r in rows]))

    def close(self):
        self.calls.append(("close",))


def test_run_logger_sends_one_table_per_due_step_with_the_probe_row(tmp_path):
    rec = Recorder()
    logger = RunLogger(tmp_path, [rec], table_every=2)
    for step in (1, 2, 3, 4):
        logger.log_metrics(step, {"reward": float(step), "kl": math.nan})
        logger.log_completions(step, [{"prompt_id": f"p{step}", "completion": "x"}])
        logger.log_completions(step, [{"prompt_id": "probe", "completion": "y", "probe": True}])
    logger.close()
    tables = [c for c in rec.calls if c[0] == "table"]
    assert tables == [("table", 2, ["p2", "probe"]), ("table", 4, ["p4", "probe"])]
    # The step-2 table goes out before step 3's metrics (trackers need non-decreasing steps).
    kinds = [(c[0], c[1]) for c in rec.calls if c[0] != "close"]
    assert kinds.index(("table", 2)) < kinds.index(("log", 3)) and rec.calls[-1] == ("close",)
    assert read_jsonl(tmp_path / "metrics.jsonl")[0] == {"step": 1, "reward": 1.0, "kl": None}


def test_table_rows_flatten_each_reward():
    cols, data = table_rows(5, [{"prompt_id": "a", "completion": "t", "reward": 1.5, "rewards": {"x": 1.0, "y": 0.5},
                                 "correct": True, "length": 3}])
    assert cols == ["step", "prompt_id", "probe", "reward", "correct", "length", "reward/x", "reward/y", "completion"]
    assert data == [[5, "a", False, 1.5, True, 3, 1.0, 0.5, "t"]]


def test_trackio_tracker_calls(tmp_path, monkeypatch):
    """Against a stand-in module with trackio's API (init -> run with log/finish, Table); the real
    package (0.43) was checked by hand: it pins its own pillow, so it is not in the dev extra."""
    calls = []
    run = types.SimpleNamespace(log=lambda metrics, step=None: calls.append(("log", step, metrics)),
                                finish=lambda: calls.append(("finish",)))
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or run,
                                 Table=lambda columns, data: ("Table", columns, data))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    from aha.trackers import TrackioTracker

    t = TrackioTracker(tmp_path / "myrun", {"lr": 1e-3, "rollout": {"num_generations": 4}})
    t.log(1, {"reward": 0.5, "kl": math.nan, "epoch": 0})
    t.log_table(1, [{"prompt_id": "a", "completion": "t", "reward": 0.5, "rewards": {}}])
    t.close()
    assert calls[0] == ("init", {"project": "aha", "name": "myrun", "resume": "never",
                                 "config": {"lr": 1e-3, "rollout": {"num_generations": 4}}})
    assert calls[1] == ("log", 1, {"reward": 0.5, "epoch": 0})
    assert calls[2][0] == "log" and calls[2][2]["completions"][0] == "Table" and calls[-1] == ("finish",)


def test_changing_trackers_on_resume_is_not_a_change_of_the_run():
    from aha.ckptdir import resume_diff
    from aha.config import Config

    saved, now = Config().to_dict(), Config(report_to=["wandb"], report_table_every=1, tensorboard=False).to_dict()
    assert resume_diff(saved, now) == ([], [])


def test_wandb_dir_from_the_environment_wins(tmp_path, monkeypatch):
    """WANDB_DIR set by the user is where W&B writes (it was ignored: dir= always the run dir)."""
    calls = []
    run = types.SimpleNamespace(id="abc", finish=lambda: None)
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or run, Table=None, teardown=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from aha.trackers import WandbTracker

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    WandbTracker(tmp_path / "run", {})
    monkeypatch.delenv("WANDB_DIR")
    WandbTracker(tmp_path / "run2", {})
    assert calls[0]["dir"] == str(tmp_path / "elsewhere") and calls[1]["dir"] == str(tmp_path / "run2")

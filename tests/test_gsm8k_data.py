"""Where the tests' GSM8K comes from on a fresh clone (tests/conftest.py `find_gsm8k`): the local copy
(AHA_GSM8K_DIR or ../shared/data/gsm8k), else the hub through `datasets` (stubbed here: these machines
cannot reach it), else one line naming both ways. And an unreachable hub fails fast, not after ~30 s
of retries (aha/tasks/gsm8k.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import aha.tasks.gsm8k as gsm8k
from conftest import REPO, GSM8KMissing, find_gsm8k

ROWS = {"train": [{"question": "Twice 9?", "answer": "9*2=18\n#### 18"}],
        "test": [{"question": "1,000 + 200?", "answer": "#### 1,200"}, {"question": "3 - 5?", "answer": "#### -2"}]}


@pytest.fixture
def no_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("AHA_GSM8K_DIR", str(tmp_path / "nowhere"))


@pytest.fixture
def hub(monkeypatch):
    """datasets.load_dataset stubbed: the calls it got; raises when `hub.error` is set."""
    import datasets

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if load_dataset.error:
            raise load_dataset.error
        return [dict(r, extra=1) for r in ROWS[split]]

    load_dataset.error, load_dataset.calls = None, calls
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(gsm8k, "hub_unreachable", lambda *a: None)
    return load_dataset


def test_the_local_copy_comes_first(tmp_path, monkeypatch, hub):
    for split, rows in ROWS.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("AHA_GSM8K_DIR", str(tmp_path))
    assert find_gsm8k(tmp_path / "hub") == tmp_path and hub.calls == []


def test_without_a_local_copy_the_hub_is_loaded_through_datasets(tmp_path, no_local_copy, hub):
    d = find_gsm8k(tmp_path / "hub")
    assert d == tmp_path / "hub" and sorted(hub.calls) == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    task = gsm8k.GSM8K(data={"train": d / "train.jsonl", "test": d / "test.jsonl"})
    assert [ex.target for ex in task.examples("test")] == ["1200", "-2"] and len(task.examples("train")) == 1


def test_neither_is_one_line_naming_both_ways(tmp_path, no_local_copy, hub):
    hub.error = ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)\nmore detail")
    with pytest.raises(GSM8KMissing) as err:
        find_gsm8k(tmp_path / "hub")
    msg = str(err.value)
    assert "\n" not in msg and not (tmp_path / "hub").exists()
    assert str(tmp_path / "nowhere") in msg and "AHA_GSM8K_DIR" in msg and "openai/gsm8k" in msg and "datasets" in msg


def test_a_suite_without_gsm8k_fails_each_such_test_in_one_line_without_traceback(tmp_path):
    """A fresh clone with no copy and no hub: the GSM8K tests fail (never skip) with the one line."""
    test = tmp_path / "test_needs_gsm8k.py"
    test.write_text("def test_a(gsm8k_dir):\n    pass\n\ndef test_b(gsm8k_dir):\n    pass\n")
    (tmp_path / "conftest.py").write_text(  # the repo's fixture, loaded under another module name
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(REPO / 'tests' / 'conftest.py')!r})\n"
        "repo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(repo)\ngsm8k_dir = repo.gsm8k_dir\n")
    env = {**__import__("os").environ, "AHA_GSM8K_DIR": str(tmp_path / "nowhere"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "2 errors" in r.stdout, r.stdout[-3000:]
    for noise in ("Traceback", "def find_gsm8k", "direct cause", "During handling", "Without network access"):
        assert noise not in r.stdout, r.stdout[-3000:]
    assert "GSM8K data not found" in r.stdout and "AHA_GSM8K_DIR" in r.stdout


def test_an_unreachable_hub_is_read_offline_instead_of_retried(monkeypatch):
    """~30 s of retries before the error on main: with the hub's host unreachable, `datasets` runs in
    offline mode (its cache only, at once) and the flags are restored afterwards."""
    import datasets
    import huggingface_hub.constants as hub_constants

    seen = []

    def load_dataset(*a, **k):
        seen.append((hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(gsm8k, "hub_unreachable", lambda *a: "huggingface.co: Name or service not known")
    before = (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with pytest.raises(RuntimeError) as err:
        gsm8k.GSM8K().examples("test")
    assert seen == [(True, True)] and (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before
    assert "unreachable: huggingface.co" in str(err.value) and "task_options.data=" in str(err.value)


def test_the_reachability_probe(monkeypatch):
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    assert gsm8k.hub_unreachable().startswith("no-such-host.invalid: ")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a proxy may reach it: the hub client decides
    assert gsm8k.hub_unreachable() is None

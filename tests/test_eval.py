"""Eval and loading what was trained: pass@k / maj@k arithmetic on hand-made completions,
`evaluate` on a tiny random model (deterministic, order-preserving, RNG-neutral), `load_trained`
round trips and its errors, `aha eval` on a smoke run, and the bundled SmolLM2 on real GSM8K."""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from aha.cli import main
from aha.errors import CheckpointError
from aha.eval import evaluate, k_values, majority_index, pass_at_k, summarize
from aha.trained import load_trained
from aha.model import load_policy
from aha.tasks import Example, Task, get_task

TINY = "random:tiny-qwen2"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A 3-step smoke-preset run (checkpoints at steps 2 and 3), trained once per session."""
    from aha.config import load_config
    from aha.train import train

    run = tmp_path_factory.getbasetemp() / "smoke-run"
    if not (run / "checkpoints" / "step-3" / "meta.json").is_file():
        train(load_config("smoke", [f"output_dir={run}", "tensorboard=false"]), overwrite=True)
    return run


# ---------------------------------------------------------------------------- pass@k, maj@k

def test_pass_at_k_is_the_unbiased_estimator():
    # Brute force: the chance that a random k-subset of n samples (c correct) holds a correct one.
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations([1] * c + [0] * (n - c), k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert k_values(8) == [1, 2, 4, 8] and k_values(6) == [1, 2, 4, 6] and k_values(1) == [1]
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_votes_over_the_tasks_final_answers():
    task = Task()  # the default final answer: the last <answer> block, normalised
    assert task.final_answer("<think>x</think><answer>\n 1,000 \n</answer>") == "1000"
    assert task.final_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert task.final_answer("<answer>(1 + 2) * 3</answer>") == "(1+2)*3"
    assert task.final_answer("no answer") is None and task.final_answer("<answer>7") is None
    assert task.final_answer("<answer>  </answer>") is None
    # Numbers by the tasks' rules: a comma only separates thousands, "$" and a trailing "." go.
    assert task.final_answer("<answer>$1,000.</answer>") == task.final_answer("<answer>1000</answer>") == "1000"
    assert task.final_answer("<answer>1,2</answer>") == "1,2" != task.final_answer("<answer>12</answer>")
    assert majority_index(task, ["<answer>3</answer>", "<answer>4</answer>", "<answer> 4</answer>", "x"]) == 1
    assert majority_index(task, ["<answer>5</answer>", "<answer>6</answer>"]) == 0  # tie: first seen
    assert majority_index(task, ["x", "y"]) is None


class EchoTask(Task):
    """A task whose answer check is readable in the test: correct iff the answer is the target."""

    name = "echo"

    def is_correct(self, completion: str, ex: Example) -> bool:
        return self.final_answer(completion) == ex.target

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return "<answer>" in completion


def test_summarize_pass_and_majority_on_hand_made_completions():
    exs = [Example("a", "p", "1"), Example("b", "p", "2")]
    def a(x: int) -> str:
        return f"<answer>{x}</answer>"

    texts = [a(1), a(9), a(9),  # a: one of three right, the majority (9) wrong
             a(2), a(2), "Wait, no answer"]  # b: two of three right, majority right
    metrics, rows = summarize(EchoTask(), exs, texts, [10, 20, 30, 40, 50, 60], [False] * 5 + [True], samples=3)
    assert metrics["n"] == 2
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["pass@1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert metrics["pass@2"] == pytest.approx((pass_at_k(3, 1, 2) + pass_at_k(3, 2, 2)) / 2)
    assert metrics["pass@3"] == 1.0
    assert metrics["maj@3"] == 0.5
    assert metrics["format_rate"] == pytest.approx(5 / 6)
    assert metrics["completion_len"] == 35 and metrics["truncated_rate"] == pytest.approx(1 / 6)
    assert metrics["reflection_rate"] == pytest.approx(1 / 6)  # "Wait"
    assert [(r["id"], r["sample"], r["correct"]) for r in rows][:4] == [("a", 0, True), ("a", 1, False),
                                                                         ("a", 2, False), ("b", 0, True)]


# ---------------------------------------------------------------------------- evaluate()

@pytest.fixture(scope="module")
def tiny():
    return load_policy(TINY, "full", device="cpu", seed=0)


COUNTDOWN = {"n_train": 8, "n_test": 6}


def test_evaluate_greedy_is_deterministic_and_reports_the_metrics(tiny):
    task = get_task("countdown", **COUNTDOWN)
    runs = [evaluate(tiny.model, tiny.tokenizer, task, limit=5, batch_size=2, max_new_tokens=12,
                     save_completions=True) for _ in range(2)]
    assert runs[0] == runs[1]
    r = runs[0]
    assert r["n"] == 5 and len(r["rows"]) == 5
    for key in ("accuracy", "format_rate", "completion_len", "reflection_rate", "truncated_rate"):
        assert isinstance(r[key], float)
    assert 0 < r["completion_len"] <= 12
    assert [row["id"] for row in r["rows"]] == [ex.id for ex in task.examples("test")[:5]]


def test_evaluate_keeps_each_completion_with_its_example(monkeypatch, tiny):
    """Generation runs in prompt-length order; results must come back in the examples' order."""
    import aha.rollout

    def echo_generate(model, tokenizer, prompts, params, engine="hf", batch_size=0):
        n = len(prompts)
        return SimpleNamespace(texts=[f"<answer>{p}</answer>" for p in prompts],
                               completion_mask=torch.ones(n, 3), truncated=torch.zeros(n, dtype=torch.bool))

    monkeypatch.setattr(aha.rollout, "generate", echo_generate)
    exs = [Example(str(i), "x" * n, "x" * n) for i, n in enumerate([5, 1, 9, 3, 7])]
    task = SimpleNamespace(examples=lambda split: exs, is_correct=EchoTask().is_correct,
                           is_formatted=EchoTask().is_formatted)
    r = evaluate(tiny.model, tiny.tokenizer, task, batch_size=2, save_completions=True)
    assert r["accuracy"] == 1.0
    assert [row["completion"] for row in r["rows"]] == [f"<answer>{ex.prompt}</answer>" for ex in exs]


def test_evaluate_sampling_reports_pass_and_maj_and_leaves_the_rng_alone(tiny):
    task = get_task("countdown", **COUNTDOWN)
    before = torch.get_rng_state()
    kw = {"limit": 3, "batch_size": 6, "max_new_tokens": 8, "temperature": 1.0, "samples": 4}
    a = evaluate(tiny.model, tiny.tokenizer, task, seed=1, **kw)
    assert torch.equal(torch.get_rng_state(), before)  # the trainer's random stream is untouched
    assert a == evaluate(tiny.model, tiny.tokenizer, task, seed=1, **kw)  # seeded
    assert {"pass@1", "pass@2", "pass@4", "maj@4"} <= set(a) and a["n"] == 3
    assert a["pass@1"] == pytest.approx(a["accuracy"]) and a["pass@1"] <= a["pass@4"]
    with pytest.raises(ValueError, match="temperature"):
        evaluate(tiny.model, tiny.tokenizer, task, samples=2, temperature=0.0)


# ---------------------------------------------------------------------------- load_trained()

def _ids() -> torch.Tensor:
    return torch.tensor([[5, 70, 101, 32, 9, 200]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _save_checkpoint(path: Path, policy, cfg: dict) -> Path:
    """Lay a checkpoint out as aha.checkpoint.save does (weights, tokenizer, config.yaml, meta.json)."""
    policy.model.save_pretrained(path)  # a LoRA adapter, or the full model
    policy.tokenizer.save_pretrained(path)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "meta.json").write_text(json.dumps({"step": 1, "complete": True}))
    return path


def _trained_lora(seed: int):
    policy = load_policy(TINY, "lora", device="cpu", seed=seed)
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter matter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return policy


def test_load_trained_lora_checkpoint_restores_the_same_model(tmp_path):
    policy = _trained_lora(seed=3)  # seed 3: the random base must be redrawn with the run's seed
    expected = _logits(policy.model.eval())
    ckpt = _save_checkpoint(tmp_path / "step-1", policy, {"model": TINY, "finetune": "lora", "seed": 3})
    loaded = load_trained(checkpoint=ckpt, device="cpu")
    assert loaded.finetune == "lora" and not loaded.model.training
    torch.testing.assert_close(_logits(loaded.model), expected)
    # The same directory as an adapter: its base comes from the config.yaml beside it.
    torch.testing.assert_close(_logits(load_trained(adapter=ckpt, device="cpu").model), expected)


def test_load_trained_full_checkpoint_and_run_dir(tmp_path):
    policy = load_policy(TINY, "full", device="cpu", seed=0)
    with torch.no_grad():
        policy.model.model.norm.weight.mul_(1.5)
    expected = _logits(policy.model.eval())
    run = tmp_path / "run"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    _save_checkpoint(run / "checkpoints" / "step-2", policy, {"model": TINY, "finetune": "full", "seed": 0})
    (run / "checkpoints" / "step-5").mkdir()  # an unfinished later save: no weights, no meta.json
    loaded = load_trained(checkpoint=run, device="cpu")  # a run dir: its latest complete checkpoint
    assert loaded.finetune == "full"
    torch.testing.assert_close(_logits(loaded.model), expected)


def test_load_trained_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained(checkpoint=tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        load_trained(adapter=tmp_path)
    policy = _trained_lora(seed=0)
    adapter = tmp_path / "adapter"
    policy.model.save_pretrained(adapter)  # a bare adapter: random bases record no name
    from aha.errors import ModelError

    with pytest.raises(ModelError, match="--model"):
        load_trained(adapter=adapter, device="cpu")
    incomplete = _save_checkpoint(tmp_path / "step-9", policy, {"model": TINY, "finetune": "lora"})
    (incomplete / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_trained(checkpoint=incomplete)


def test_adapter_for_a_different_base_model(tmp_path, capsys):
    policy = _trained_lora(seed=0)
    ckpt = _save_checkpoint(tmp_path / "ckpt", policy, {"model": TINY, "finetune": "lora", "seed": 0})
    # Different shapes (the 135M architecture, random weights): a clear error naming the real base.
    fit = r"does not fit base model 'random:smollm2-135m'.*--model random:tiny-qwen2"
    with pytest.raises(CheckpointError, match=fit):
        load_trained(adapter=ckpt, model="random:smollm2-135m", device="cpu")
    # Same shapes, another name: it loads, with a warning naming both.
    load_trained(adapter=ckpt, model="random:tiny-llama", device="cpu")
    assert "trained on 'random:tiny-qwen2'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- aha eval

def test_eval_cli_on_a_smoke_checkpoint_writes_json_and_a_table(smoke_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(smoke_run / "checkpoints" / "step-3"), "--limit", "3",
               "--max-new-tokens", "8", "--json", str(out), "--save-completions"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "countdown/test, 3 examples, greedy" in table
    r = json.loads(out.read_text())
    for key in ("n", "accuracy", "format_rate", "completion_len", "reflection_rate"):
        assert key in r
    # Task and options come from the checkpoint's config.yaml (the smoke preset: countdown, 16 tests).
    assert r["task"] == "countdown" and r["task_options"]["n_test"] == 16 and r["model"] == TINY
    assert (r["n"], r["limit"], r["temperature"], r["samples"], r["engine"]) == (3, 3, 0.0, 1, "hf")
    assert [row["id"] for row in r["rows"]] == ["countdown/test/0", "countdown/test/1", "countdown/test/2"]


def test_eval_cli_sampling_and_task_options(smoke_run, capsys):
    rc = main(["eval", "--checkpoint", str(smoke_run), "--task-option", "n_test=4", "--samples", "2",
               "--max-new-tokens", "6", "--json", "-"])
    assert rc == 0
    out = capsys.readouterr()
    r = json.loads(out.out)  # --json -: the JSON alone on stdout, the table on stderr
    assert r["n"] == 4 and r["temperature"] == 1.0 and "maj@2" in r and "pass@2" in r
    assert "maj@2" in out.err


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "/no/such/checkpoint"], "does not exist"),
    (["--adapter", "/no/such/adapter"], "not a LoRA adapter"),
    (["--model", TINY], "which task"),
    ([], "nothing to evaluate"),
    (["--model", TINY, "--task", "countdown", "--task-option", "colour=blue"], "does not accept"),
    (["--model", TINY, "--task", "gsm8k", "--data", "/no/such/test.jsonl"], "not found"),
])
def test_eval_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aha: error:") and message in err[0]


def test_eval_cli_adapter_for_another_model_exits_2(smoke_run, capsys):
    rc = main(["eval", "--adapter", str(smoke_run / "checkpoints" / "step-3"), "--model", "random:smollm2-135m",
               "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit base model" in err and "--model random:tiny-qwen2" in err


@pytest.mark.slow
def test_smollm2_on_50_gsm8k_problems_gives_the_same_numbers_twice(tmp_path, capsys, gsm8k_dir):
    """The bundled real 135M model, greedy, on the first 50 problems of the GSM8K test split."""
    data = gsm8k_dir / "test.jsonl"  # the local copy, else the hub's (tests/conftest.py)
    results = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        rc = main(["eval", "--model", "smollm2-135m", "--device", "cpu", "--task", "gsm8k", "--data", str(data),
                   "--limit", "50", "--max-new-tokens", "64", "--batch-size", "25", "--json", str(out)])
        assert rc == 0
        results.append(json.loads(out.read_text()))
    print(capsys.readouterr().out, file=sys.stderr)
    metrics = ("n", "accuracy", "format_rate", "completion_len", "reflection_rate", "truncated_rate")
    assert [results[0][k] for k in metrics] == [results[1][k] for k in metrics]
    assert results[0]["n"] == 50 and results[0]["completion_len"] > 0

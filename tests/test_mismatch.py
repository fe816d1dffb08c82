"""The rollout/trainer mismatch (issue 16): the engines return the log-probs of the tokens they sampled,
under the distribution they sampled from; with the native engine in float32 on a CPU the trainer's
log-probs of the same tokens agree to float noise - once both are on the same top-k / top-p support."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aha.logprobs import batch_logprobs
from aha.model import load_base, load_policy
from aha.rollout import Rollout, concat_rollouts, generate
from aha.sampling import SamplingParams
from aha.sampling import truncate_logits
from aha.update import micro_batches


def trainer_logprobs(model, ro: Rollout, params: SamplingParams, support: bool = True) -> torch.Tensor:
    """The trainer's log-probs of the rollout's tokens (B, C), as the update computes them."""
    (mb,) = micro_batches(ro, torch.arange(len(ro.texts)), torch.zeros(len(ro.texts)), 1_000_000)
    with torch.no_grad():
        out = batch_logprobs(model, mb, params.temperature or 1.0, 64,
                             support=(params.top_k, params.top_p) if support else None)
    return out[2] if support else out[0]


def max_abs_diff(ro: Rollout, logp: torch.Tensor) -> float:
    m = ro.completion_mask.bool()
    return (logp - ro.logprobs[:, :logp.shape[1]])[m[:, :logp.shape[1]]].abs().max().item()


SAMPLING = [SamplingParams(max_new_tokens=16, temperature=1.0),
            SamplingParams(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=30)]


@pytest.mark.parametrize("params", SAMPLING, ids=["T1", "T0.7-top_p-top_k"])
@pytest.mark.parametrize("engine", ["native", "hf"])
def test_engine_logprobs_match_the_trainer_in_float32(engine, params):
    torch.manual_seed(0)
    pol = load_policy("random:tiny-qwen2", device="cpu", seed=0)
    prompts = [p for p in ("short prompt", "a somewhat longer prompt than that") for _ in range(4)]
    ro = generate(pol.model, pol.tokenizer, prompts, params, engine)
    assert ro.logprobs is not None and ro.logprobs.shape == ro.completion_ids.shape
    assert (ro.logprobs[ro.completion_mask.bool()] < 0).all() and (ro.logprobs[~ro.completion_mask.bool()] == 0).all()
    assert max_abs_diff(ro, trainer_logprobs(pol.model, ro, params)) < 1e-4


def test_native_engine_matches_the_trainer_on_smollm2_and_the_support_matters():
    """The acceptance figure: the real 135M model, float32 on CPU, the native engine: < 1e-4. Under top-p /
    top-k, comparing against the trainer's full-vocabulary log-probs instead would show log(kept mass), a
    bias of the whole ratio (TRL issue #6789), not a mismatch."""
    model, tok = load_base("smollm2-135m", torch.float32)
    torch.manual_seed(0)
    params = SAMPLING[1]
    prompts = [p for p in ("What is 7 + 5?", "Write one short sentence about the sea.") for _ in range(4)]
    ro = generate(model, tok, prompts, params, "native")
    assert max_abs_diff(ro, trainer_logprobs(model, ro, params)) < 1e-4
    full = trainer_logprobs(model, ro, params, support=False)
    m = ro.completion_mask.bool()
    assert (full - ro.logprobs)[m].mean() < -1e-2  # the kept mass is < 1: the full-vocabulary log-prob is lower


def test_truncate_logits_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])  # softmax = .644 .237 .087 .032
    inf = float("-inf")
    assert truncate_logits(logits, 2, 1.0).tolist() == [[2.0, 1.0, inf, inf]]
    assert truncate_logits(logits, 0, 0.8).tolist() == [[2.0, 1.0, inf, inf]]  # .644 < .8 <= .881
    assert truncate_logits(logits, 0, 0.9).tolist() == [[2.0, 1.0, 0.0, inf]]
    assert truncate_logits(logits, 3, 0.5).tolist() == [[2.0, inf, inf, inf]]
    assert torch.equal(truncate_logits(logits, 0, 1.0), logits)


def test_truncate_logits_keeps_a_tie_on_the_boundary_whole():
    """Top-k keeps every token tied with the k-th; top-p every token tied with the least likely one of the
    nucleus (HF's warpers would keep whichever of the tied tokens `torch.sort` happened to put first)."""
    inf = float("-inf")
    logits = torch.tensor([[0.0, 2.0, 1.0, 1.0, -1.0]])  # softmax ~ .071 .521 .191 .191 .026
    assert truncate_logits(logits, 2, 1.0).tolist() == [[inf, 2.0, 1.0, 1.0, inf]]
    assert truncate_logits(logits, 0, 0.7).tolist() == [[inf, 2.0, 1.0, 1.0, inf]]  # .521 < .7 <= .712: one 1.0 is in
    assert truncate_logits(logits, 0, 0.5).tolist() == [[inf, 2.0, inf, inf, inf]]


def test_concat_rollouts_repads_and_keeps_logprobs():
    def ro(p, c):
        return Rollout(torch.full((1, p), 7), torch.ones(1, p, dtype=torch.long), torch.full((1, c), 8),
                       torch.ones(1, c, dtype=torch.long), ["x"], torch.tensor([False]), torch.full((1, c), -0.5))
    out = concat_rollouts([ro(2, 3), ro(4, 1)], pad_id=0)
    assert out.prompt_ids.tolist() == [[0, 0, 7, 7], [7, 7, 7, 7]] and out.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert out.completion_ids.tolist() == [[8, 8, 8], [8, 0, 0]] and out.completion_mask[1].tolist() == [1, 0, 0]
    assert out.logprobs.tolist() == [[-0.5] * 3, [-0.5, 0.0, 0.0]] and out.texts == ["x", "x"]


def test_every_step_logs_the_mismatch_and_the_report_plots_it(tmp_path, monkeypatch):
    import matplotlib.figure

    from aha.config import load_config
    from aha.log import read_jsonl
    from aha.report import write_report
    from aha.train import train

    run = train(load_config("smoke", [f"output_dir={tmp_path / 'run'}", "tensorboard=false", "rollout.engine=native"]))
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 3 and all(0 <= r["mismatch/max_abs_logp_diff"] < 1e-4 and r["mismatch/kl"] < 1e-8
                                  for r in rows)
    titles: dict[str, list[str]] = {}
    save = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, path, *args, **kwargs):
        titles[Path(path).name] = [ax.get_title() for ax in fig.axes]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    md = write_report(run).read_text()
    assert {"mismatch/kl", "mismatch/max_abs_logp_diff"} <= set(titles["training.png"])
    assert "mismatch" in md

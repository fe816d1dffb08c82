"""The torch policy update: a step's rollouts packed into micro-batches by a token budget, then
`algo.mu` optimizer steps of the GRPO loss over them, gradients accumulated across micro-batches
(and all-reduced across ranks under torchrun). The arithmetic is in algo.py, the memory-lean
log-probs in logprobs.py; this file is the bookkeeping around them. The loss's variants are
`algo.*` knobs (algo.policy_loss); with the rollout engine's own log-probs (`Rollout.logprobs`) the
update also measures how far the engine samples from the trainer (`Mismatch`) and can correct for it
(TIS / MIS, `algo.rollout_correction`).
"""

from __future__ import annotations

from typing import Any

import torch

from aha import distributed, guards
from aha.algo import loss_weights, mismatch_stats, policy_loss, rollout_is_weight
from aha.config import Config
from aha.logprobs import MicroBatch, batch_logprobs
from aha.records import MISMATCH_KEYS, UpdateStats
from aha.rollout import Rollout


class Mismatch:
    """How far the rollout engine's sampled log-probs are from the trainer's (algo.mismatch_stats),
    summed over a step's micro-batches: `policy_update` adds to it, the step logs `metrics`."""

    def __init__(self) -> None:
        self.kl_sum, self.max_abs, self.tokens = 0.0, 0.0, 0.0

    def add(self, trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> None:
        kl_sum, max_abs, n = mismatch_stats(trainer_logp, rollout_logp, mask)
        self.kl_sum, self.max_abs, self.tokens = self.kl_sum + kl_sum, max(self.max_abs, max_abs), self.tokens + n

    def metrics(self, d: distributed.Dist = distributed.Dist()) -> dict[str, float]:
        """mismatch/kl (mean per token) and mismatch/max_abs_logp_diff over every rank (a collective);
        NaN when nothing was measured on any rank (no engine log-probs, or the update was skipped)."""
        kl_sum, tokens = distributed.all_sum([self.kl_sum, self.tokens], d)
        if tokens == 0:
            return dict.fromkeys(MISMATCH_KEYS, float("nan"))
        return dict(zip(MISMATCH_KEYS, (kl_sum / tokens, max(distributed.gather(self.max_abs, d)))))


def micro_batches(ro: Rollout, rows: torch.Tensor, advantages: torch.Tensor, token_budget: int) -> list[MicroBatch]:
    """Pack `rows` (R,) of a rollout into micro-batches of at most `token_budget` tokens each (at
    least one row). The budget counts what the forward holds: U * P prompt tokens + b * C
    completion tokens (logprobs.batch_logprobs runs each distinct prompt once)."""
    p_len = ro.prompt_mask.sum(dim=1).tolist()  # (N,) host lists: packing is bookkeeping, not tensor work
    c_len = ro.completion_mask.sum(dim=1).tolist()
    # Rows with identical (padded) prompt ids share a prompt: the G rows of a group.
    prompt_of = torch.unique(ro.prompt_ids, dim=0, return_inverse=True)[1].tolist()  # (N,) row -> prompt

    def cost(pack: list[int]) -> int:
        prompts = {prompt_of[r] for r in pack}
        return len(prompts) * max(p_len[r] for r in pack) + len(pack) * max(c_len[r] for r in pack)

    packs: list[list[int]] = [[]]
    for r in rows.tolist():
        if packs[-1] and cost(packs[-1] + [r]) > token_budget:
            packs.append([r])
        else:
            packs[-1].append(r)
    out = []
    P = ro.prompt_ids.shape[1]
    device = ro.prompt_ids.device
    for pack in packs:
        idx = torch.tensor(pack)
        first_row: dict[int, int] = {}  # prompt -> the first row that has it, in order of appearance
        for r in pack:
            first_row.setdefault(prompt_of[r], r)
        order = {p: i for i, p in enumerate(first_row)}
        reps = torch.tensor(list(first_row.values()))  # (U,)
        pw, cw = max(p_len[r] for r in pack), max(max(c_len[r] for r in pack), 1)
        out.append(MicroBatch(
            prompt_ids=ro.prompt_ids[reps, P - pw:], prompt_mask=ro.prompt_mask[reps, P - pw:],
            prompt_index=torch.tensor([order[prompt_of[r]] for r in pack]).to(device),
            completion_ids=ro.completion_ids[idx, :cw], completion_mask=ro.completion_mask[idx, :cw],
            advantages=advantages[idx].to(device),
            rollout_logprobs=None if ro.logprobs is None else ro.logprobs[idx, :cw]))
    return out


def policy_update(model: torch.nn.Module, ro: Rollout, advantages: torch.Tensor, rows: torch.Tensor,
                  optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Config,
                  ref_model: torch.nn.Module | None = None, net: torch.nn.Module | None = None,
                  d: distributed.Dist = distributed.Dist(), mismatch: Mismatch | None = None) -> UpdateStats:
    """`algo.mu` optimizer steps on the rows `rows` (R,) of a rollout, with `advantages` (N,).

    `net` is `distributed.wrap(model, batch_logprobs, d)` (built once by the loop); under torchrun
    each rank passes its own rollout and the result is the 1-process update on all ranks' rows.
    `ref_model`: the frozen reference of full fine-tuning (LoRA disables its adapters instead).
    `mismatch`: where the rollout/trainer mismatch of the policy before this update is added, when the
    rollout carries the engine's log-probs (a collective: every rank passes one, or none does).
    """
    a = cfg.algo
    temperature = cfg.rollout.temperature or 1.0  # log-probs of the distribution we sampled from
    # The trainer's log-probs renormalised over the sampler's top-k / top-p support: what the rollout
    # engine's log-probs are comparable with (the mismatch metrics, TIS / MIS).
    support = (cfg.rollout.top_k, cfg.rollout.top_p)
    net = net if net is not None else distributed.wrap(model, batch_logprobs, d)
    cmask = ro.completion_mask
    # The loss weights use the global batch (all ranks), so the ranks' losses sum to the 1-process loss.
    n_seqs, n_tokens = (int(x) for x in distributed.all_sum([len(rows), cmask[rows].sum().item()], d))
    if n_seqs == 0:  # every group of every rank was dropped (all rewards equal): nothing to learn from
        return UpdateStats.skipped()
    # A rank whose groups were all dropped still joins DDP's all-reduce, with a zero-weighted row.
    idle = len(rows) == 0
    batches = micro_batches(ro, torch.arange(1) if idle else rows, advantages, cfg.micro_batch_tokens)
    if a.rollout_correction != "none" and ro.logprobs is None:
        raise ValueError("algo.rollout_correction needs the rollout engine's log-probs (Rollout.logprobs)")

    def logprobs(mb: MicroBatch, m: torch.nn.Module = model) -> tuple[torch.Tensor, ...]:
        return batch_logprobs(m, mb, temperature, cfg.logprob_chunk, support=support)

    with torch.no_grad():
        # mu > 1 reuses these rollouts for several optimizer steps: the ratio needs the log-probs
        # of the policy that sampled them. With mu = 1 that policy *is* the current one.
        old = [logprobs(mb) for mb in batches] if a.mu > 1 else None
        ref = None
        if a.beta > 0:
            if ref_model is not None:
                ref = [logprobs(mb, ref_model)[0] for mb in batches]
            else:
                with model.disable_adapter():  # LoRA: the base model is the reference
                    ref = [logprobs(mb)[0] for mb in batches]

    loss_sum = kl_sum = clip_sum = entropy_sum = 0.0
    nonfinite = None  # what was NaN/inf in a skipped (or rolled-back) optimizer step
    params = [p for p in model.parameters() if p.requires_grad]
    for it in range(a.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, mb in enumerate(batches):
            with distributed.no_sync(net, sync=i == len(batches) - 1):  # one all-reduce, after the last
                logp, entropy, support_logp = net(mb, temperature, cfg.logprob_chunk, support=support,
                                                  entropy_grad=a.entropy_coef > 0)  # (b, C)
                old_logp, old_support = (old[i][0], old[i][2]) if old else (logp.detach(), support_logp)
                w = loss_weights(mb.completion_mask, a.loss_agg, n_seqs, n_tokens, cfg.rollout.max_new_tokens)
                if idle:
                    w = w * 0.0
                is_weight = None
                if mb.rollout_logprobs is not None:
                    if it == 0 and not idle and mismatch is not None:
                        mismatch.add(old_support, mb.rollout_logprobs, mb.completion_mask)
                    if a.rollout_correction != "none":
                        is_weight = rollout_is_weight(old_support, mb.rollout_logprobs, mb.completion_mask,
                                                      a.rollout_correction_cap, a.rollout_correction,
                                                      a.rollout_correction_level)
                loss, st = policy_loss(logp, old_logp, mb.advantages, w, a, ref_logp=ref[i] if ref else None,
                                       mask=mb.completion_mask, is_weight=is_weight, entropy=entropy)
                # DDP averages gradients over ranks; the global loss is their sum, hence * world.
                (loss * d.world).backward()
            if it == a.mu - 1 and not idle:  # report the last inner iteration's figures
                loss_sum += loss.item()
                kl_sum += st["kl"].item() if "kl" in st else 0.0
                clip_sum += st["clip_frac"].item()
                entropy_sum += (entropy.detach() * mb.completion_mask).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        nonfinite = guards.guarded_step(optimizer, params, grad_norm) or nonfinite  # no NaN/inf into the weights
        scheduler.step()
    loss_sum, kl_sum, clip_sum, entropy_sum = distributed.all_sum([loss_sum, kl_sum, clip_sum, entropy_sum], d)
    return UpdateStats(loss=loss_sum, kl=kl_sum if a.beta > 0 else float("nan"), clip_frac=clip_sum,
                       entropy=entropy_sum / max(n_tokens, 1), grad_norm=grad_norm.item(),
                       update_skipped=float(nonfinite is not None), nonfinite=nonfinite)

"""Data-parallel GRPO under `torchrun`: the few torch.distributed calls the training loop needs.

`torchrun --nproc-per-node N -m aha train -c PRESET` starts N processes; each reads RANK /
WORLD_SIZE / LOCAL_RANK from its environment (`setup`). The loop then:
- draws the same global prompts on every rank (same seed, same cursor) and rolls out only its
  share of whole prompts, so a group's G completions and their advantage never span ranks;
- runs the update through torch's DistributedDataParallel (`wrap`), which all-reduces the
  gradients of the trainable parameters (the LoRA adapters, or all weights) in its backward;
- gathers every rank's rewards and texts to compute the same metrics a 1-process run would;
- writes logs and checkpoints from rank 0 only; the RNG state of every rank goes into the
  checkpoint, so resuming under torchrun continues each rank's sampling exactly.
Without torchrun (WORLD_SIZE unset) everything here is a no-op and nothing is initialised.
NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import gc
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> tuple[Dist, str]:
    """Join the process group torchrun set up for us. Returns (Dist, the device this rank uses)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    if "RANK" not in os.environ:
        from aha.errors import ConfigError

        raise ConfigError(f"WORLD_SIZE={world} is set but RANK is not: start multi-process runs with torchrun "
                          "(README, 'More than one GPU'), or unset WORLD_SIZE for one process")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            from aha.errors import ConfigError

            raise ConfigError(f"torchrun started local rank {local_rank} but only {torch.cuda.device_count()} "
                              f"CUDA devices are visible; lower --nproc-per-node")
        device = f"cuda:{local_rank}"  # one GPU per process: `device=cuda:N` would put them all on one
        torch.cuda.set_device(local_rank)
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank), device


def shutdown(d: Dist) -> None:
    """Leave the process group. Every rank first waits for all the others, so none tears its
    connections down while a peer still uses them. Drop the DDP wrapper before calling this: its
    reducer holds the group, which would then outlive `destroy_process_group` into the
    interpreter's finalization (see `exit_process`)."""
    if d.active and dist.is_initialized():
        gc.collect()  # a dropped DDP wrapper caught in a reference cycle would outlive the group otherwise
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker whose work is done (its files closed, its group destroyed by
    `shutdown`) without the interpreter's finalization. Tearing down torch's distributed C++ objects
    during finalization can abort a finished rank now and then (gloo on CPU: SIGABRT, "terminate
    called without an active exception"), and torchrun then reports a completed run as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shard(items: list[Any], d: Dist) -> list[Any]:
    """This rank's contiguous share of a global list (the prompts of a step)."""
    per = len(items) // d.world
    return items[d.rank * per:(d.rank + 1) * per]


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum over ranks (float64 on the CPU for gloo, on the rank's GPU for NCCL)."""
    if not d.active:
        return list(values)
    device = f"cuda:{d.local_rank}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj` (any picklable value), in rank order, on every rank."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


class LogprobNet(nn.Module):
    """The update's forward as one module, so DDP sees (and syncs) the whole of it: the prompt
    pass and the completion pass of `logprobs.batch_logprobs` happen inside one DDP forward."""

    def __init__(self, model: nn.Module, fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, mb: Any, temperature: float, chunk: int, **options: Any):  # mb: logprobs.MicroBatch
        return self.fn(self.model, mb, temperature, chunk, **options)


def wrap(model: nn.Module, fn: Callable[..., Any], d: Dist) -> nn.Module:
    """The module the update calls with gradients: DDP over `fn(model, ...)` when distributed."""
    net = LogprobNet(model, fn)
    if not d.active:
        return net
    device_ids = [d.local_rank] if next(model.parameters()).is_cuda else None
    # Parameters that get no gradient (frozen base weights) are skipped by DDP on its own;
    # `find_unused_parameters` stays off, as every trainable parameter is used in every forward.
    # Buffers (rotary frequencies) are equal on every rank and never change: no need to re-send them.
    return nn.parallel.DistributedDataParallel(net, device_ids=device_ids, broadcast_buffers=False)


def no_sync(net: nn.Module, sync: bool):
    """Accumulate gradients locally for all but the last micro-batch: one all-reduce per step."""
    if sync or not isinstance(net, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return net.no_sync()

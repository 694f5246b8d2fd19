"""Data parallelism across processes (``accelerate launch`` or ``torchrun`` set the environment).

Each process trains on its slice of every global batch; at each optimizer step the gradients of
all trainable parameters are summed across processes in flat buckets and divided by the process
count, which is what DDP computes. Doing it once per optimizer step (not per micro-batch) keeps
gradient accumulation free of communication, and parameters a step does not touch (CLIP-L's last
layer, which the penultimate-layer conditioning never reads) need no special casing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 32 * 1024 * 1024


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a number over processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t)
        return bool(t.item())

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """grad ← mean over processes, in flat buckets (missing gradients count as zeros)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket, size = [], 0
        for p in params + [None]:
            if p is not None:
                bucket.append(p)
                size += p.numel()
            if bucket and (p is None or size >= BUCKET_ELEMENTS):
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat)
                flat /= self.world
                offset = 0
                for q in bucket:
                    q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                    offset += q.numel()
                bucket, size = [], 0

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

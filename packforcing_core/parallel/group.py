"""Process groups: which processes share one DiT's attention heads, how they meet, and the few
collectives the rest of the package needs.

Meeting: `torchrun` for the CLI (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, on one
machine or several), or a TCPStore on localhost for the worker processes of the ComfyUI pack
(`pool.py`). Backend: NCCL on CUDA, gloo on the CPU. Every collective has a timeout
(PACKFORCING_PARALLEL_TIMEOUT seconds, default 600: longer than anything one rank does alone, such as
the root's VAE work for an `lr` mid block), so a rank that died or stopped answering ends in an error,
never a hang; gloo reports a dead peer at once.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

MOST_GPUS = 8          # the GPU counts a refusal suggests: those of one machine


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("PACKFORCING_PARALLEL_TIMEOUT", "600")))


def backend_for(device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def check_heads(heads: int, ranks: int, name: str) -> None:
    """Each process computes whole heads: refuse a count that does not divide the model's heads."""
    if ranks < 1:
        raise ValueError(f"{name}: {ranks} is not a number of GPUs (1 or more)")
    if heads % ranks:
        ok = [n for n in range(1, min(heads, MOST_GPUS) + 1) if heads % n == 0]
        raise ValueError(f"{name}: the DiT has {heads} attention heads, which do not split evenly over {ranks} "
                         f"GPUs (each GPU computes whole heads): use {', '.join(map(str, ok[:-1]))} or {ok[-1]} GPUs")


class HeadGroup:
    """The processes that share one DiT's attention heads. Rank 0 of the group is its root: it alone
    writes files and computes what only it has the weights for (VAE, compressor branches)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.root = 0 if group is None else dist.get_global_rank(group, 0)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x (size, ...): part i goes to rank i; returns (size, ...) whose part i came from rank i."""
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)
        return out

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's x, concatenated along dim in rank order, on every rank."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim)

    def gather_to_root(self, x: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Every rank's x concatenated along dim on the root; None elsewhere."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.is_root else None
        dist.gather(x, parts, dst=self.root, group=self.group)
        return torch.cat(parts, dim) if self.is_root else None

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """The root's x, written into x on every rank."""
        dist.broadcast(x, src=self.root, group=self.group)
        return x


def torchrun_ranks() -> int:
    """Processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_root() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def from_torchrun(device: str | None, option: str = "--device") -> tuple[HeadGroup | None, str | None]:
    """Join the processes torchrun started (nothing to join when it started one). Each process takes
    cuda:LOCAL_RANK on a GPU machine (or with --device cuda), the CPU and gloo with --device cpu.
    Returns (group or None, the device this process computes on)."""
    if torchrun_ranks() == 1:
        return None, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"{option} {device}: with several processes each one takes cuda:LOCAL_RANK; "
                         "give --device cuda (or cpu), or leave it out")
    if device == "cpu" or (device is None and not torch.cuda.is_available()):
        device = "cpu"
    else:
        if local >= torch.cuda.device_count():
            raise ValueError(f"{option}: process {local} of this machine has no GPU (only "
                             f"{torch.cuda.device_count()} visible): start fewer processes per node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=timeout())
    return HeadGroup(), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share_from_root(x: torch.Tensor | None, group: HeadGroup | None, device) -> torch.Tensor | None:
    """The root's tensor (float32, or None) on every rank: what only the root can compute (a start
    latent encoded with the VAE only it loaded)."""
    if group is None:
        return x
    head = torch.zeros(9, dtype=torch.int64, device=device)          # present, rank, up to 7 sizes
    if group.is_root and x is not None:
        head[0], head[1] = 1, x.dim()
        head[2:2 + x.dim()] = torch.tensor(x.shape)
    group.broadcast(head)
    if not head[0]:
        return None
    shape = tuple(head[2:2 + int(head[1])].tolist())
    data = x.to(device, torch.float32).contiguous() if group.is_root else \
        torch.empty(shape, dtype=torch.float32, device=device)
    return group.broadcast(data)

"""Data-parallel training with ``torch.distributed``: the trainings run unchanged under
``torchrun --nproc-per-node N`` (NCCL on CUDA, one GPU per process; gloo on the CPU).

- ``batch_size`` in a config is the **global** batch: each of the N processes takes
  ``batch_size / N`` crops a step, and the learning rate (set for the global batch) does not change
  with N. The epoch's crops are the same seeded permutation as in one process, cut into global
  batches; process r takes its slice of each one, so the union of a step's slices is the one-process
  batch and per-sample augmentation is seeded by the sample's index whichever process draws it. With
  N > 1 the last partial global batch of an epoch is dropped, so every process takes the same steps.
- BatchNorm stays global: ``torch.nn.SyncBatchNorm`` on CUDA; on the CPU (gloo), where torch's
  SyncBatchNorm does not run, ``CpuSyncBatchNorm`` all-reduces the batch statistics itself.
- Losses keep their meaning per global batch: the classifier divides its summed loss by the box
  count of the whole global (and accumulated) batch; ``max_targets`` caps each process at
  ``max_targets / N`` boxes.
- Only process 0 writes checkpoints, logs, curves and predictions, and validates (the others wait):
  validation is a small part of an epoch, and predictions run as their own stages after training.
- ``split.json`` records ``world_size``; a run resumed with another N says what changes (the
  per-process batch; the global batch and the learning rate stay).
- A process that fails ends the job: torchrun stops the others and exits non-zero; the failing
  process prints its one ``error:`` line. ``KZLIB_FAIL_RANK=R`` makes process R fail on purpose
  (to check that path).
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from kzlib.errors import EnvironmentProblem, UsageError


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def backend(device: torch.device) -> str:
    """The process group's backends: on CUDA NCCL for the GPUs' tensors *and* gloo for the CPU's (the
    kit's own reductions — losses, counts, the time budget — are CPU numbers; NCCL alone has no CPU
    backend); on the CPU gloo."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def timeout() -> timedelta:
    """How long a collective may wait (``$KZLIB_DIST_TIMEOUT_MIN``, default 120 minutes): the other
    processes wait in a barrier while process 0 validates a fold's pages, which takes longer than
    NCCL's default watchdog of 10 minutes on big folds."""
    return timedelta(minutes=float(os.environ.get("KZLIB_DIST_TIMEOUT_MIN", 120)))


def init(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (no-op otherwise); returns this process's
    device (its own GPU on CUDA)."""
    r, n, local = world()
    if n > 1 and not active():
        if device.type == "cuda":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group(backend(device), timeout=timeout())
    elif device.type == "cuda" and n > 1:
        device = torch.device("cuda", local)
    if os.environ.get("KZLIB_FAIL_RANK") == str(r):  # fault injection: how a failing process ends the job
        raise EnvironmentProblem(f"process {r} failed on purpose (KZLIB_FAIL_RANK)")
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(value: float) -> float:
    """The sum of ``value`` over the processes."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_max(value: float) -> float:
    """The largest ``value`` of the processes."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def per_process_batch(batch_size: int) -> int:
    n = size()
    if batch_size % n:
        raise UsageError(f"batch_size {batch_size} (the global batch) does not split over {n} processes")
    return batch_size // n


class EpochShard(Sampler):
    """This process's indices of the epoch: the seeded permutation (the one one process would
    use), cut into global batches of ``batch_size``; process r takes its slice of each."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world = rank(), size()
        self.local = batch_size // self.world

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        if self.world == 1:
            return iter(perm)
        out = []
        for start in range(0, self.n - self.batch_size + 1, self.batch_size):
            out += perm[start + self.rank * self.local: start + (self.rank + 1) * self.local]
        return iter(out)

    def __len__(self) -> int:
        return self.n if self.world == 1 else (self.n // self.batch_size) * self.local


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are all-reduced over the processes, for the CPU (gloo),
    where ``torch.nn.SyncBatchNorm`` does not run; ``torch.distributed.nn.all_reduce`` carries the
    gradients back. Outside a distributed run it is plain BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D)")

    def forward(self, x):
        if not (self.training and active()):
            return super().forward(x)
        with warnings.catch_warnings():  # deprecated in favour of a private API; it does carry the gradients
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn import all_reduce

            dims = [d for d in range(x.dim()) if d != 1]
            count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
            stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = stats[c: 2 * c] / total - mean * mean
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * total / max(1.0, float(total) - 1))
            self.num_batches_tracked += 1
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every trainable BatchNorm made global over the processes (frozen ones are left alone)."""
    if not active():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        out = module
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, CpuSyncBatchNorm):
            out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            out.load_state_dict(module.state_dict())
            out.train(module.training)
            for p_new, p_old in zip(out.parameters(), module.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out
    return convert(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around the model in a distributed run (the model itself otherwise)."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_sync(model: nn.Module):
    """Skip the gradient all-reduce of a micro-batch that is not the last of its step."""
    return model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else nullcontext()


def close() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()

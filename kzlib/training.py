"""The parts of a training loop that the detector and the classifier share: seeds, the learning-rate
schedule, the optimisation (optimizer, schedule, GradScaler, and the micro-batches a step is cut into
when the GPU runs out of memory), the epochs with their seeded loaders and deadline, and ``Training``
— what a loop works with once its model is built.

Each stage has one training step, ``step(model, batch, optimisation)`` (``kzlib.detect.train.step``,
``kzlib.classify.train.step``): the epochs run it, and so do the memory fit and the time budget
before them (``kzlib.fit``)."""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from kzlib import distributed
from kzlib.devices import Precision, cudnn_benchmark
from kzlib.errors import EnvironmentProblem
from kzlib.io import write_json_atomic
from kzlib.runs import CheckpointSaver, OpenedRun, RunDir

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, epoch, index): the same sample gets the same randomness
    whether a run goes straight through or is resumed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------- schedule

def lr_factor(it: int, *, iters_per_epoch: int, epochs: int, warmup_iters: int, schedule: str,
              steps: tuple[int, ...], gamma: float, warmup_factor: float = 1e-3) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then step (x gamma at each
    epoch in ``steps``) or cosine to zero at the end."""
    factor = 1.0
    if it < warmup_iters:
        a = it / max(1, warmup_iters)
        factor = warmup_factor * (1 - a) + a
    epoch = it // max(1, iters_per_epoch)
    if schedule == "step":
        return factor * gamma ** sum(epoch >= s for s in steps)
    if schedule == "cosine":
        total = max(1, iters_per_epoch * epochs)
        return factor * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    raise ValueError(f"unknown schedule {schedule!r} (step or cosine)")


# ---------------------------------------------------------------------------------- optimisation

class Optimisation:
    """What the training stages share: SGD with momentum (or AdamW) over the trainable parameters, the
    per-step learning-rate schedule (``lr_factor``), the mixed precision (``kzlib.devices.Precision``)
    with its GradScaler, and ``split``: how many chunks each step's per-process batch is cut into so
    that it fits the GPU (``next_split``). ``cfg`` needs lr, momentum, weight_decay, epochs,
    warmup_epochs, schedule, lr_steps, lr_gamma and the amp settings. ``where`` starts its out-of-memory
    lines ("detector: "); ``tied``: the processes of a distributed run train together (DDP), so a
    split cannot grow in one of them alone (the trial steps before the model is wrapped are not)."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device, steps_per_epoch: int, where: str = "",
                 tied: bool = True):
        params = [p for p in model.parameters() if p.requires_grad]
        if getattr(cfg, "optimizer", "sgd") == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(
            lr_factor, iters_per_epoch=steps_per_epoch, epochs=cfg.epochs,
            warmup_iters=int(cfg.warmup_epochs * steps_per_epoch), schedule=cfg.schedule, steps=cfg.lr_steps,
            gamma=cfg.lr_gamma))
        self.precision = Precision.of(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.scaled)
        self.split = 1
        self.skipped = 0  # steps whose loss was not finite (fp16 overflow) in a row
        self.where, self.tied = where, tied

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "micro_split": self.split}

    def resume(self, model: torch.nn.Module, checkpoint: dict | None, out: Path) -> int:
        """Restore model and optimisation from a run's ``checkpoint.pth``; the first epoch to run.
        A run may resume on another device or with other mixed precision: the scaler's state is
        taken only when both the checkpoint's and this run's scaler were in use."""
        if checkpoint is None:
            return 0
        model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler.is_enabled() and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.split = max(self.split, int(checkpoint.get("micro_split", 1)))
        start = checkpoint["epoch"] + 1
        print(f"resuming {out} at epoch {start} (best F1 so far {checkpoint['best_f1']:.4f})"
              + (f"; {self.split} micro-batches a step, as fitted earlier" if self.split > 1 else ""))
        return start

    def loss_not_finite(self, value: float, where: str) -> None:
        """A loss that is inf or nan: without a GradScaler the run stops (lower the lr); with one
        (fp16) the step goes on — the scaler skips it and lowers its scale — unless it keeps
        happening."""
        if not self.scaler.is_enabled():
            raise FloatingPointError(f"training loss is {value} ({where}); try a lower --lr")
        self.skipped += 1
        print(f"warning: training loss is {value} in fp16 ({where}); the step is skipped and the loss scale "
              f"lowered ({self.skipped} in a row)", flush=True)
        if self.skipped >= MAX_SKIPPED:
            raise FloatingPointError(f"training loss was not finite {self.skipped} steps in a row in fp16 ({where}); "
                                     "train in fp32 (amp false) or bf16 (amp_dtype bf16), or lower the lr")

    def backward(self, forward_backward: Callable[[], T], n: int) -> T:
        """``forward_backward()`` — the forward and backward passes of a step's batch of ``n`` crops
        in ``self.split`` micro-batches — on zeroed gradients; when the GPU runs out of memory
        (``out_of_memory``) the split grows (``next_split``) and the batch runs again. Returns what
        it returns."""
        while True:
            self.optimizer.zero_grad(set_to_none=True)
            try:
                return forward_backward()
            except RuntimeError as e:
                if not out_of_memory(e):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                self.split = next_split(self.split, n, e, self.where, self.tied)

    def step(self) -> None:
        """The optimizer's step through the scaler (a step whose gradients overflowed is skipped)."""
        self.scaler.step(self.optimizer)
        self.scaler.update()


MAX_SKIPPED = 25  # fp16 steps in a row with a non-finite loss before the run gives up
# cuDNN's autotuner in training (the crops have one size, so its tuning pays off); the memory fit's
# and the time budget's trial steps run with the same setting, so they try the algorithms (and their
# workspaces) the training will use
TRAINING_AUTOTUNE = True

# Near full memory cuBLAS and cuDNN report a failed allocation (a handle, a workspace) as a plain
# RuntimeError naming their status, not as torch.OutOfMemoryError; so does a CUDA call outside
# torch's allocator
_LIBRARY_OOM = re.compile(r"CUBLAS_STATUS_(ALLOC_FAILED|NOT_INITIALIZED)|CUDNN_STATUS_(ALLOC_FAILED|NOT_INITIALIZED"
                          r"|INTERNAL_ERROR_(HOST|DEVICE)_ALLOCATION_FAILED)|CUDA error: out of memory")


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the GPU ran out of memory: torch's ``OutOfMemoryError``, or cuBLAS's or
    cuDNN's allocation failures."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and _LIBRARY_OOM.search(str(error)) is not None)


def chunks(n: int, split: int) -> list[range]:
    """``split`` consecutive, nearly equal parts of ``range(n)`` (none empty)."""
    split = max(1, min(split, n))
    bounds = [round(i * n / split) for i in range(split + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def next_split(split: int, per_process: int, error: BaseException, what: str = "", tied: bool = True) -> int:
    """After a CUDA out-of-memory error at ``split`` chunks a step: twice as many (the global batch,
    the loss normalisation and the learning rate stay; only the micro-batches shrink), said in one
    line; when a chunk is already one crop, or the processes of a distributed run are ``tied``
    (they must step together), one ``EnvironmentProblem`` line."""
    if tied and distributed.size() > 1:
        raise EnvironmentProblem(f"{what}out of GPU memory in a {distributed.size()}-process run at "
                                 f"{math.ceil(per_process / split)} crops a micro-batch (the fit at the start was "
                                 "not enough); lower batch_size in the preset")
    if split >= per_process:
        raise EnvironmentProblem(f"{what}out of GPU memory even with one crop a micro-batch "
                                 f"({str(error).splitlines()[0][:120]}); a smaller network or crop is needed")
    new = min(per_process, split * 2)
    print(f"warning: {what}out of GPU memory at {math.ceil(per_process / split)} crops a micro-batch; now "
          f"{math.ceil(per_process / new)} ({new} micro-batches a step; the batch of {per_process}, the loss "
          "normalisation and the learning rate are unchanged)", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return new


def epoch_loader(dataset, cfg, epoch: int, collate_fn, device: torch.device) -> DataLoader:
    """The epoch's shuffled loader; its order is seeded by (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one. In a distributed run each process loads its slice of
    every global batch (``kzlib.distributed.EpochShard``)."""
    generator = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, 1))
    return DataLoader(dataset, batch_size=distributed.per_process_batch(cfg.batch_size), collate_fn=collate_fn,
                      sampler=distributed.EpochShard(len(dataset), cfg.batch_size, generator),
                      num_workers=cfg.workers, pin_memory=device.type == "cuda")


def open_run(run: RunDir, cls: type, cfg, given: dict | None, mode: str, inputs: dict, fold: int | None,
             val_images: Sequence[str] | None) -> OpenedRun:
    """``RunDir.open_training`` in every process of a run: each has read the folder before process 0
    writes to it; a run resumed with another number of processes says what that changes."""
    opened = run.open_training(cls, cfg, given, mode, inputs, fold, val_images)
    distributed.barrier()
    n = distributed.size()
    if opened.saved is not None and n != opened.saved.world_size and distributed.is_main():
        print(f"note: the run was started with {opened.saved.world_size} process(es) and resumes with {n}: the "
              "global batch and the learning rate stay; each process now takes its share of the global batch",
              flush=True)
    return opened


def epoch_row(epoch: int, opt: Optimisation, stats: dict, scores: dict, images: int, train_seconds: float,
              seconds: float) -> dict:
    """The log row of an epoch: learning rate, training stats, validation scores, speed."""
    return {"epoch": epoch, "lr": opt.lr, **stats,
            **{k: scores[k] for k in ("f1", "precision", "recall", "accuracy") if k in scores},
            "train_images_per_s": images / train_seconds, "seconds": seconds, "world_size": distributed.size(),
            "micro_split": opt.split}


@dataclass
class Training:
    """What a training loop works with once its model is built (``Training.begin``): the model
    (saved and validated), the model it trains (data-parallel in a distributed run), the
    optimisation, the first epoch to run and the end-of-epoch checkpoints (``kzlib.runs.CheckpointSaver``,
    which keeps the best validation F1 so far)."""
    model: torch.nn.Module
    ddp: torch.nn.Module
    opt: Optimisation
    start: int
    saver: CheckpointSaver

    @property
    def best(self) -> float:
        return self.saver.best

    @classmethod
    def begin(cls, model: torch.nn.Module, cfg, device: torch.device, run: RunDir, checkpoint: dict | None,
              steps: int, metrics: tuple[str, ...], extra: dict | None = None, keep_last_as_best: bool = False,
              split: int = 1) -> "Training":
        """1. BatchNorm synced across processes; 2. the optimiser and schedule, restored with the model
        from ``checkpoint`` (a resume), with the micro-batch ``split`` that fits (``kzlib.fit.fit_memory``,
        or the checkpoint's); 3. the data-parallel wrapper; 4. the checkpoint saver, its log opened on
        process 0."""
        model = distributed.sync_batchnorm(model, device)
        opt = Optimisation(model, cfg, device, steps)
        opt.split = split
        start = opt.resume(model, checkpoint, run.root)
        ddp = distributed.wrap(model, device)
        saver = CheckpointSaver(run, model, opt, cfg, metrics, extra, keep_last_as_best, checkpoint)
        if distributed.is_main():
            saver.open(start)
        return cls(model, ddp, opt, start, saver)

    def train_epoch(self, one_epoch, *args, **kwargs):
        """``one_epoch(*args)`` with cuDNN's autotuner on (``TRAINING_AUTOTUNE``: the crops have one
        size); validation and prediction run with it off."""
        with cudnn_benchmark(TRAINING_AUTOTUNE):
            return one_epoch(*args, **kwargs)

    def end_epoch(self, epoch: int, stats: dict, scores: dict, images: int, train_seconds: float,
                  seconds: float, last: bool) -> None:
        """Keep the best model, write the checkpoint, the log row and the curves (process 0)."""
        self.saver.save(epoch, scores, epoch_row(epoch, self.opt, stats, scores, images, train_seconds, seconds), last)


def epoch_line(fold, epoch: int, epochs: int, train: str, scores: dict, best: float, seconds: float) -> str:
    """The console line of one finished epoch; ``val -`` when it was not validated, ``best -``
    before any validation."""
    if scores:
        val = f"val F1 {scores['f1']:.4f}" + (f" acc {scores['accuracy']:.3f}" if "accuracy" in scores else "")
    else:
        val = "val -"
    return f"fold {fold} epoch {epoch + 1}/{epochs}: {train} {val} (best {_f1(best)}) {seconds:.0f} s"


def _f1(best: float) -> str:
    """A best validation F1 as printed: ``-`` when nothing was validated (-1)."""
    return f"{best:.4f}" if best >= 0 else "-"


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Global steps in an epoch of ``n`` crops (a distributed run drops the last partial batch)."""
    return math.ceil(n / batch_size) if distributed.size() == 1 else n // batch_size


class Epochs:
    """The epochs ``start..stop-1`` of a training call. With a ``deadline`` (a ``time.time()``
    value) it stops before an epoch that the longest epoch so far says would end after it, and sets
    ``stopped_early``; the run's checkpoint then resumes it (Kaggle sessions end after ~12 h)."""

    def __init__(self, start: int, stop: int, deadline: float | None = None, max_epochs: int | None = None):
        stop = stop if max_epochs is None else min(stop, start + max_epochs)
        self.start, self.stop, self.deadline = start, stop, deadline
        self.stopped_early = False
        self.done = start  # epochs finished, counted from 0

    def __iter__(self):
        longest = 0.0
        for epoch in range(self.start, self.stop):
            late = self.deadline is not None and time.time() + longest > self.deadline
            if distributed.all_sum(float(late)) > 0:  # every process stops together
                print(f"time budget: stopping before epoch {epoch + 1} (an epoch takes up to {longest:.0f} s); "
                      "rerun to resume from the checkpoint", flush=True)
                self.stopped_early = True
                return
            t0 = time.time()
            yield epoch
            self.done = epoch + 1
            longest = max(longest, time.time() - t0)

    def loaders(self, dataset, cfg, collate_fn, device: torch.device):
        """(epoch, loader) per epoch: torch's global RNG (dropout, proposal sampling), the dataset's
        augmentations and the batch order are seeded by (seed, epoch), so a resumed run trains as
        an uninterrupted one."""
        for epoch in self:
            torch.manual_seed(sample_seed(cfg.seed, epoch))
            dataset.set_epoch(epoch)
            yield epoch, epoch_loader(dataset, cfg, epoch, collate_fn, device)


def finish_training(result: dict, out, result_file=None) -> None:
    """The end of a training CLI: process 0 reports (and writes ``result_file`` for the runner); a
    distributed run leaves its process group."""
    if distributed.is_main():
        if result_file is not None:
            write_json_atomic(result, result_file)
        print(f"best validation F1 {_f1(result['best_f1'])}; run folder {out}"
              + ("; stopped for the time budget (rerun to resume)" if result.get("stopped_early") else ""))
    distributed.close()

"""Plumbing shared by the training stages: devices, seeds, atomic checkpoints, the per-epoch CSV
log, training curves, typed JSON configs, and the learning-rate schedule."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from functools import partial

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from kzlib.distributed import all_sum
from kzlib.errors import EnvironmentProblem
from kzlib.io import atomic_path, write_csv_atomic

# ---------------------------------------------------------------------------------- runtime

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name} asked for, but no CUDA GPU is available (use --device cpu)")
    return device


def autocast(device: torch.device, amp: bool, amp_cpu: bool = False):
    """Mixed precision: fp16 autocast on CUDA when ``amp``, bf16 autocast on the CPU when ``amp_cpu``
    (CPUs with AVX512-BF16 or AMX run convolutions about twice as fast in bf16); else a no-op."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=amp)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_cpu and cpu_has_bf16())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere bf16 is emulated and
    slower than fp32, so ``amp_cpu`` is ignored."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """NHWC weights (``channels_last``): faster convolutions on recent CPUs and GPUs."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, epoch, index): the same sample gets the same randomness
    whether a run goes straight through or is resumed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save through a temporary file: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: a full disk is an OSError
        torch.save(state, fh)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


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
    per-step learning-rate schedule (``lr_factor``) and the GradScaler (fp16 on CUDA only).
    ``cfg`` needs lr, momentum, weight_decay, epochs, warmup_epochs, schedule, lr_steps, lr_gamma
    and amp."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device, steps_per_epoch: int):
        params = [p for p in model.parameters() if p.requires_grad]
        if getattr(cfg, "optimizer", "sgd") == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(
            lr_factor, iters_per_epoch=steps_per_epoch, epochs=cfg.epochs,
            warmup_iters=int(cfg.warmup_epochs * steps_per_epoch), schedule=cfg.schedule, steps=cfg.lr_steps,
            gamma=cfg.lr_gamma))
        self.use_amp = bool(cfg.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def resume(self, model: torch.nn.Module, checkpoint: dict | None, out: Path) -> tuple[int, float]:
        """Restore model and optimisation from a run's ``checkpoint.pth``; (first epoch, best F1)."""
        if checkpoint is None:
            return 0, -1.0
        model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        start, best = checkpoint["epoch"] + 1, checkpoint["best_f1"]
        print(f"resuming {out} at epoch {start} (best F1 so far {best:.4f})")
        return start, best


def epoch_loader(dataset, cfg, epoch: int, collate_fn, device: torch.device) -> DataLoader:
    """The epoch's shuffled loader; its order is seeded by (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one. In a distributed run each process loads its slice of
    every global batch (``kzlib.distributed.EpochShard``)."""
    from kzlib.distributed import EpochShard, per_process_batch

    generator = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, 1))
    return DataLoader(dataset, batch_size=per_process_batch(cfg.batch_size), collate_fn=collate_fn,
                      sampler=EpochShard(len(dataset), cfg.batch_size, generator),
                      num_workers=cfg.workers, pin_memory=device.type == "cuda")


def begin(model: torch.nn.Module, cfg, device: torch.device, run, checkpoint: dict | None, steps: int,
          metrics: tuple[str, ...], extra: dict | None = None, keep_last_as_best: bool = False):
    """What every training does once its model is built: BatchNorm synced across processes, the
    optimiser and schedule (restored from ``checkpoint``), the data-parallel wrapper and the
    end-of-epoch bookkeeping (``kzlib.runs.EpochEnd``, its log opened on process 0).
    Returns (model, wrapped model, Optimisation, first epoch, best F1, EpochEnd)."""
    from kzlib import distributed
    from kzlib.runs import EpochEnd

    model = distributed.sync_batchnorm(model, device)
    opt = Optimisation(model, cfg, device, steps)
    start, best = opt.resume(model, checkpoint, run.root)
    ddp = distributed.wrap(model, device)
    end = EpochEnd(run, cfg, metrics, extra, keep_last_as_best=keep_last_as_best)
    if distributed.is_main():
        end.open(start)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model, ddp, opt, start, best, end


def epoch_line(fold, epoch: int, epochs: int, train: str, scores: dict, best: float, seconds: float) -> str:
    """The console line of one finished epoch; ``val -`` when it was not validated."""
    if scores:
        val = f"val F1 {scores['f1']:.4f}" + (f" acc {scores['accuracy']:.3f}" if "accuracy" in scores else "")
    else:
        val = "val -"
    return f"fold {fold} epoch {epoch + 1}/{epochs}: {train} {val} (best {best:.4f}) {seconds:.0f} s"


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Global steps in an epoch of ``n`` crops (a distributed run drops the last partial batch)."""
    from kzlib.distributed import size

    return math.ceil(n / batch_size) if size() == 1 else n // batch_size


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
            if all_sum(float(late)) > 0:  # every process stops together
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


# ---------------------------------------------------------------------------------- logs

class EpochLog:
    """``log.csv`` of a run folder: one row per epoch, rewritten atomically; on resume the rows
    after the checkpoint's epoch are dropped."""

    def __init__(self, path: str | Path, keep_until_epoch: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        if keep_until_epoch is not None and self.path.exists():
            df = pd.read_csv(self.path)
            self.rows = df[df["epoch"] <= keep_until_epoch].to_dict("records")

    def append(self, row: dict) -> None:
        self.rows.append(row)
        write_csv_atomic(pd.DataFrame(self.rows), self.path)

    def plot(self, png: str | Path, metrics: tuple[str, ...]) -> None:
        """Loss curves on the left, validation metrics on the right."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = pd.DataFrame(self.rows)
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for col in [c for c in df.columns if c.startswith("loss")]:
            a.plot(df["epoch"], df[col], marker=".", label=col)
        a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.set_yscale("log"), a.legend(fontsize=8)
        for col in metrics:
            if col in df:
                b.plot(df["epoch"], df[col], marker="o", label=col)
        b.set_xlabel("epoch"), b.set_ylabel("validation"), b.set_ylim(0, 1), b.grid(alpha=0.3), b.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)

"""Training one fold's detector: short explicit loops in the style of torchvision's references."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from kzlib import distributed
from kzlib.config import validates
from kzlib.data import DataDir
from kzlib.detect.config import DetectConfig
from kzlib.detect.dataset import CropDataset, collate
from kzlib.detect.model import build_model, seed_samplers
from kzlib.detect.predict import agnostic_f1, detect_pages
from kzlib.devices import describe, memory_format, pick_device
from kzlib.errors import UsageError
from kzlib.pages import split_pages
from kzlib.runs import RunDir, Split, input_hashes, load_other_checkpoint
from kzlib.fit import fit_budget, fit_memory
from kzlib.training import Epochs, Optimisation, Training, chunks, epoch_line, open_run, seed_everything, steps_per_epoch


def forward_backward(model, images: list, targets: list, seeds: list[int] | None, opt: Optimisation) -> dict:
    """Forward and backward of one batch in ``opt.split`` micro-batches (each micro-batch's losses,
    the means over its images, weighted by its share of the batch: the gradient of the whole batch);
    returns the batch's losses (empty when a loss was not finite: the scaler skips the step)."""
    parts = chunks(len(images), opt.split)
    sums: dict[str, float] = {}
    finite = True
    for j, idx in enumerate(parts):
        seed_samplers(distributed.unwrap(model), [seeds[i] for i in idx] if seeds else None)
        with distributed.no_sync(model) if j + 1 < len(parts) else nullcontext():
            with opt.precision.autocast():
                losses = model([images[i] for i in idx], [targets[i] for i in idx])
            share = len(idx) / len(images)
            loss = sum(losses.values()) * share
            value = loss.item()
            if not math.isfinite(value):
                finite = False
                opt.loss_not_finite(value, f"batch of {len(images)}")
            opt.scaler.scale(loss).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * share
        sums["loss"] = sums.get("loss", 0.0) + value
    if finite:
        opt.skipped = 0
    return sums if finite else {}


def step(model, batch: tuple, opt: Optimisation) -> dict:
    """One training step on ``batch`` (images, targets, sampler seeds or None; on the device): the
    forward and backward in ``opt.split`` micro-batches on zeroed gradients (more of them when the
    GPU runs out of memory: ``Optimisation.backward``), then the optimizer's step. The epochs run it,
    and so do the memory fit and the time budget (``kzlib.fit``). Returns the batch's losses (empty
    when a loss was not finite)."""
    images, targets, seeds = batch
    losses = opt.backward(lambda: forward_backward(model, images, targets, seeds, opt), len(images))
    opt.step()
    return losses


def train_one_epoch(model, opt: Optimisation, loader, device, desc: str) -> dict:
    model.train()
    opt.where = f"{desc}: "
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", disable=None)
    for images, targets in bar:
        seeds = [int(t.pop("seed")) for t in targets] if all("seed" in t for t in targets) else None  # not to the GPU
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = step(model, (images, targets, seeds), opt)
        opt.scheduler.step()
        if losses:
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{sums.get('loss', 0.0) / max(1, n):.3f}", lr=f"{opt.lr:.2e}")
    n = distributed.all_sum(n)  # the losses of every process (each its own batch's mean), averaged
    return {("loss" if k == "loss" else f"loss_{k.removeprefix('loss_')}"): distributed.all_sum(v) / max(1, n)
            for k, v in sums.items()}


def one_batch(dataset: CropDataset, cfg: DetectConfig, device: torch.device, k: int = 0):
    """The ``k``-th batch of one process in the dataset's order (wrapping round), on ``device``:
    (images, targets, seeds)."""
    n = distributed.per_process_batch(cfg.batch_size)
    images, targets = collate([dataset[(k * n + i) % len(dataset)] for i in range(min(n, len(dataset)))])
    seeds = [int(t.pop("seed")) for t in targets]
    return [im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets], seeds


def train(data_dir: Path, out: Path, cfg: DetectConfig, fold: int | None = None, val_images: Sequence[str] | None = None,
          mode: str = "start", given: dict | None = None, max_epochs: int | None = None,
          deadline: float | None = None) -> dict:
    """Train a fold's detector into the run folder ``out`` (``mode``: start, resume or auto; see
    ``RunDir.resume_or_start``; ``given`` the config values given as flags). Returns the best
    validation scores. ``max_epochs`` stops after that many epochs of this call, ``deadline`` (a
    ``time.time()`` value) before an epoch that would end after it; the run stays resumable. Under
    ``torchrun`` it trains data-parallel (``kzlib.distributed``); process 0 writes and validates."""
    device = distributed.init(pick_device(cfg.device))
    run = RunDir(out)
    inputs = input_hashes({"train.csv": DataDir(Path(data_dir)).train_csv})
    opened = open_run(run, DetectConfig, cfg, given, mode, inputs, fold, val_images)
    cfg, checkpoint, fold, val_images = opened.cfg, opened.checkpoint, opened.fold, opened.val_images
    train_pages, val_pages = split_pages(Path(data_dir), fold, cfg.n_folds, val_images)

    seed_everything(cfg.seed)
    model = memory_format(build_model(cfg, load_pretrained=checkpoint is None and not cfg.init_from).to(device),
                          cfg.channels_last)
    if cfg.init_from and checkpoint is None:
        try:
            model.load_state_dict(load_other_checkpoint(cfg.init_from, "the checkpoint to start from")["model"])
        except RuntimeError as e:
            raise UsageError(f"{cfg.init_from}: cannot start from this checkpoint "
                             f"({str(e).splitlines()[0]}); same backbone and fpn_channels needed") from None
    dataset = CropDataset(train_pages, cfg)
    # on CUDA, before the processes are tied together: the micro-batches a step needs, tried on a batch of
    # the largest crops; first, for the budget's steps must fit too
    split = fit_memory(model, step, one_batch(dataset, cfg, device), cfg, device,
                       distributed.per_process_batch(cfg.batch_size), checkpoint, "detector: ") \
        if device.type == "cuda" else 1
    if opened.saved is None:
        cfg = fit_budget(cfg, model, step, lambda k: one_batch(dataset, cfg, device, k),
                         lambda: detect_pages(model, val_pages[:1], cfg, device), len(val_pages),
                         steps_per_epoch(len(dataset), cfg.batch_size), device, split, "detector: ")
        if distributed.is_main():
            run.start(cfg, Split(str(Path(data_dir).resolve()), fold, cfg.n_folds, bool(val_images),
                                 [p.image_id for p in train_pages], [p.image_id for p in val_pages], inputs=inputs,
                                 world_size=distributed.size()))
    distributed.barrier()
    t = Training.begin(model, cfg, device, run, checkpoint, steps_per_epoch(len(dataset), cfg.batch_size),
                       ("f1", "precision", "recall"), keep_last_as_best=not val_pages or not cfg.validate_every, split=split)
    if distributed.is_main():
        print(f"device: {describe(device)}; {t.opt.precision}; {distributed.size()} process(es); "
              f"{t.opt.split} micro-batch(es) a step", flush=True)

    epochs = Epochs(t.start, cfg.epochs, deadline, max_epochs)
    for epoch, loader in epochs.loaders(dataset, cfg, collate, device):
        t0 = time.time()
        losses = t.train_epoch(train_one_epoch, t.ddp, t.opt, loader, device, f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        t_train = time.time() - t0
        last = epoch + 1 == cfg.epochs
        if distributed.is_main():
            scores = agnostic_f1(val_pages, detect_pages(model, val_pages, cfg, device, "validate")) \
                if val_pages and validates(epoch, cfg.epochs, cfg.validate_every) else {}
            t.end_epoch(epoch, losses, scores, len(dataset), t_train, time.time() - t0, last)
            print(epoch_line(fold, epoch, cfg.epochs, f"loss {losses.get('loss', 0):.4f}", scores, t.best,
                             time.time() - t0), flush=True)
        distributed.barrier()
    return {"best_f1": t.best, "epochs_done": epochs.done, "stopped_early": epochs.stopped_early}

"""Before a training starts: the micro-batches a step needs to fit the GPU (``fit_memory``) and the
epochs that fit the time budget (``fit_budget``). Both run the stage's own training step,
``step(model, batch, optimisation)`` (``kzlib.detect.train.step``, ``kzlib.classify.train.step``: the
step the epochs run), on an optimisation of their own, in trials that leave no trace (``trial``)."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from kzlib import distributed
from kzlib.config import validations
from kzlib.devices import cudnn_benchmark
from kzlib.training import TRAINING_AUTOTUNE, Optimisation, next_split, out_of_memory

Step = Callable[[torch.nn.Module, object, Optimisation], object]  # step(model, batch, optimisation)


@contextmanager
def trial(model: torch.nn.Module):
    """Trial steps that leave no trace: the model's weights and statistics and the random generators
    (Python's, NumPy's, torch's on every device) come back as they were."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            model.load_state_dict(weights)
            random.setstate(python)
            np.random.set_state(numpy)


def ddp_bucket_bytes(model: torch.nn.Module) -> int:
    """What DistributedDataParallel adds in memory: its gradient buckets, a copy of every trainable
    parameter's gradient."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@contextmanager
def held(nbytes: int, device: torch.device):
    """``nbytes`` of ``device`` memory taken for the duration (room kept for what a trial leaves out)."""
    block = torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None
    try:
        yield block
    finally:
        del block


def probe(model: torch.nn.Module, cfg, device: torch.device, what: str, split: int = 1) -> Optimisation:
    """The trials' own optimisation (the training's is made after them), its processes not tied: in a
    distributed run each grows its split alone before the model is wrapped."""
    opt = Optimisation(model, cfg, device, 1, where=what, tied=False)
    opt.split = split
    return opt


def fit_memory(model: torch.nn.Module, step: Step, batch, cfg, device: torch.device, per_process: int,
               checkpoint: dict | None, what: str) -> int:
    """The fewest micro-batches a step of ``per_process`` crops needs to fit the GPU: the stage's
    ``step`` on ``batch`` (a whole training step, the optimizer's included: its state, SGD's
    momentum, takes memory too) with 1, 2, 4 ... chunks, from the split a checkpoint recorded, until
    it runs without running out of memory (``out_of_memory``; the step grows the split of its
    forward and backward itself, this the split that the optimizer's step ran out at). First a
    warm-up step in the smallest micro-batches (one crop each) creates cuBLAS's and cuDNN's handles
    and workspaces while memory is free; in a distributed run the trials keep room for DDP's
    gradient buckets (the model is wrapped only after the fit), and the processes take the largest
    split. The trials leave the model as it was (BatchNorm statistics move) and the peak-memory
    counter reset."""
    start = int(checkpoint.get("micro_split", 1)) if checkpoint else 1
    buckets = ddp_bucket_bytes(model) if distributed.size() > 1 else 0
    opt = probe(model, cfg, device, what)
    model.train()
    with trial(model), cudnn_benchmark(TRAINING_AUTOTUNE), held(buckets, device):
        for split in (per_process, start):  # the warm-up (at one crop a micro-batch nothing smaller is left), the fit
            opt.split = split
            while True:
                try:
                    step(model, batch, opt)
                    break
                except RuntimeError as e:
                    if not out_of_memory(e):
                        raise
                    opt.split = next_split(opt.split, per_process, e, what, tied=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return int(distributed.all_max(opt.split))


def epochs_within(budget_s: float, asked: int, epoch_s: float, validation_s: float, validate_every: int = 1) -> int:
    """The most epochs, at most ``asked`` and at least 1, whose training (``epoch_s`` each) and
    validations (``config.validates``: every ``validate_every`` epochs and after the last, none for 0;
    ``validation_s`` each) fit in
    ``budget_s`` seconds."""
    best = 1
    for e in range(1, asked + 1):
        if e * epoch_s + validations(e, validate_every) * validation_s <= budget_s:
            best = e
    return best


def time_step(step: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of ``step()``: the median of ``repeats`` runs after a first one that warms up."""
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def budget_line(cfg, epochs: int, step_s: float, steps: int, validation_s: float) -> str:
    return (f"time budget {cfg.time_budget_s:.0f} s: a step takes {step_s:.2f} s here ({steps} steps an epoch), a "
            f"validation {validation_s:.0f} s: {epochs} of the preset's {cfg.epochs} epochs fit")


def fit_budget(cfg, model: torch.nn.Module, step: Step, batch: Callable[[int], object], validate_one: Callable[[], object],
               n_val: int, steps: int, device: torch.device, split: int, what: str):
    """With ``cfg.time_budget_s`` > 0, ``cfg`` with the epochs that fit the budget
    (``epochs_within``): ``batch(k)`` loads the ``k``-th step's batch (the second one is timed: the
    first pays for warming the decoders up), the stage's ``step`` trains on it in ``split``
    micro-batches (timed a few times), ``validate_one()`` validates one of the ``n_val`` held-out
    pages; ``steps`` an epoch. The trials leave no trace (``trial``), so the training that follows
    is the one it would have been with those epochs asked."""
    if cfg.time_budget_s <= 0:
        return cfg
    validation_s = 0.0
    opt = probe(model, cfg, device, what, split)
    with trial(model):
        b = batch(0)
        t0 = time.perf_counter()
        batch(1)
        data_s = time.perf_counter() - t0
        model.train()
        with cudnn_benchmark(TRAINING_AUTOTUNE):  # the algorithms the training will run
            step_s = time_step(lambda: step(model, b, opt)) + data_s
        if n_val and cfg.validate_every:
            model.eval()
            validation_s = time_step(validate_one, repeats=1) * n_val
    epochs = int(distributed.all_max(epochs_within(cfg.time_budget_s, cfg.epochs, steps * step_s, validation_s,
                                                   cfg.validate_every)))
    if distributed.is_main():
        print(budget_line(cfg, epochs, step_s, steps, validation_s), flush=True)
    return replace(cfg, epochs=epochs)

"""Training one fold's classifier on the detector's out-of-fold boxes (plus pseudolabelled test
pages): explicit loops, gradient accumulation normalised over the whole accumulated batch."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kzlib import distributed
from kzlib.classify.config import ClassifyConfig
from kzlib.classify.dataset import (CropDataset, cap_targets, check_inside, class_index, collate,
                                    pages_from_boxes, pseudo_pages, read_boxes)
from kzlib.classify.model import Classifier
from kzlib.classify.predict import detailed_frame, detailed_scores, predict_pages, tta_sizes
from kzlib.config import validates
from kzlib.data import SEG_FP, DataDir, DataError, read_labels_csv
from kzlib.images import image_size
from kzlib.devices import describe, memory_format, pick_device
from kzlib.errors import UsageError
from kzlib.pages import Page, best_iou, split_pages
from kzlib.runs import RunDir, Split, input_hashes, load_other_checkpoint
from kzlib.fit import fit_budget, fit_memory
from kzlib.training import (Epochs, Optimisation, Training, chunks, epoch_line, open_run, sample_seed, seed_everything,
                            steps_per_epoch)


def accumulate_gradients(model, micro_batches, device: torch.device, opt: Optimisation,
                         label_smoothing: float = 0.0) -> tuple[float, int, int]:
    """Backward pass over several micro-batches as if they were one batch: each micro-batch's
    summed cross-entropy is divided by the box count of the whole group — of every process in a
    distributed run — so k small steps (or N processes) give exactly the gradient of one big step
    (BatchNorm aside: it sees each micro-batch alone). Returns (mean loss, boxes, correct) of this
    process; boxes 0 when a loss was not finite (fp16: the scaler skips the step)."""
    local = sum(int(sum(len(y) for y in labels)) for _, _, labels in micro_batches)
    total = distributed.all_sum(local)  # DDP averages over the processes: undo it with the world size
    scale = distributed.size() / max(1.0, total)
    loss_sum, correct, finite = 0.0, 0, True
    for k, (images, boxes, labels) in enumerate(micro_batches):
        y = torch.cat(labels).to(device)
        with distributed.no_sync(model) if k + 1 < len(micro_batches) else nullcontext():
            with opt.precision.autocast():
                logits = model(images.to(device, non_blocking=True), [b.to(device) for b in boxes])
            loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                finite = False
                opt.loss_not_finite(value, f"{local} boxes")
            opt.scaler.scale(loss * scale).backward()
        loss_sum += value
        correct += int((logits.argmax(1) == y).sum())
    if not finite:
        return 0.0, 0, 0
    opt.skipped = 0
    return loss_sum / max(1, local), local, correct


def split_micro(images: torch.Tensor, boxes: list, labels: list, split: int) -> list[tuple]:
    """A micro-batch cut into ``split`` smaller ones of consecutive images (one with fewer than two
    boxes joins the one before it: the head's BatchNorm needs two)."""
    out: list[tuple] = []
    for idx in chunks(len(images), split):
        part = (images[idx.start: idx.stop], boxes[idx.start: idx.stop], labels[idx.start: idx.stop])
        if out and sum(len(y) for y in part[2]) < 2:
            prev = out.pop()
            part = (torch.cat([prev[0], part[0]]), prev[1] + part[1], prev[2] + part[2])
        out.append(part)
    if len(out) > 1 and sum(len(y) for y in out[0][2]) < 2:
        first, second = out[0], out[1]
        out[:2] = [(torch.cat([first[0], second[0]]), first[1] + second[1], first[2] + second[2])]
    return out


def same_forwards(parts: list[tuple]) -> list[tuple]:
    """In a distributed run, ``parts`` padded with empty micro-batches (no images, no boxes: they add
    nothing to the loss, the gradients or the BatchNorm statistics) to the most parts any process has,
    so every process runs as many forwards and backwards: SyncBatchNorm reduces across the processes
    in each forward and backward, DDP in the last backward. The counts differ when ``split_micro``
    merges a small chunk or a micro-batch of an accumulated step has fewer than two boxes (without
    this the collectives stop matching: an error on gloo, a hang on NCCL)."""
    most = int(distributed.all_max(len(parts)))
    if most > len(parts):
        images, boxes, labels = parts[0]
        parts = parts + [(images[:0], [boxes[0][:0]], [labels[0][:0]])] * (most - len(parts))
    return parts


def groups(loader, k: int):
    """Consecutive groups of k micro-batches (the last one may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def step(model, batch: list[tuple], opt: Optimisation, device: torch.device, label_smoothing: float = 0.0) -> tuple:
    """One training step on ``batch``, the micro-batches (images, boxes, labels) of an accumulated
    step: each cut into ``opt.split`` smaller ones (more when the GPU runs out of memory:
    ``Optimisation.backward``), their forwards and backwards as one batch (``accumulate_gradients``)
    on zeroed gradients, then the optimizer's step. The epochs run it, and so do the memory fit and
    the time budget (``kzlib.fit``, with ``device`` and ``label_smoothing`` bound). Returns (mean loss,
    boxes, correct) of this process."""
    n_images = max(len(images) for images, _, _ in batch)

    def forward_backward():
        parts = same_forwards([p for images, b, y in batch for p in split_micro(images, b, y, opt.split)])
        return accumulate_gradients(model, parts, device, opt, label_smoothing)

    result = opt.backward(forward_backward, n_images)
    opt.step()
    return result


def train_one_epoch(model, opt: Optimisation, loader, cfg: ClassifyConfig, device, epoch: int, desc: str) -> dict:
    model.train()
    opt.where = f"{desc}: "
    loss_sum, boxes, correct, steps = 0.0, 0, 0, 0
    total_steps = math.ceil(len(loader) / cfg.accumulation_steps)
    bar = tqdm(groups(loader, cfg.accumulation_steps), total=total_steps, desc=desc, leave=False, unit="step", disable=None)
    cap = cfg.max_targets and max(32, cfg.max_targets // distributed.size() // 32 * 32)  # each process's share
    for k, group in enumerate(bar):
        micro = []
        for j, (images, b, y) in enumerate(group):
            g = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, k, j, distributed.rank()))
            b, y = cap_targets(b, y, cap, g)
            if sum(len(t) for t in y) >= 2:  # BatchNorm needs two boxes
                micro.append((images, b, y))
        if distributed.all_sum(float(not micro)) == 0:  # every process steps, or none
            loss, n, ok = step(model, micro, opt, device, cfg.label_smoothing)
            loss_sum, boxes, correct, steps = loss_sum + loss * n, boxes + n, correct + ok, steps + 1
        opt.scheduler.step()
        bar.set_postfix(loss=f"{loss_sum / max(1, boxes):.3f}", lr=f"{opt.lr:.2e}")
    loss_sum, boxes, correct = distributed.all_sum(loss_sum), distributed.all_sum(boxes), distributed.all_sum(correct)
    return {"loss": loss_sum / max(1, boxes), "train_accuracy": correct / max(1, boxes), "train_boxes": int(boxes)}


def one_batch(dataset: CropDataset, cfg: ClassifyConfig, k: int = 0) -> tuple:
    """The ``k``-th loader batch of this process in the dataset's order (wrapping round), its boxes
    capped as in training: (images, boxes, labels)."""
    n = distributed.per_process_batch(cfg.batch_size)
    images, b, y = collate([dataset[(k * n + i) % len(dataset)] for i in range(min(n, len(dataset)))])
    cap = cfg.max_targets and max(32, cfg.max_targets // distributed.size() // 32 * 32)
    return (images, *cap_targets(b, y, cap, torch.Generator().manual_seed(0)))


def add_missed(page: Page, truth: Page, iou: float = 0.5) -> Page:
    """The page's detector boxes plus the true boxes that none of them matches (IoU < ``iou``), so
    characters the detector missed still teach the classifier (and a weak detector still leaves
    something to learn from)."""
    if len(truth.boxes) == 0:
        return page
    missed = best_iou(truth.boxes, page.boxes)[0] < iou
    return Page(page.image_id, page.path, np.concatenate([page.boxes.reshape(-1, 4), truth.boxes[missed]]),
                list(page.codes) + [c for c, m in zip(truth.codes, missed) if m])


def prepare(data_dir: Path, boxes: Path, fold: int, cfg: ClassifyConfig, val_images: Sequence[str] | None,
            pseudolabels: Sequence[Path], classes: Sequence[str] | None):
    """Training pages (OOF boxes of the other folds' pages, pseudolabelled test pages repeated),
    held-out pages with their boxes, the truth of the held-out pages, and the class list."""
    d = DataDir(Path(data_dir))
    train_truth, val_truth = split_pages(d.root, fold, cfg.n_folds, val_images)
    paths = {p.image_id: p.path for p in train_truth + val_truth}
    table = read_boxes(boxes, list(paths), need_true=True)
    check_inside(table, {i: image_size(paths[i]) for i in table["image_id"].unique()}, Path(boxes))
    train_pages = pages_from_boxes(table, [p.image_id for p in train_truth], paths)
    if cfg.add_missed_truth:
        train_pages = [add_missed(p, t) for p, t in zip(train_pages, train_truth)]
    val_pages = pages_from_boxes(table, [p.image_id for p in val_truth], paths)
    extra = []
    if pseudolabels:
        d.require("sample_submission_csv", "test_images")
        test_ids = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()
        test_paths = {i: d.image_path(i, "test") for i in test_ids}
        for f in pseudolabels:
            extra += pseudo_pages(Path(f), test_paths) * max(1, cfg.pseudo_oversample)
    if classes is None:
        seen = {c for p in train_truth + val_truth + extra for c in p.codes}
        classes = sorted(seen - {SEG_FP}) + [SEG_FP]
    source = f"{boxes}" + (f" / {', '.join(map(str, pseudolabels))}" if pseudolabels else "")
    labels = class_index(train_pages + extra, classes, source)
    class_index(val_pages, classes, source)  # held-out boxes must be nameable too
    return train_pages + extra, labels, val_pages, val_truth, list(classes)


def validate(model, val_pages, val_truth, classes, cfg: ClassifyConfig, device) -> dict:
    if not val_pages:
        return {}
    sizes = tta_sizes(cfg.test_size, cfg.scale_aug, cfg.validate_n_tta)
    logits = predict_pages(model, val_pages, sizes, device, cfg, len(classes), "validate")
    return detailed_scores(detailed_frame(val_pages, logits, classes, 1, with_true=True), val_truth)


def train(data_dir: Path, boxes: Path, out: Path, cfg: ClassifyConfig, fold: int | None = None,
          val_images: Sequence[str] | None = None, pseudolabels: Sequence[Path] = (), mode: str = "start",
          given: dict | None = None, max_epochs: int | None = None, deadline: float | None = None) -> dict:
    """Train a fold's classifier into the run folder ``out`` (``mode``: start, resume or auto; see
    ``RunDir.resume_or_start``; ``given`` the config values given as flags); returns the best
    validation F1. ``max_epochs`` stops after that many epochs of this call, ``deadline`` (a
    ``time.time()`` value) before an epoch that would end after it; the run stays resumable. Under
    ``torchrun`` it trains data-parallel (``kzlib.distributed``); process 0 writes and validates."""
    device = distributed.init(pick_device(cfg.device))
    run = RunDir(out)
    inputs = input_hashes({"train.csv": DataDir(Path(data_dir)).train_csv, "boxes": boxes,
                           "pseudolabels": list(pseudolabels)})
    opened = open_run(run, ClassifyConfig, cfg, given, mode, inputs, fold, val_images)
    cfg, checkpoint, fold, val_images = opened.cfg, opened.checkpoint, opened.fold, opened.val_images
    init = None
    if cfg.init_from and checkpoint is None:
        init = load_other_checkpoint(cfg.init_from, "the checkpoint to fine-tune from")
        if "classes" not in init:
            raise DataError(f"{cfg.init_from}: not a classifier checkpoint (no class list)")
    classes = checkpoint["classes"] if checkpoint else init["classes"] if init else None
    train_pages, labels, val_pages, val_truth, classes = prepare(
        Path(data_dir), Path(boxes), fold, cfg, val_images, [Path(p) for p in pseudolabels], classes)
    if sum(len(y) for y in labels) < 2:
        raise DataError(f"{boxes}: fewer than two training boxes outside fold {fold}")

    seed_everything(cfg.seed)
    model = memory_format(Classifier(cfg, len(classes), load_pretrained=checkpoint is None and init is None).to(device),
                          cfg.channels_last)
    if init is not None:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError as e:
            raise UsageError(f"{cfg.init_from}: cannot start from this checkpoint ({str(e).splitlines()[0]}); "
                             "the same backbone is needed") from None
    dataset = CropDataset(train_pages, labels, cfg)
    steps = math.ceil(steps_per_epoch(len(dataset), cfg.batch_size) / cfg.accumulation_steps)
    trial_step = partial(step, device=device, label_smoothing=cfg.label_smoothing)
    # on CUDA, before the processes are tied together: the micro-batches a step needs, tried on a batch of
    # crops with the most boxes the config allows; first, for the budget's steps must fit too
    split = fit_memory(model, trial_step, [one_batch(dataset, cfg)], cfg, device,
                       distributed.per_process_batch(cfg.batch_size), checkpoint, "classifier: ") \
        if device.type == "cuda" else 1
    if opened.saved is None:
        cfg = fit_budget(cfg, model, trial_step, lambda k: [one_batch(dataset, cfg, k)],
                         lambda: validate(model, val_pages[:1], val_truth[:1], classes, cfg, device), len(val_pages),
                         steps_per_epoch(len(dataset), cfg.batch_size), device, split, "classifier: ")
        if distributed.is_main():
            run.start(cfg, Split(str(Path(data_dir).resolve()), fold, cfg.n_folds, bool(val_images),
                                 sorted({p.image_id for p in train_pages}), [p.image_id for p in val_pages],
                                 boxes=str(Path(boxes).resolve()),
                                 pseudolabels=[str(Path(p).resolve()) for p in pseudolabels],
                                 classes=len(classes), inputs=inputs, world_size=distributed.size()))
    distributed.barrier()
    t = Training.begin(model, cfg, device, run, checkpoint, steps, ("f1", "accuracy", "train_accuracy"),
                       {"classes": classes}, keep_last_as_best=not val_pages or not cfg.validate_every, split=split)
    if distributed.is_main():
        print(f"device: {describe(device)}; {t.opt.precision}; {distributed.size()} process(es); "
              f"{t.opt.split} micro-batch(es) a step", flush=True)

    epochs = Epochs(t.start, cfg.epochs, deadline, max_epochs)
    for epoch, loader in epochs.loaders(dataset, cfg, collate, device):
        t0 = time.time()
        stats = t.train_epoch(train_one_epoch, t.ddp, t.opt, loader, cfg, device, epoch,
                              f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        t_train = time.time() - t0
        last = epoch + 1 == cfg.epochs
        if distributed.is_main():
            scores = validate(model, val_pages, val_truth, classes, cfg, device) \
                if validates(epoch, cfg.epochs, cfg.validate_every) else {}
            t.end_epoch(epoch, stats, scores, len(dataset), t_train, time.time() - t0, last)
            print(epoch_line(fold, epoch, cfg.epochs, f"loss {stats['loss']:.4f} train acc {stats['train_accuracy']:.3f}",
                             scores, t.best, time.time() - t0), flush=True)
        distributed.barrier()
    return {"best_f1": t.best, "epochs_done": epochs.done, "stopped_early": epochs.stopped_early, "classes": len(classes)}

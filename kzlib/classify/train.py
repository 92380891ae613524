"""Training one fold's classifier on the detector's out-of-fold boxes (plus pseudolabelled test
pages): explicit loops, gradient accumulation normalised over the whole accumulated batch."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
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
from kzlib.data import SEG_FP, DataDir, DataError, read_labels_csv
from kzlib.images import image_size
from kzlib.devices import autocast, memory_format, pick_device
from kzlib.errors import UsageError
from kzlib.pages import Page, best_iou, split_pages
from kzlib.runs import RunDir, Split, input_hashes, load_other_checkpoint
from kzlib.training import Epochs, Training, epoch_line, sample_seed, seed_everything, steps_per_epoch


def accumulate_gradients(model, micro_batches, device: torch.device, amp: bool, scaler,
                         amp_cpu: bool = False, label_smoothing: float = 0.0) -> tuple[float, int, int]:
    """Backward pass over several micro-batches as if they were one batch: each micro-batch's
    summed cross-entropy is divided by the box count of the whole group — of every process in a
    distributed run — so k small steps (or N processes) give exactly the gradient of one big step.
    Returns (mean loss, boxes, correct) of this process."""
    local = sum(int(sum(len(y) for y in labels)) for _, _, labels in micro_batches)
    total = distributed.all_sum(local)  # DDP averages over the processes: undo it with the world size
    scale = distributed.size() / max(1.0, total)
    loss_sum, correct = 0.0, 0
    for k, (images, boxes, labels) in enumerate(micro_batches):
        y = torch.cat(labels).to(device)
        with distributed.no_sync(model) if k + 1 < len(micro_batches) else nullcontext():
            with autocast(device, amp, amp_cpu):
                logits = model(images.to(device, non_blocking=True), [b.to(device) for b in boxes])
            loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss is {loss.item()}; try a lower --lr")
            scaler.scale(loss * scale).backward()
        loss_sum += loss.item()
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / max(1, local), local, correct


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


def train_one_epoch(model, optimizer, scheduler, scaler, loader, cfg: ClassifyConfig, device, amp: bool,
                    epoch: int, desc: str) -> dict:
    model.train()
    loss_sum, boxes, correct, steps = 0.0, 0, 0, 0
    total_steps = math.ceil(len(loader) / cfg.accumulation_steps)
    bar = tqdm(groups(loader, cfg.accumulation_steps), total=total_steps, desc=desc, leave=False, unit="step", disable=None)
    cap = cfg.max_targets and max(32, cfg.max_targets // distributed.size() // 32 * 32)  # each process's share
    for step, group in enumerate(bar):
        micro = []
        for j, (images, b, y) in enumerate(group):
            g = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, step, j, distributed.rank()))
            b, y = cap_targets(b, y, cap, g)
            if sum(len(t) for t in y) >= 2:  # BatchNorm needs two boxes
                micro.append((images, b, y))
        if distributed.all_sum(float(not micro)) == 0:  # every process steps, or none
            optimizer.zero_grad(set_to_none=True)
            loss, n, ok = accumulate_gradients(model, micro, device, amp, scaler, cfg.amp_cpu, cfg.label_smoothing)
            scaler.step(optimizer)
            scaler.update()
            loss_sum, boxes, correct, steps = loss_sum + loss * n, boxes + n, correct + ok, steps + 1
        scheduler.step()
        bar.set_postfix(loss=f"{loss_sum / max(1, boxes):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    loss_sum, boxes, correct = distributed.all_sum(loss_sum), distributed.all_sum(boxes), distributed.all_sum(correct)
    return {"loss": loss_sum / max(1, boxes), "train_accuracy": correct / max(1, boxes), "train_boxes": int(boxes)}


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
    cfg, saved, checkpoint, fold, val_images = run.open_training(ClassifyConfig, cfg, given, mode, inputs, fold,
                                                                 val_images)
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
    if saved is None and distributed.is_main():
        run.start(cfg, Split(str(Path(data_dir).resolve()), fold, cfg.n_folds, bool(val_images),
                             sorted({p.image_id for p in train_pages}), [p.image_id for p in val_pages],
                             boxes=str(Path(boxes).resolve()), pseudolabels=[str(Path(p).resolve()) for p in pseudolabels],
                             classes=len(classes), inputs=inputs, world_size=distributed.size()))
    distributed.barrier()

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
    t = Training.begin(model, cfg, device, run, checkpoint, steps, ("f1", "accuracy", "train_accuracy"),
                       {"classes": classes}, keep_last_as_best=not val_pages)

    epochs = Epochs(t.start, cfg.epochs, deadline, max_epochs)
    for epoch, loader in epochs.loaders(dataset, cfg, collate, device):
        t0 = time.time()
        stats = train_one_epoch(t.ddp, t.opt.optimizer, t.opt.scheduler, t.opt.scaler, loader, cfg, device,
                                t.opt.use_amp, epoch, f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        t_train = time.time() - t0
        last = epoch + 1 == cfg.epochs
        if distributed.is_main():
            scores = validate(model, val_pages, val_truth, classes, cfg, device) \
                if (epoch + 1) % cfg.validate_every == 0 or last else {}
            row = t.end.row(epoch, t.opt, stats, scores, len(dataset), t_train, time.time() - t0)
            t.end_epoch(epoch, scores, row, last)
            print(epoch_line(fold, epoch, cfg.epochs, f"loss {stats['loss']:.4f} train acc {stats['train_accuracy']:.3f}",
                             scores, t.best, time.time() - t0), flush=True)
        distributed.barrier()
    return {"best_f1": t.best, "epochs_done": epochs.done, "stopped_early": epochs.stopped_early, "classes": len(classes)}

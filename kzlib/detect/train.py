"""Training one fold's detector: short explicit loops in the style of torchvision's references."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from kzlib.detect.config import DetectConfig
from kzlib.detect.dataset import CropDataset, collate
from kzlib.detect.model import build_model
from kzlib.detect.predict import agnostic_f1, detect_pages
from kzlib.io import write_json_atomic
from kzlib.pages import split_pages
from kzlib.config import load_config, save_config
from kzlib.training import (EpochLog, Epochs, Optimisation, autocast, load_checkpoint, pick_device,
                            save_checkpoint, seed_everything)


def train_one_epoch(model, optimizer, scheduler, scaler, loader, device, amp: bool, desc: str) -> dict:
    model.train()
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", disable=None)
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with autocast(device, amp):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} ({desc}, batch {n}); try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return {("loss" if k == "loss" else f"loss_{k.removeprefix('loss_')}"): v / max(1, n) for k, v in sums.items()}


def train(data_dir: Path, out: Path, cfg: DetectConfig, fold: int = 0, val_images: Sequence[str] | None = None,
          resume: bool = False, max_epochs: int | None = None,
          deadline: float | None = None) -> dict:
    """Train (or resume) a fold's detector into ``out``; returns the best validation scores.
    ``max_epochs`` stops after that many epochs of this call, ``deadline`` (a ``time.time()`` value)
    before an epoch that would end after it; the run stays resumable."""
    out = Path(out)
    ckpt_path = out / "checkpoint.pth"
    checkpoint = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{out}: holds a checkpoint; use --resume to continue it, or another --out")
        cfg = load_config(DetectConfig, out / "config.json")  # a resumed run keeps its config
        split = json.loads((out / "split.json").read_text())
        fold, val_images = split["fold"], split["val_ids"] if split["val_images_given"] else None
        checkpoint = load_checkpoint(ckpt_path)
    train_pages, val_pages = split_pages(Path(data_dir), fold, cfg.n_folds, val_images)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    write_json_atomic({"data_dir": str(Path(data_dir).resolve()), "fold": fold, "n_folds": cfg.n_folds,
                       "val_images_given": bool(val_images), "train_ids": [p.image_id for p in train_pages],
                       "val_ids": [p.image_id for p in val_pages]}, out / "split.json")

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(cfg, load_pretrained=checkpoint is None and not cfg.init_from).to(device)
    if cfg.init_from and checkpoint is None:
        try:
            model.load_state_dict(load_checkpoint(cfg.init_from, device)["model"])
        except (FileNotFoundError, KeyError, RuntimeError) as e:
            raise ValueError(f"{cfg.init_from}: cannot start from this checkpoint "
                             f"({str(e).splitlines()[0]}); same backbone and fpn_channels needed") from None
    dataset = CropDataset(train_pages, cfg)
    opt = Optimisation(model, cfg, device, math.ceil(len(dataset) / cfg.batch_size))
    start, best = opt.resume(model, checkpoint, out)
    log = EpochLog(out / "log.csv", keep_until_epoch=start - 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    epochs = Epochs(start, cfg.epochs, deadline, max_epochs)
    for epoch, loader in epochs.loaders(dataset, cfg, collate, device):
        t0 = time.time()
        losses = train_one_epoch(model, opt.optimizer, opt.scheduler, opt.scaler, loader, device, opt.use_amp,
                                 f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        t_train = time.time() - t0
        scores = agnostic_f1(val_pages, detect_pages(model, val_pages, cfg, device, "validate")) if val_pages else {}
        f1 = scores.get("f1", -1.0)
        if f1 > best:
            best = f1
            save_checkpoint({"model": model.state_dict(), "config": asdict(cfg), "epoch": epoch, "scores": scores},
                            out / "best.pth")
        save_checkpoint({"model": model.state_dict(), **opt.state_dict(), "epoch": epoch, "best_f1": best,
                         "config": asdict(cfg)}, ckpt_path)
        row = {"epoch": epoch, "lr": opt.lr, **losses,
               **{k: scores[k] for k in ("f1", "precision", "recall") if k in scores},
               "train_images_per_s": len(dataset) / t_train, "seconds": time.time() - t0}
        log.append(row)
        log.plot(out / "curves.png", ("f1", "precision", "recall"))
        print(f"fold {fold} epoch {epoch + 1}/{cfg.epochs}: loss {losses.get('loss', 0):.4f} "
              f"val F1 {f1:.4f} (best {best:.4f}) {time.time() - t0:.0f} s", flush=True)
    return {"best_f1": best, "epochs_done": epochs.done, "stopped_early": epochs.stopped_early}

"""The one check to run whenever a GPU is at hand, before anything else: one call within
``--minutes`` (default 7.5, for a single borrowed GPU's 8-minute call).

    python benchmarks/gpu_check.py --out DIR [--parts A,B,F,C,D,E] [--demo-data DIR] [--minutes M] [--cpu]

Everything goes to DIR as it happens, so a run cut short keeps what finished: each result is a JSON
line appended to DIR/gpu_check.jsonl (and a ``{"part": X, "done": true, "seconds": S}`` line when a
part ends), everything printed is in DIR/gpu_check.log, the demo's work folder is DIR/demo and its
output DIR/gpu_demo.log. ``--parts`` reruns some. The parts, in the order they run:

  A  environment: GPU, capability, memory, driver, torch/CUDA/cuDNN and package versions.
  B  correctness on the tiny fixture pages with fp16 amp: each training one epoch on the CPU in fp32,
     resumed on the GPU in fp16 for a second (a CPU-made checkpoint on CUDA, across a change of
     precision), its CUDA checkpoint predicted on the CPU; a one-process group "cpu:gloo,cuda:nccl"
     reducing a CPU and a CUDA tensor.
  F  DDP + SyncBatchNorm in fp16 on NCCL at world size 1: the full classifier (its BatchNorms made
     SyncBatchNorm) at its preset batch through the kit's training step in 2 micro-batches, plain and
     wrapped in DistributedDataParallel: seconds a step, peak memory of each, and what DDP added
     against the bytes the memory fit keeps for its buckets.
  C  each full-preset network (random weights, the real architecture) at its preset batch and crop:
     seconds a step, crops a second, peak memory allocated and reserved, FLOPs of a step; then with
     the memory capped at 10 GiB (a 2080 Ti) and 14 GiB (a T4): fits, or the micro-batches the
     out-of-memory fallback chose.
  D  prediction of the full networks on pages of distinct sizes near 2400x3870 (4 TTA scales),
     seconds a page with cuDNN's autotuner off (the kit's choice) and on.
  E  the demo cut to what is left of ``--minutes``: both detector folds (``--only detect``), then one
     classifier fold, at the preset's fixed epochs (a preset with time budgets has them scaled to
     fit, ``--time-scale``), on ``--demo-data`` (made beforehand on a CPU): stage times and F1. It
     stops when the time is up.

A part that would start with less time left than it needs is reported as skipped.
``--cpu`` is a reduced mode for machines without a GPU (CI runs it so that the script cannot rot):
the same parts on tiny networks and inputs, fp16 autocast on the CPU, gloo instead of NCCL (and no
SyncBatchNorm: it runs on GPUs only), no memory caps, part E left out. On a GPU machine with no
network (the device tool's), carry wheels of the packages its image lacks and the demo data:
``bash benchmarks/gpu_carry.sh`` prepares both in ``.gpu/`` and prints the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.classify.config import ClassifyConfig  # noqa: E402
from kzlib.classify.model import Classifier  # noqa: E402
from kzlib.classify import train as classify_train  # noqa: E402
from kzlib.detect.config import DetectConfig  # noqa: E402
from kzlib.detect.model import build_model  # noqa: E402
from kzlib.detect import train as detect_train  # noqa: E402
from kzlib.devices import describe, driver_version  # noqa: E402
from kzlib.fit import fit_memory  # noqa: E402
from kzlib.preset import load_preset, preset_path  # noqa: E402
from kzlib.training import Optimisation, out_of_memory  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tiny"
GiB = 2 ** 30
TINY_DET = DetectConfig(backbone="resnet18", pretrained="", page_side="height", fpn_channels=16, page_size=160,
                        crop_width=96, crop_height=64, crops_per_page=1, batch_size=2, epochs=2, lr=0.005,
                        workers=0, anchor_sizes=(8, 16, 32, 64, 128), n_folds=3, score_threshold=0.05,
                        box_batch_per_image=64, warmup_epochs=0.0)
TINY_CLS = ClassifyConfig(backbone="resnet18", pretrained="", page_side="height", page_size=160, test_size=160,
                          crop_width=64, crop_height=96, crops_per_page=2, batch_size=3, epochs=2, lr=0.01,
                          workers=0, hidden=32, n_folds=3, top_k=3, min_visibility=0.5, resample_empty=False,
                          validate_every=100)


class Report:
    """JSON lines in ``out/gpu_check.jsonl``, one per result, each written (and flushed to disk) as
    it comes."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"

    def __call__(self, part: str, **values) -> None:
        row = {"part": part, "time": datetime.datetime.now().isoformat(timespec="seconds"), **values}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        print(f"[{part}] " + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)


class Tee:
    """What the script prints, also appended to a log file as it is printed."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ A
def part_a(report: Report, device: torch.device) -> None:
    versions = {}
    for dist in ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas",
                 "lightgbm", "xgboost", "xgboost-cpu", "catboost", "nvidia-nccl-cu12", "nvidia-nccl-cu13"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    extra = {}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        extra = {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / GiB, 1),
                 "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(), "driver": driver_version()}
    report("A", device=describe(device), **extra, packages=versions, cpu_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------ B
def part_b(report: Report, device: torch.device, cpu_mode: bool) -> None:
    """Each training: epoch 1 on the CPU in fp32, epoch 2 resumed on ``device`` in fp16, then its
    checkpoint predicted on the CPU; then a one-process group's reductions."""
    from kzlib.classify.predict import predict as classify_predict
    from kzlib.classify.train import train as classify_train
    from kzlib.data import labels_table, read_labels_csv
    from kzlib.detect.predict import predict as detect_predict
    from kzlib.detect.train import train as detect_train

    fp16 = dict(amp=True, amp_dtype="fp16") if device.type == "cuda" else dict(amp_cpu=True, amp_cpu_dtype="fp16")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        shutil.copytree(FIXTURE, data)
        for name, cfg in (("detector", TINY_DET), ("classifier", TINY_CLS)):
            run = tmp / name
            t0 = time.time()
            first = replace(cfg, device="cpu", amp=False, amp_cpu=False)
            second = replace(cfg, device=str(device), **fp16)
            if name == "detector":
                detect_train(data, run, first, fold=0, max_epochs=1)
                result = detect_train(data, run, second, fold=0, mode="auto")
                out = detect_predict(run, data, "test", device="cpu")
                predicted = sum(1 for _ in open(out)) - 1
            else:
                t = labels_table(read_labels_csv(data / "train.csv")).rename(columns={"code": "true"}).assign(score=1.0)
                boxes = tmp / "boxes.csv"
                t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(boxes, index=False)
                classify_train(data, boxes, run, first, fold=0, max_epochs=1)
                result = classify_train(data, boxes, run, second, fold=0, mode="auto")
                detailed = classify_predict(run, data, boxes, "valid", 1, device="cpu")["detailed"]
                predicted = len(pd.read_csv(detailed))
            state = torch.load(run / "checkpoint.pth", weights_only=False, map_location="cpu")
            report("B", network=name, epochs_done=result["epochs_done"], best_f1=round(result["best_f1"], 4),
                   scaler_scale=state["scaler"].get("scale"), micro_split=state.get("micro_split"),
                   predicted_on_cpu=predicted, seconds=round(time.time() - t0, 1), ok=result["epochs_done"] == 2)
    report("B", **group_reductions(device))


def group_reductions(device: torch.device) -> dict:
    """A one-process group with the kit's backends: a CPU and a device tensor reduced, a barrier."""
    import torch.distributed as dist

    from kzlib import distributed

    backend = distributed.backend(device) if device.type == "cuda" else "cpu:gloo,cuda:gloo"
    store = dist.HashStore()
    dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=distributed.timeout())
    try:
        cpu = torch.tensor([2.0], dtype=torch.float64)
        dist.all_reduce(cpu)
        values = {"group": backend, "cpu_sum": cpu.item()}
        if device.type == "cuda":
            gpu = torch.tensor([3.0], device=device)
            dist.all_reduce(gpu)
            values["cuda_sum"] = gpu.item()
        dist.barrier()
        values["ok"] = True
    finally:
        dist.destroy_process_group()
    return values


# ------------------------------------------------------------------------------------------ F
def part_f(report: Report, device: torch.device, cpu_mode: bool, steps: int) -> None:
    """The full classifier at its preset batch in fp16, its BatchNorms made SyncBatchNorm (CUDA), in a
    one-process group with the kit's backends, through the kit's training step (2 micro-batches: the
    no_sync path), first plain, then in DistributedDataParallel. At world size 1 SyncBatchNorm
    computes as BatchNorm (torch skips the reduction); DDP's gradient all-reduce runs on NCCL."""
    import torch.distributed as dist

    from kzlib import distributed
    from kzlib.classify.train import train_one_epoch
    from kzlib.fit import ddp_bucket_bytes

    if cpu_mode:
        cfg, n_classes = replace(TINY_CLS, device="cpu", amp_cpu=True, amp_cpu_dtype="fp16"), 50
    else:
        cfg = replace(load_preset(preset_path("full")).classify_config("resnext101"), device=str(device), amp=True,
                      amp_dtype="fp16")
        n_classes = 4788
    backend = distributed.backend(device)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=distributed.timeout())
    try:
        torch.manual_seed(0)
        model = Classifier(cfg, n_classes, load_pretrained=False).to(device)
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        images, boxes, labels = synthetic_crops(cfg, cpu_mode)
        opt = Optimisation(model, cfg, device, 100)
        opt.split = 2
        values = {"group": backend, "network": f"classifier {cfg.backbone}", "batch": cfg.batch_size,
                  "precision": str(opt.precision), "micro_batches": opt.split, "sync_batchnorm_modules": synced,
                  "ddp_bucket_gib": round(ddp_bucket_bytes(model) / GiB, 3)}
        for name, net in (("plain", model), ("ddp", None)):
            if net is None:
                net = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index or 0] if device.type == "cuda" else None)
            train_one_epoch(net, opt, [(images, boxes, labels)], cfg, device, 0, f"F {name}")  # warm-up
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            stats = train_one_epoch(net, opt, [(images, boxes, labels)] * steps, cfg, device, 0, f"F {name}")
            sync(device)
            values[f"{name}_s_per_step"] = round((time.perf_counter() - t0) / steps, 4)
            values[f"{name}_loss"] = round(stats["loss"], 4)
            if device.type == "cuda":
                values[f"{name}_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GiB, 3)
        if device.type == "cuda":
            values["ddp_added_gib"] = round(values["ddp_peak_allocated_gib"] - values["plain_peak_allocated_gib"], 3)
        values.update(scaler_scale=opt.scaler.get_scale(), ok=all(np.isfinite(values[f"{n}_loss"]) for n in ("plain", "ddp")))
        report("F", **values)
    finally:
        dist.destroy_process_group()


def synthetic_crops(cfg, cpu_mode: bool):
    """A classifier batch at the config's batch and crop, with as many boxes as real crops hold."""
    g = torch.Generator().manual_seed(0)
    n, h, w = cfg.batch_size, cfg.crop_height, cfg.crop_width
    images = torch.rand(n, 3, h, w, generator=g)
    per = 40 if not cfg.max_targets else max(1, cfg.max_targets // n)
    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(per, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0])
        boxes.append(torch.cat([xy, xy + 20 + torch.rand(per, 2, generator=g) * 30], 1))
        labels.append(torch.randint(0, 50, (per,), generator=g))
    return images, boxes, labels


# ------------------------------------------------------------------------------------------ C
def networks(cpu_mode: bool):
    """(name, config, kind) of the full preset's networks; tiny ones in CPU mode."""
    if cpu_mode:
        return [("detector resnet18 (tiny)", TINY_DET, "detect"), ("classifier resnet18 (tiny)", TINY_CLS, "classify")]
    full = load_preset(preset_path("full"))  # pretrained names kept: frozen BatchNorm and starts, as with weights
    return [("detector resnet152 FPN", full.detect_config(), "detect")] + [
        (f"classifier {full.classify_config(k).backbone}", full.classify_config(k), "classify") for k in full.kinds]


def make_step(name: str, cfg, kind: str, device: torch.device, cpu_mode: bool):
    """The network's training step (the kit's ``step(model, batch, optimisation)``: the step the
    epochs run) at its preset batch and crop on synthetic crops (boxes as many as real crops hold):
    (step(split), the stage's step, its batch, model, optimisation, crops a step)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = cfg.batch_size
    h, w = cfg.crop_height, cfg.crop_width
    if kind == "detect":
        model = build_model(cfg, load_pretrained=False).to(device)  # the architecture, random values
        images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(n)]
        targets = []
        for _ in range(n):
            xy = torch.rand(24, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0])
            wh = 20 + torch.rand(24, 2, generator=g) * 30
            targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                            "labels": torch.ones(24, dtype=torch.int64, device=device)})
        stage_step, batch = detect_train.step, (images, targets, None)
    else:
        model = Classifier(cfg, n_classes=4788 if not cpu_mode else 50, load_pretrained=False).to(device)
        stage_step, batch = partial(classify_train.step, device=device), [synthetic_crops(cfg, cpu_mode)]
    opt = Optimisation(model, cfg, device, 100, where=f"{name}: ")
    model.train()

    def full_step(split: int) -> None:
        opt.split = split
        stage_step(model, batch, opt)
    return full_step, stage_step, batch, model, opt, n


def part_c(report: Report, device: torch.device, cpu_mode: bool, steps: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    for name, cfg, kind in networks(cpu_mode):
        cfg = replace(cfg, device=str(device))
        step, _, _, model, opt, n = make_step(name, cfg, kind, device, cpu_mode)
        try:
            with torch.backends.cudnn.flags(benchmark=True):
                step(1)  # warm-up (cuDNN tunes)
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step(1)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                with FlopCounterMode(display=False) as counter:
                    step(1)
            s = statistics.median(times)
            values = {"network": name, "batch": n, "crop": f"{cfg.crop_height}x{cfg.crop_width}",
                      "micro_batches": opt.split,
                      "precision": str(opt.precision), "s_per_step": round(s, 4), "crops_per_s": round(n / s, 1),
                      "tflop_per_step": round(counter.get_total_flops() / 1e12, 3),
                      "tflop_per_s": round(counter.get_total_flops() / 1e12 / s, 1)}
            if device.type == "cuda":
                values.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated(device) / GiB, 2),
                              peak_reserved_gib=round(torch.cuda.max_memory_reserved(device) / GiB, 2))
            report("C", **values)
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            report("C", network=name, batch=n, error=f"out of memory uncapped: {str(e).splitlines()[0][:120]}")
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            for cap in (10, 14):
                del model, opt
                torch.cuda.empty_cache()
                step, stage_step, batch, model, opt, n = make_step(name, cfg, kind, device, cpu_mode)
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * GiB / total), device)
                try:
                    split = fit_memory(model, stage_step, batch, cfg, device, n, None, f"{name} at {cap} GiB: ")
                    t0 = time.perf_counter()
                    step(split)
                    sync(device)
                    report("C", network=name, cap_gib=cap, fits_whole_batch=split == 1, micro_batches=split,
                           s_per_step=round(time.perf_counter() - t0, 4),
                           peak_reserved_gib=round(torch.cuda.max_memory_reserved(device) / GiB, 2))
                except Exception as e:  # noqa: BLE001  (report and go on: the other caps still tell)
                    report("C", network=name, cap_gib=cap, error=str(e).splitlines()[0][:200])
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0, device)
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ D
def part_d(report: Report, device: torch.device, cpu_mode: bool, pages: int) -> None:
    """Pages of distinct sizes near 2400x3870, the detector and the classifier with 4 TTA scales."""
    import cv2

    from kzlib.classify import predict as cls_predict
    from kzlib.classify.predict import page_logits, tta_sizes
    from kzlib.detect import predict as det_predict
    from kzlib.detect.predict import detect_page
    from kzlib.devices import cudnn_benchmark
    from kzlib.pages import Page

    full = load_preset(preset_path("full"))
    det_cfg = TINY_DET if cpu_mode else full.detect_config()
    cls_cfg = TINY_CLS if cpu_mode else full.classify_config("resnext101")
    det_cfg, cls_cfg = replace(det_cfg, device=str(device)), replace(cls_cfg, device=str(device))
    det = build_model(det_cfg, load_pretrained=False).to(device).eval()
    cls = Classifier(cls_cfg, 4788 if not cpu_mode else 50, load_pretrained=False).to(device).eval()
    sizes = tta_sizes(cls_cfg.test_size, cls_cfg.scale_aug, 4)
    rng = np.random.default_rng(0)
    base = (400, 640) if cpu_mode else (2400, 3870)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(pages):
            w, h = base[0] + 13 * i, base[1] - 17 * i
            img = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
            path = Path(tmp) / f"p{i}.jpg"
            cv2.imwrite(str(path), cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
            paths.append(path)
        boxes = np.array([[x, y, 60, 80] for x in range(100, base[0] - 100, 150) for y in range(100, base[1] - 100, 150)],
                         np.float64)
        for autotune in (False, True):
            forced = (lambda _on, a=autotune: cudnn_benchmark(a))
            det_predict.cudnn_benchmark, cls_predict.cudnn_benchmark = forced, forced
            try:
                times = []
                for path in paths:
                    sync(device)
                    t0 = time.perf_counter()
                    detect_page(det, path, det_cfg, device)
                    page_logits(cls, Page(path.stem, path, boxes), sizes, device, cls_cfg)
                    sync(device)
                    times.append(time.perf_counter() - t0)
            finally:
                det_predict.cudnn_benchmark, cls_predict.cudnn_benchmark = cudnn_benchmark, cudnn_benchmark
            report("D", cudnn_benchmark=autotune, pages=pages, tta_scales=len(sizes),
                   s_per_page_median=round(statistics.median(times), 3), s_first_page=round(times[0], 3),
                   s_total=round(sum(times), 2))


# ------------------------------------------------------------------------------------------ E
DEMO_OVERHEAD_S = 120  # the demo cut's start-up, validations and predictions besides its time budgets


def part_e(report: Report, device: torch.device, demo_data: Path | None, out: Path, seconds_left: float) -> None:
    """The demo cut to ``seconds_left``: ``--only detect`` (both folds, their boxes, the merge), then
    the first classifier fold, at the preset's epochs (its time budgets, where it has them, scaled so
    that their trainings and the overhead fit); stage output streamed to out/gpu_demo.log, the work folder out/demo. Stops when
    the time is up; its checkpoints are removed at the end (out stays small)."""
    if demo_data is None or not (demo_data / "train.csv").is_file():
        report("E", skipped="no --demo-data (make it on a CPU: python -m kzlib synth ... as make demo does)")
        return
    preset = json.loads(preset_path("demo").read_text())
    preset["device"] = str(device)
    libs = [lib for lib in preset["stack"]["libraries"] if _importable(lib)]
    if libs != preset["stack"]["libraries"]:
        preset["stack"].update(libraries=libs, weights=[1.0] * len(libs))
    kind = next(iter(preset["kinds"]))
    work = out / "demo"
    work.mkdir(parents=True, exist_ok=True)
    (work / "preset.json").write_text(json.dumps(preset))
    budgets = 2 * preset["detect"].get("time_budget_s", 0) + preset["kinds"][kind].get("time_budget_s", 0)
    scale = round(min(1.0, max(0.05, (seconds_left - DEMO_OVERHEAD_S) / budgets)), 3) if budgets else 1.0
    deadline = time.time() + seconds_left
    t0 = time.time()
    runs = []
    with open(out / "gpu_demo.log", "a") as log:
        for only in ("detect", f"classify-{kind}-f0"):
            left = deadline - time.time()
            if left < 20:
                runs.append({"only": only, "skipped": f"{left:.0f} s left"})
                continue
            cmd = [sys.executable, str(ROOT / "run_local.py"), "--data", str(demo_data), "--work", str(work / "run"),
                   "--preset", str(work / "preset.json"), "--only", only] + (["--time-scale", str(scale)] if budgets else [])
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                runs.append({"only": only, "exit": proc.wait(timeout=left - 5)})
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                runs.append({"only": only, "cut": f"the time was up after {time.time() - t0:.0f} s"})
    times, scores = {}, {}
    for f in sorted((work / "run" / "state").glob("*.json")):
        times[f.stem] = json.loads(f.read_text()).get("seconds")
    for f in sorted((work / "run").rglob("log.csv")):
        log_rows = pd.read_csv(f)
        if "f1" in log_rows and log_rows["f1"].notna().any():
            scores[str(f.parent.relative_to(work / "run"))] = round(float(log_rows["f1"].max()), 4)
    for f in work.rglob("*.pth"):
        f.unlink()
    report("E", runs=runs, time_scale=scale, minutes=round((time.time() - t0) / 60, 1), level2_libraries=libs,
           stage_seconds=times, best_f1=scores)


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


# the least time each part needs on a GPU (minutes): a part is skipped when less is left
NEEDS = {"A": 0.1, "B": 1.0, "F": 0.5, "C": 1.5, "D": 1.0, "E": 1.5}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.jsonl, gpu_check.log and the demo")
    p.add_argument("--parts", default="A,B,F,C,D,E", help="which parts, in this order, e.g. C,D")
    p.add_argument("--cpu", action="store_true", help="the reduced mode for machines without a GPU")
    p.add_argument("--demo-data", type=Path, help="the demo's data folder, made beforehand (part E)")
    p.add_argument("--minutes", type=float, default=7.5, help="the whole run's time (part E takes what is left)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per network (parts C and F)")
    p.add_argument("--pages", type=int, default=6, help="pages of distinct sizes (part D)")
    a = p.parse_args()
    deadline = time.time() + a.minutes * 60
    if not a.cpu:
        from kzlib.devices import cuda_problem

        problem = cuda_problem()
        if problem:
            print(f"error: no usable GPU: {problem}; pass --cpu for the reduced CPU mode", file=sys.stderr)
            return 3
    device = torch.device("cpu" if a.cpu else "cuda")
    report = Report(a.out)
    log = open(a.out / "gpu_check.log", "a")
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    print(f"gpu_check {' '.join(sys.argv[1:])}: {a.minutes:g} minutes from "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}", flush=True)
    parts = [x.strip().upper() for x in a.parts.split(",") if x.strip()]
    failed = []
    for part in parts:
        t0 = time.time()
        left = deadline - t0
        try:
            if part not in NEEDS:
                raise ValueError(f"no part {part!r} ({', '.join(NEEDS)})")
            if not a.cpu and left < NEEDS[part] * 60:
                report(part, skipped=f"{left / 60:.1f} minutes left of {a.minutes:g}; it needs {NEEDS[part]:g}")
                continue
            if part == "A":
                part_a(report, device)
            elif part == "B":
                part_b(report, device, a.cpu)
            elif part == "F":
                part_f(report, device, a.cpu, 1 if a.cpu else 3)
            elif part == "C":
                part_c(report, device, a.cpu, 2 if a.cpu else a.steps)
            elif part == "D":
                part_d(report, device, a.cpu, 2 if a.cpu else a.pages)
            elif a.cpu:
                report("E", skipped="CPU mode (the demo on a CPU is `make demo`)")
            else:
                part_e(report, device, a.demo_data, a.out, left)
            report(part, done=True, seconds=round(time.time() - t0, 1))
        except Exception as e:  # noqa: BLE001  (the other parts still run; the error is in the report)
            failed.append(part)
            report(part, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback=traceback.format_exc(limit=6))
        print(f"part {part}: {time.time() - t0:.0f} s", flush=True)
    print(f"results: {report.path}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

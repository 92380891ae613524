"""Where a training step's CPU time goes, for the classifier and the detector of a preset.

    .venv/bin/python benchmarks/profile_epoch.py --data demo/data [--preset demo] [--crops 48] [--steps 6]

Per crop: decode, geometry (cut + resize), colour augmentation, to-tensor — for the kit's crops
(the page decoded at the smallest JPEG reduction that keeps the region's resolution, the region cut,
then only the region resized) and, for comparison, the previous pipeline (the whole page rescaled
with RandomScale, padded, then cropped). Per step: forward, backward, optimizer, at the preset's
batch size, with the preset's speed options (bf16 autocast on CPUs with AVX512-BF16/AMX,
channels_last) and, "before", in fp32. Prints seconds per crop / step and each part's share. ``--reference`` prints only this machine's
reference step (``reference_step``), the yardstick of the demo's time limit.
"""

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.classify.config import ClassifyConfig  # noqa: E402
from kzlib.classify.dataset import CropDataset, class_index, collate as cls_collate, crop_spec as cls_spec  # noqa: E402
from kzlib.classify.model import Classifier  # noqa: E402
from kzlib.images import image_size, read_image  # noqa: E402
from kzlib.detect.dataset import collate as det_collate, crop_spec as det_spec  # noqa: E402
from kzlib.detect.model import build_model  # noqa: E402
from kzlib.config import config_from_dict  # noqa: E402
from kzlib.pages import page_scale, split_pages, to_tensor  # noqa: E402
from kzlib.preset import load_preset, preset_path  # noqa: E402
from kzlib.devices import Precision, cpu_has_bf16, memory_format  # noqa: E402


@contextmanager
def timed(acc: dict, part: str):
    """Adds the seconds the block takes to ``acc[part]``."""
    t = time.perf_counter()
    yield
    acc[part] += time.perf_counter() - t


def crop_parts(spec, pages, n, rng):
    """Seconds per crop of each part, for the kit's pipeline and the previous one."""
    colour = A.Compose(list(spec.colour)) if spec.colour else None
    new = dict(decode=0.0, geometry=0.0, colour=0.0, tensor=0.0)
    old = dict(decode=0.0, geometry=0.0, colour=0.0, tensor=0.0)
    old_geometry = A.Compose([
        A.RandomScale(scale_limit=spec.scale_aug, interpolation=cv2.INTER_AREA, p=1.0),
        A.PadIfNeeded(min_height=spec.crop_height, min_width=spec.crop_width, border_mode=cv2.BORDER_CONSTANT,
                      fill=255, position="random"),
        A.RandomCrop(height=spec.crop_height, width=spec.crop_width)])

    def finish(crop, acc):
        with timed(acc, "colour"):
            crop = colour(image=crop)["image"] if colour is not None else crop
        with timed(acc, "tensor"):
            to_tensor(crop)

    for i in range(n):
        page = pages[i % len(pages)]
        w0, h0 = image_size(page.path)
        s = page_scale(w0, h0, spec.size, spec.side)
        # the kit: decode at the reduction the region needs, cut, resize the region
        region_h0 = spec.crop_height * rng.uniform(1 - spec.scale_aug, 1 + spec.scale_aug) / s
        with timed(new, "decode"):
            image = read_image(page.path, min_height=int(np.ceil(h0 * spec.crop_height / region_h0)))
        with timed(new, "geometry"):
            k = image.shape[0] / h0
            rh, rw = int(region_h0 * k), int(region_h0 * k * spec.crop_width / spec.crop_height)
            geo = A.Compose([A.PadIfNeeded(min_height=rh, min_width=rw, border_mode=cv2.BORDER_CONSTANT, fill=255,
                                           position="random"), A.RandomCrop(height=rh, width=rw),
                             A.Resize(spec.crop_height, spec.crop_width, interpolation=cv2.INTER_AREA)])
            crop = geo(image=image)["image"]
        finish(crop, new)
        # before: the whole page at the preset size, rescaled, padded, cropped
        with timed(old, "decode"):
            image = read_image(page.path, height=max(1, round(h0 * s)))
        with timed(old, "geometry"):
            crop = old_geometry(image=image)["image"]
        finish(crop, old)
    return {k: v / n for k, v in new.items()}, {k: v / n for k, v in old.items()}


def step_parts(model, batches, loss_fn, steps, amp_cpu=False, channels_last=False):
    """Seconds of forward, backward and optimizer per step; with the speed options as in training
    (bf16 autocast on the CPU, channels_last weights) when asked."""
    model = memory_format(model, channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()
    parts = dict(forward=0.0, backward=0.0, optimizer=0.0)
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        t = time.perf_counter()
        with Precision(torch.device("cpu"), torch.bfloat16 if amp_cpu and cpu_has_bf16() else None).autocast():
            loss = loss_fn(model, batch)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i:  # the first step warms up
            parts["forward"] += t1 - t
            parts["backward"] += t2 - t1
            parts["optimizer"] += t3 - t2
    return {k: v / steps for k, v in parts.items()}


def speed(cfg) -> str:
    on = [n for n, v in (("bf16 autocast", cfg.amp_cpu and cpu_has_bf16()), ("channels_last", cfg.channels_last)) if v]
    return ", ".join(on) or "fp32"


def table(name, crops_per_step, crop, step):
    total = sum(crop.values()) * crops_per_step + sum(step.values())
    rows = [(f"data: {k}", v * crops_per_step) for k, v in crop.items()] + list(step.items())
    print(f"\n{name}: {sum(crop.values()):.4f} s per crop, {total:.3f} s per step of {crops_per_step} crops "
          "(data loading in the main process)")
    for k, v in rows:
        print(f"  {k:<16} {v:7.3f} s  {100 * v / total:5.1f}%")


# The demo's classifier as it scored 0.814 (issue 16's recipe: ResNet-18 to layer3, 192x288 crops of
# pages scaled to a 32 px glyph, batch 8): its fp32 step is the machines' yardstick.
REFERENCE = {"backbone": "resnet18", "pretrained": "", "page_size": 1200, "test_size": 1200, "page_side": "height",
             "crop_width": 192, "crop_height": 288, "crops_per_page": 14, "scale_aug": 0.4, "glyph_height": 32,
             "hidden": 512, "batch_size": 8, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.05,
             "label_smoothing": 0.1, "min_visibility": 0.5, "resample_empty": False, "amp_cpu": False,
             "channels_last": False, "n_folds": 2}


def reference_step(data: Path, steps: int = 6, crops: int = 48) -> float:
    """Seconds of the reference step on this machine: the 0.814 recipe's classifier (``REFERENCE``) in
    fp32 at batch 8, data (the previous crop pipeline, as the figures in BENCHMARKS.md were
    measured) plus forward, backward and optimizer."""
    torch.manual_seed(0)
    c = config_from_dict(ClassifyConfig, REFERENCE, "the reference recipe")
    train, _ = split_pages(data, 0, c.n_folds)
    _, old = crop_parts(cls_spec(c), train, crops, np.random.default_rng(0))
    classes = sorted({x for pg in train for x in pg.codes}) + ["seg_fp"]
    ds = CropDataset(train, class_index(train, classes, "train"), c)
    batches = [cls_collate([ds[i * c.batch_size + j] for j in range(c.batch_size)]) for i in range(3)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0], b[1]).float(), torch.cat(b[2]))
    step = step_parts(Classifier(c, len(classes)), batches, loss, steps)
    return sum(old.values()) * c.batch_size + sum(step.values())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="demo")
    p.add_argument("--crops", type=int, default=48)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reference", action="store_true", help="print only this machine's reference step")
    a = p.parse_args()
    if a.reference:
        print(f"reference step (fp32 classifier step of the 0.814 recipe): {reference_step(a.data, a.steps):.3f} s")
        return
    torch.manual_seed(0)
    cfg = load_preset(preset_path(a.preset))
    rng = np.random.default_rng(0)
    train, _ = split_pages(a.data, 0, cfg.n_folds)
    print(f"torch threads {torch.get_num_threads()}; {len(train)} training pages of {a.data}")

    kind = next(iter(cfg.kinds))
    c = cfg.classify_config(kind)
    new, old = crop_parts(cls_spec(c), train, a.crops, rng)
    classes = sorted({x for pg in train for x in pg.codes}) + ["seg_fp"]
    ds = CropDataset(train, class_index(train, classes, "train"), c)
    batches = [cls_collate([ds[i * c.batch_size + j] for j in range(c.batch_size)]) for i in range(3)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0], b[1]).float(), torch.cat(b[2]))
    fp32 = step_parts(Classifier(c, len(classes)), batches, loss, a.steps)
    fast = step_parts(Classifier(c, len(classes)), batches, loss, a.steps, c.amp_cpu and cpu_has_bf16(), c.channels_last)
    name = f"classifier {kind} ({c.backbone}, {c.crop_width}x{c.crop_height} crops, pages {c.page_size} px)"
    table(f"{name}, the preset's speed options ({speed(c)})", c.batch_size, new, fast)
    table("  before: the previous crop pipeline, fp32", c.batch_size, old, fp32)

    d = cfg.detect_config()
    new, old = crop_parts(det_spec(d), train, a.crops, rng)
    from kzlib.detect.dataset import CropDataset as DetCrops

    ds = DetCrops(train, d)
    batches = [det_collate([ds[i * d.batch_size + j] for j in range(d.batch_size)]) for i in range(3)]
    loss = lambda m, b: sum(m(b[0], b[1]).values())
    torch.manual_seed(0)
    fp32 = step_parts(build_model(d), batches, loss, a.steps)
    torch.manual_seed(0)
    fast = step_parts(build_model(d), batches, loss, a.steps, d.amp_cpu and cpu_has_bf16(), d.channels_last)
    name = f"detector ({d.backbone} FPN-{d.fpn_channels}, {d.crop_width}x{d.crop_height} crops, pages {d.page_size} px)"
    table(f"{name}, the preset's speed options ({speed(d)})", d.batch_size, new, fast)
    table("  before: the previous crop pipeline, fp32", d.batch_size, old, fp32)


if __name__ == "__main__":
    main()

"""Training memory of the classifier, measured on a GPU when there is one, estimated on CPU
otherwise.

    .venv/bin/python benchmarks/classify_memory.py [--base resnext101_32x8d --batch 12 --max-targets 256]

GPU: peak allocated memory and crops/s of real training steps (fp16 autocast + GradScaler, SGD).
CPU estimate: the bytes autograd saves for backward in one training step, counted with
``torch.autograd.graph.saved_tensors_hooks`` (each storage once) under bf16 autocast (2 bytes a value, as fp16 on
CUDA), plus weights, gradients and momentum in fp32. It leaves out cuDNN workspaces, the
allocator's fragmentation and the CUDA context (~0.5 GB), so expect the real peak higher.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.classify.config import ClassifyConfig  # noqa: E402
from kzlib.classify.model import Classifier  # noqa: E402


def batch(cfg, n_images, n_boxes, classes, device):
    images = torch.rand(n_images, 3, cfg.crop_height, cfg.crop_width, device=device)
    per = [n_boxes // n_images + (i < n_boxes % n_images) for i in range(n_images)]
    boxes = []
    for k in per:
        xy = torch.rand(k, 2, device=device) * torch.tensor([cfg.crop_width - 60, cfg.crop_height - 60], device=device)
        boxes.append(torch.cat([xy, xy + 40], 1))
    return images, boxes, torch.randint(0, classes, (n_boxes,), device=device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="resnext101_32x8d")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--max-targets", type=int, default=256)
    p.add_argument("--frozen-start", type=int, default=1)
    p.add_argument("--classes", type=int, default=4788)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    cfg = replace(ClassifyConfig(), backbone=a.base, pretrained="", frozen_start=bool(a.frozen_start), max_targets=a.max_targets)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    model = Classifier(cfg, a.classes).to(dev).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"{a.base}: {n_params / 1e6:.1f} M parameters, batch {a.batch} crops {cfg.crop_width}x{cfg.crop_height}, "
          f"{a.max_targets} boxes, frozen start {cfg.frozen_start}")
    if cuda:
        torch.backends.cudnn.benchmark = True
        scaler = torch.amp.GradScaler("cuda")
        images, boxes, y = batch(cfg, a.batch, a.max_targets, a.classes, dev)
        for step in range(a.steps + 3):
            if step == 3:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.time()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(images, boxes).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.synchronize()
        dt = time.time() - t0
        print(f"GPU {torch.cuda.get_device_name()}: peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB, {a.batch * a.steps / dt:.1f} crops/s")
        return
    saved, seen = [0], set()

    def pack(t):  # a tensor saved by several ops (conv input = previous ReLU output) counts once
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            saved[0] += t.numel() * t.element_size()
        return t

    images, boxes, y = batch(cfg, 1, max(1, a.max_targets // a.batch), a.classes, dev)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images, boxes).float(), y)
    per_image = saved[0]
    state = sum(q.numel() * 4 for q in model.parameters()) + sum(q.numel() * 4 * 2 for q in params)  # weights, grad, momentum
    total = per_image * a.batch + state
    print(f"CPU estimate: saved activations {per_image / 2**30:.3f} GiB per crop x {a.batch} = "
          f"{per_image * a.batch / 2**30:.2f} GiB; weights + gradients + momentum {state / 2**30:.2f} GiB; "
          f"total {total / 2**30:.2f} GiB (+ workspaces, fragmentation, CUDA context)")


if __name__ == "__main__":
    main()

"""The RPN's anchor matcher on the CPU: torchvision's ``box_iou`` against the kit's
``overlap_box_iou`` (the same matrix, bit for bit), alone and inside the demo detector's training step.

    .venv/bin/python benchmarks/anchor_iou_speed.py --data demo/data [--preset demo] [--rounds 3]

Prints the milliseconds of one call for the anchors of one of the preset's detector crops (the demo's:
512x384, 16,368 anchors) against 254 characters, then the seconds of a training step (``profile_epoch.step_parts``:
the preset's detector and batch, fp32) with either function, alternating in one process so that the
machine's drift falls on both, and the median of each.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_epoch import step_parts  # noqa: E402
from kzlib.detect.dataset import CropDataset, collate  # noqa: E402
from kzlib.detect.model import build_model, overlap_box_iou  # noqa: E402
from kzlib.pages import split_pages  # noqa: E402
from kzlib.preset import load_preset, preset_path  # noqa: E402


def demo_crop(model, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """254 characters (8-48 px) and the anchors ``model``'s RPN makes for a crop of that size."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(254, 2, generator=g) * torch.tensor([float(width), float(height)])
    chars = torch.cat([xy, xy + 8 + torch.rand(254, 2, generator=g) * 40], 1)
    feats = [torch.zeros(1, 1, height // s, width // s) for s in (4, 8, 16, 32, 64)]  # the FPN's levels
    return chars, model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), feats)[0]


def call_ms(f, a, b, n=10) -> float:
    for _ in range(3):
        f(a, b)
    t = time.perf_counter()
    for _ in range(n):
        f(a, b)
    return (time.perf_counter() - t) / n * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    functions = {"torchvision box_iou": box_iou, "overlap_box_iou": overlap_box_iou}
    cfg = load_preset(preset_path(a.preset))
    d = cfg.detect_config()
    chars, anchors = demo_crop(build_model(d), d.crop_height, d.crop_width)
    assert torch.equal(box_iou(chars, anchors), overlap_box_iou(chars, anchors))
    print(f"torch threads {torch.get_num_threads()}; {len(chars)} characters x {len(anchors)} anchors")
    for name, f in functions.items():
        print(f"  {name:<20} {call_ms(f, chars, anchors):7.1f} ms a call", flush=True)

    train, _ = split_pages(a.data, 0, cfg.n_folds)
    ds = CropDataset(train, d)
    batches = [collate([ds[i * d.batch_size + j] for j in range(d.batch_size)]) for i in range(3)]
    loss = lambda m, b: sum(m(b[0], b[1]).values())  # noqa: E731
    steps = {name: [] for name in functions}
    print(f"\nthe {a.preset} preset's detector, batch {d.batch_size}, fp32, {a.steps} steps a round:")
    for r in range(a.rounds):
        for name, f in functions.items():
            torch.manual_seed(0)
            model = build_model(d)
            model.rpn.box_similarity = f
            steps[name].append(sum(step_parts(model, batches, loss, a.steps, False, d.channels_last).values()))
            print(f"  round {r + 1}: {name:<20} {steps[name][-1]:.3f} s a step", flush=True)
    before, after = (statistics.median(v) for v in steps.values())
    print(f"median: {before:.3f} s -> {after:.3f} s a step ({100 * (after / before - 1):+.1f}%)")


if __name__ == "__main__":
    main()

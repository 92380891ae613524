"""Detector inference time on one page (CPU unless --device says otherwise).

    .venv/bin/python benchmarks/detect_speed.py RUN_DIR [RUN_DIR...] [--image PAGE] [--repeat 3]
    .venv/bin/python benchmarks/detect_speed.py --backbone resnet152 --fpn-channels 256 --page-height 1500

With a run folder the run's config and weights are used; otherwise an untrained model of the
given configuration (speed only). Prints decode + inference seconds per page, best of --repeat,
after one warm-up run, and the number of torch threads.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.detect.config import DetectConfig  # noqa: E402
from kzlib.detect.model import build_model  # noqa: E402
from kzlib.detect.predict import detect_page, load_run  # noqa: E402
from kzlib.devices import pick_device  # noqa: E402

DEFAULT_PAGE = Path("../shared/data/kuzushiji-sample/train_images/100241706_00004_2.jpg")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--image", type=Path, default=DEFAULT_PAGE)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet152")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--page-size", type=int, default=1685)
    a = p.parse_args()
    setups = []
    for run in a.runs:
        det = load_run(run, a.device)
        cfg, model, dev = det.cfg, det.model, det.device
        setups.append((str(run), cfg, model, dev))
    if not a.runs:
        cfg = DetectConfig(backbone=a.backbone, fpn_channels=a.fpn_channels, page_size=a.page_size, pretrained="",
                           device=a.device)
        dev = pick_device(a.device)
        setups.append(("untrained", cfg, build_model(cfg).to(dev).eval(), dev))
    print(f"page {a.image.name}; torch threads {torch.get_num_threads()}; device {a.device}")
    for name, cfg, model, dev in setups:
        detect_page(model, a.image, cfg, dev)  # warm-up
        times = []
        for _ in range(a.repeat):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            boxes, _ = detect_page(model, a.image, cfg, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        print(f"{name}: {cfg.backbone} FPN-{cfg.fpn_channels} at {cfg.page_size} px ({cfg.page_side}): "
              f"{min(times):.2f} s/page ({len(boxes)} boxes)")


if __name__ == "__main__":
    main()

"""Classifier inference time on one real page (CPU unless --device says otherwise): the original
solution's configuration (ResNet-152 trunk, pages at 2528 px, 4 TTA scales) and a fast one.

    .venv/bin/python benchmarks/classify_speed.py [--image PAGE] [--labels train.csv] [--repeat 2]

Untrained models of each configuration (speed only, 4,788 classes as in the competition); the
page's true boxes are classified. Prints seconds per page (best of --repeat after a warm-up) and
the trunk's share of one scale.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.classify.config import ClassifyConfig  # noqa: E402
from kzlib.classify.dataset import page_input  # noqa: E402
from kzlib.classify.model import Classifier  # noqa: E402
from kzlib.classify.predict import page_logits, tta_sizes  # noqa: E402
from kzlib.data import parse_labels, read_labels_csv  # noqa: E402
from kzlib.pages import Page  # noqa: E402
from kzlib.config import load_config  # noqa: E402

SAMPLE = Path("../shared/data/kuzushiji-sample")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", default="100241706_00004_2")
    p.add_argument("--data", type=Path, default=SAMPLE)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--classes", type=int, default=4788)
    a = p.parse_args()
    labels = read_labels_csv(a.data / "train.csv").set_index("image_id")["labels"]
    codes, boxes = parse_labels(labels[a.image])
    page = Page(a.image, a.data / "train_images" / f"{a.image}.jpg", boxes.astype(float), list(codes))
    fast = load_config(ClassifyConfig, Path(__file__).resolve().parents[1] / "kzlib" / "configs" / "classify_fast.json")
    setups = [("original: resnet152 @2528, 4 TTA scales", ClassifyConfig(), 4),
              ("original, 1 scale", ClassifyConfig(), 1),
              ("fast: configs/classify_fast.json (resnet18 @1200), 2 scales", fast, 2),
              ("fast, 1 scale", fast, 1)]
    dev = torch.device(a.device)
    print(f"page {a.image}: {len(boxes)} boxes; torch threads {torch.get_num_threads()}; device {dev}")
    for name, cfg, n in setups:
        model = Classifier(replace(cfg, device=a.device), a.classes).to(dev).eval()
        sizes = tta_sizes(cfg.test_size, cfg.scale_aug, n)
        page_logits(model, page, sizes[:1], dev, cfg)  # warm-up
        best = min(_timed(lambda: page_logits(model, page, sizes, dev, cfg)) for _ in range(a.repeat))
        image, _ = page_input(page, cfg.test_size, cfg.page_side)
        with torch.no_grad():
            trunk = min(_timed(lambda: model.trunk(image[None].to(dev))) for _ in range(a.repeat))
        print(f"{name:<62} {best:7.2f} s/page   (trunk alone at {cfg.test_size} px: {trunk:.2f} s; sizes {sizes})",
              flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()

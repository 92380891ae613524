"""How far the kit's page resampling is from the original solution's, on the real sample pages.

    .venv/bin/python benchmarks/resampling.py [--data ../shared/data/kuzushiji-sample]

The original decodes every page whole (jpeg4py) and resizes it with OpenCV's INTER_LINEAR
(albumentations' default); the kit decodes at OpenCV's reduced JPEG scale (1/2, 1/4, 1/8 in the DCT)
when the target size allows, then resizes with INTER_AREA when it shrinks. For each page at the
detector's (1685) and the classifier's (2528) longest side: the mean absolute difference of the two
results in grey levels, their PSNR, the share of pixels more than 16 levels apart, and both times.
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.images import read_image  # noqa: E402
from kzlib.pages import scaled_height  # noqa: E402


def upstream(path: Path, height: int) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/kuzushiji-sample"))
    a = p.parse_args()
    pages = sorted((a.data / "train_images").glob("*.jpg")) + sorted((a.data / "test_images").glob("*.jpg"))
    print(f"{len(pages)} pages")
    for size in (1685, 2528):
        mad, psnr, far, t_kit, t_up = [], [], [], [], []
        for path in pages:
            h = scaled_height(path, size, "longest")
            t0 = time.perf_counter()
            kit = read_image(path, height=h)
            t1 = time.perf_counter()
            ref = upstream(path, h)
            t2 = time.perf_counter()
            d = np.abs(kit.astype(np.float64) - ref.astype(np.float64))
            mad.append(d.mean())
            psnr.append(10 * np.log10(255 ** 2 / max((d ** 2).mean(), 1e-12)))
            far.append((d.max(axis=2) > 16).mean())
            t_kit.append(t1 - t0)
            t_up.append(t2 - t1)
        print(f"longest side {size}: mean |kit - upstream| {np.mean(mad):.2f} grey levels (max page {np.max(mad):.2f}), "
              f"PSNR {np.mean(psnr):.1f} dB (min {np.min(psnr):.1f}), pixels > 16 levels apart "
              f"{100 * np.mean(far):.2f}%; {1000 * np.median(t_kit):.0f} ms vs {1000 * np.median(t_up):.0f} ms a page")


if __name__ == "__main__":
    main()

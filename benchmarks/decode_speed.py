"""Image decode time: full decode vs OpenCV's reduced decode through kzlib.data.read_image.

    .venv/bin/python benchmarks/decode_speed.py [IMAGE]   (default: the first real sample train page)
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.images import image_size, read_image  # noqa: E402


def best_of(fn, n=7):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    default = sorted(Path("../shared/data/kuzushiji-sample/train_images").glob("*.jpg"))
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default[0]
    w, h = image_size(path)
    print(f"{path.name}: {w}x{h}")
    print(f"full decode:                {best_of(lambda: read_image(path)) * 1000:6.1f} ms")
    for target in (h // 2, 1500, h // 4):
        print(f"read_image(height={target:4d}):   {best_of(lambda: read_image(path, height=target)) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()

"""The full preset's three networks (detector ResNet-152 FPN, classifier ResNet-152, classifier
ResNeXt-101 32x8d with frozen start), built from weight files with the fetched files' key layout.

    .venv/bin/python benchmarks/full_models.py                      # CPU smoke: tiny crops, batch 1
    .venv/bin/python benchmarks/full_models.py --device cuda --preset-batch   # GPU: preset crops and batch, AMP

Each network runs in its own process (peak RSS per network): a few training steps (SGD over the
trainable parameters, the preset's AMP setting on CUDA) and a prediction. Prints seconds per step,
images per second, peak RSS and, on CUDA, peak allocated GPU memory. Random weight values: the
speed and memory are those of the real networks, the outputs are not.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib import weights  # noqa: E402
from kzlib.preset import load_preset, preset_path  # noqa: E402
from kzlib.devices import autocast  # noqa: E402

NETWORKS = ("detector", "resnet152", "resnext101")


def weight_file(arch: str, folder: Path) -> None:
    import timm
    import torchvision

    path = folder / weights.SPECS[arch].file
    if not path.exists():
        model = torchvision.models.get_model(arch) if arch.startswith("resnet") else timm.create_model(arch)
        torch.save(model.state_dict(), path)


def run_one(name: str, folder: Path, device: str, steps: int, preset_batch: bool, crop: tuple[int, int]) -> dict:
    cfg = load_preset(preset_path("full")).with_weights_dir(folder)
    dev = torch.device(device)
    torch.manual_seed(0)
    if name == "detector":
        from kzlib.detect.model import build_model

        c = cfg.detect_config()
        model = build_model(c).to(dev)
        batch = c.batch_size if preset_batch else 1
        h, w = (c.crop_height, c.crop_width) if preset_batch else crop
        images = [torch.rand(3, h, w, device=dev) for _ in range(batch)]
        targets = [{"boxes": torch.tensor([[10.0, 10, 40, 44], [60, 50, 90, 86]], device=dev),
                    "labels": torch.ones(2, dtype=torch.int64, device=dev)} for _ in range(batch)]
        amp = c.amp

        def loss_fn():
            return sum(model(images, targets).values())

        def predict():
            model.eval()
            with torch.no_grad(), autocast(dev, amp):
                model(images[:1])
            model.train()
    else:
        from kzlib.classify.model import Classifier

        c = cfg.classify_config(name)
        model = Classifier(c, n_classes=4788).to(dev)
        batch = c.batch_size if preset_batch else 1
        h, w = (c.crop_height, c.crop_width) if preset_batch else crop
        images = torch.rand(batch, 3, h, w, device=dev)
        n_boxes = min(c.max_targets or 256, 20 * batch)
        xy = torch.rand(n_boxes, 2, device=dev) * torch.tensor([w - 40, h - 40], device=dev)
        per = torch.arange(n_boxes) % batch
        boxes = [torch.cat([xy[per == i], xy[per == i] + 32], 1) for i in range(batch)]
        labels = torch.randint(0, 4788, (n_boxes,), device=dev)
        amp = c.amp

        def loss_fn():
            return torch.nn.functional.cross_entropy(model(images, boxes).float(), labels)

        def predict():
            model.eval()
            with torch.no_grad(), autocast(dev, amp):
                model(images[:1], boxes[:1])
            model.train()
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)  # lr 0: random
    # weights stay as they are (a deep random ResNet under frozen BatchNorm diverges in a few steps); the work is the same
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and dev.type == "cuda")
    times = []
    for _ in range(steps + 1):  # the first step warms up (cudnn, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(dev, amp):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        finite = bool(torch.isfinite(loss))
    t0 = time.perf_counter()
    predict()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step = sum(times[1:]) / steps
    out = {"network": name, "device": device, "batch": batch, "input": f"{h}x{w}", "amp": bool(amp and dev.type == "cuda"),
           "s_per_step": round(step, 3), "loss_finite": finite, "images_per_s": round(batch / step, 2),
           "predict_s": round(time.perf_counter() - t0, 3),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--crop", default="128x96", help="HxW of the tiny input without --preset-batch")
    p.add_argument("--preset-batch", action="store_true", help="the preset's crop size and batch size")
    p.add_argument("--weights", type=Path, help="folder of weight files (default: random ones in a temp folder)")
    p.add_argument("--only", choices=NETWORKS, help=argparse.SUPPRESS)
    a = p.parse_args()
    crop = tuple(int(v) for v in a.crop.split("x"))
    if a.only:
        print(json.dumps(run_one(a.only, a.weights, a.device, a.steps, a.preset_batch, crop)))
        return
    with tempfile.TemporaryDirectory() as t:
        folder = a.weights or Path(t)
        for arch in ("resnet152", "resnext101_32x8d"):
            weight_file(arch, folder)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {a.device}")
        for name in NETWORKS:
            r = subprocess.run([sys.executable, __file__, "--only", name, "--weights", str(folder), "--device",
                                a.device, "--steps", str(a.steps), "--crop", a.crop]
                               + (["--preset-batch"] if a.preset_batch else []), capture_output=True, text=True)
            if r.returncode:
                print(f"{name}: failed\n{r.stderr[-2000:]}")
                continue
            print(json.loads(r.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()

"""The bill before the push: each kernel's GPU-hours and sessions, the total, the account's quota
and the weeks the plan takes.

Hours come from one table of training throughputs (``RATES``: crops a second of a network on a GPU
type at its preset crop and precision) scaled to each kernel's epochs, crops and pages, plus its
predictions. No GPU figure has been measured with the kit yet (``benchmarks/gpu_check.py`` part C
measures them): every rate is an estimate from the original solution's own logs
(lopuhin/kaggle-kuzushiji-2019 ``_runs/*/json-log-plots.log``: the first and last timestamps of a
fold's training, on the GPU its README names), converted to a T4 by the ratio the bill says. Other
backbones and crops are scaled by their FLOPs (torchvision/timm figures at 224 px) and crop area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kzlib.preset import PipelineConfig

# Pages of the competition's data (train.csv and sample_submission.csv rows); a kernel holds out one
# fold of the train pages and predicts all test pages.
TRAIN_PAGES, TEST_PAGES = 3881, 4150
GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 4.1, "resnet101": 7.8, "resnet152": 11.5,
          "resnext101_32x8d": 16.5}  # at 224 px, the whole network (a relative size is all that is used)


@dataclass(frozen=True)
class Rate:
    """Training crops a second of one network on one GPU type."""
    crops_per_s: float
    backbone: str
    crop: tuple[int, int]        # height, width of the crops the rate is for
    source: str                  # "measured ..." or "estimate: ..."


RATES = {
    ("detector", "T4"): Rate(8.9, "resnet152", (384, 512),
                             "estimate: upstream's fold 0 took 7.9 h for 45 epochs of 2x3,105 crops on a 2080 Ti in "
                             "fp32 (9.9 crops/s); x0.6 for a T4 in fp32 (8.1 vs 13.4 TFLOP/s), x1.5 for fp16"),
    ("classifier", "T4"): Rate(8.4, "resnext101_32x8d", (768, 512),
                               "estimate: upstream's ResNeXt-101 fold 0 took 15.5 h for 50 epochs of 6x3,130 crops "
                               "on a 2080 Ti in fp16 (16.7 crops/s); x0.5 for a T4 (320 vs 616 GB/s, 70 W)"),
}
FORWARD_SHARE = 1 / 3  # a forward pass is about a third of a training step


def rate(kind: str, backbone: str, crop: tuple[int, int], gpu: str = "T4") -> tuple[float, str]:
    """Crops a second of ``backbone`` on ``gpu`` at ``crop``, scaled from the table's rate."""
    r = RATES[(kind, gpu)]
    scale = GFLOPS[r.backbone] / GFLOPS.get(backbone, GFLOPS[r.backbone]) * (r.crop[0] * r.crop[1]) / (crop[0] * crop[1])
    return r.crops_per_s * scale, r.source


def _gpus(cfg: PipelineConfig) -> float:
    """Speed-up of a training over ``cfg.gpus`` T4s of one session (data-parallel: 90% each)."""
    return 1.0 if cfg.gpus == 1 else cfg.gpus * 0.9


@dataclass
class Line:
    kernel: str
    gpu_hours: float
    sessions: int
    what: str


def kernel_hours(kernel, cfg: PipelineConfig, train_pages: int, test_pages: int) -> tuple[float, str]:
    """GPU-hours of one kernel (0 for a CPU kernel) and how they were counted."""
    if not kernel.gpu:
        return 0.0, "CPU"
    per_fold = train_pages * (cfg.n_folds - 1) / cfg.n_folds
    held_out = train_pages / cfg.n_folds
    if kernel.template == "detect":
        c = cfg.detect_config()
        speed = rate("detector", c.backbone, (c.crop_height, c.crop_width))[0] * _gpus(cfg)
        train = c.epochs * c.crops_per_page * per_fold / speed
        page = c.page_size ** 2 * 0.65  # a page's pixels at its longest side (pages are about 0.65 as wide)
        predict = (held_out + test_pages) * page / (c.crop_height * c.crop_width) * FORWARD_SHARE / speed
        return (train + predict) / 3600, f"{c.epochs} epochs x {c.crops_per_page} crops at {speed:.1f} crops/s"
    kind = kernel.values["KIND"]
    base = kind.removesuffix("-pl-ft").removesuffix("-pl")
    c = cfg.classify_config(base)
    epochs, crops = c.epochs, c.crops_per_page
    pages = per_fold
    if kind.endswith("-pl-ft"):
        epochs, crops, pages = cfg.finetune_epochs, cfg.finetune_crops_per_page, per_fold + test_pages * cfg.pseudo_oversample
    elif kind.endswith("-pl"):
        crops, pages = cfg.refit_crops_per_page, per_fold + test_pages * cfg.pseudo_oversample
    speed = rate("classifier", c.backbone, (c.crop_height, c.crop_width))[0] * _gpus(cfg)
    train = epochs * crops * pages / speed
    scales = sum((1 + s) ** 2 for s in [c.scale_aug * i / max(1, cfg.n_tta - 1) for i in range(cfg.n_tta)])
    page = c.test_size ** 2 * 0.65
    predict = (held_out + test_pages) * scales * page / (c.crop_height * c.crop_width) * FORWARD_SHARE / speed
    return (train + predict) / 3600, f"{epochs} epochs x {crops} crops of {pages:.0f} pages at {speed:.1f} crops/s"


def bill(kernels, cfg: PipelineConfig, budget_hours: float, train_pages: int = TRAIN_PAGES,
         test_pages: int = TEST_PAGES) -> list[Line]:
    out = []
    for k in kernels:
        hours, what = kernel_hours(k, cfg, train_pages, test_pages)
        out.append(Line(k.slug, hours, max(1, math.ceil(hours / budget_hours)) if hours else 1, what))
    return out


def quota(api) -> dict | None:
    """The account's weekly GPU quota from the API (``quota_view``): hours allowed, used, left; None
    when the API does not answer."""
    try:
        q = api.quota_view()
    except Exception:  # noqa: BLE001  (any failure: the bill says the quota is unknown)
        return None
    gpu = getattr(q, "gpu_quota", None)
    if gpu is None or gpu.total_time_allowed is None:
        return None
    allowed = gpu.total_time_allowed.total_seconds() / 3600
    used = gpu.time_used.total_seconds() / 3600 if gpu.time_used is not None else 0.0
    return {"allowed": allowed, "used": used, "left": max(0.0, allowed - used),
            "refresh": str(getattr(q, "quota_refresh_time", "") or "")}


def weeks(total: float, q: dict | None, weekly: float = 30.0) -> float:
    """Weeks the plan takes: this week's remaining quota first, then the weekly allowance."""
    allowed = q["allowed"] if q else weekly
    left = q["left"] if q else weekly
    return 0.0 if total <= 0 else (1.0 if total <= left else 1.0 + (total - left) / max(allowed, 1e-9))


def format_bill(lines: list[Line], q: dict | None, gpus: int = 1) -> str:
    width = max(len(x.kernel) for x in lines)
    rows = [f"{'kernel':<{width}}  {'GPU-h':>6}  {'sessions':>8}  how"]
    for x in lines:
        rows.append(f"{x.kernel:<{width}}  {x.gpu_hours:6.1f}  {x.sessions:>8}  {x.what}")
    total = sum(x.gpu_hours for x in lines)
    sessions = sum(x.sessions for x in lines if x.gpu_hours)
    rows.append(f"{'total':<{width}}  {total:6.1f}  {sessions:>8}  GPU sessions (T4{' x2' if gpus > 1 else ''})")
    if q:
        rows.append(f"quota: {q['left']:.1f} of {q['allowed']:.1f} GPU-hours left this week (refresh {q['refresh']}); "
                    f"the plan takes about {weeks(total, q):.1f} week(s)")
    else:
        rows.append(f"quota: not available from the API; at Kaggle's usual 30 GPU-hours a week the plan takes about "
                    f"{weeks(total, None):.1f} week(s)")
    rows.append("every rate is an estimate (no GPU measurement with the kit yet): " +
                "; ".join(f"{kind} {r.crops_per_s} crops/s {r.backbone} {r.crop[0]}x{r.crop[1]} — {r.source}"
                          for (kind, _), r in RATES.items()))
    return "\n".join(rows)

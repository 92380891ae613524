"""The bill before the push: each kernel's GPU-hours and sessions, the total, the account's quota
and the weeks the plan takes.

Hours come from one table of training throughputs (``RATES``: crops a second of a network on a GPU
type at its preset crop and precision) scaled to each kernel's epochs, crops and pages, plus its
predictions. No GPU figure has been measured with the kit yet (``benchmarks/gpu_check.py`` part C
measures them): every rate is an estimate from the original solution's own logs
(lopuhin/kaggle-kuzushiji-2019 ``_runs/*/json-log-plots.log``: the first and last timestamps of a
fold's training, on the GPU its README names), converted to a T4 by the ratio the bill says. Other
backbones and crops are scaled by their FLOPs (torchvision/timm figures at 224 px) and crop area.

Those timestamps include the validation upstream ran after every epoch, so a rate covers an epoch
and its validation. With ``gpus`` > 1 only the training part is shared (data-parallel, 90% per
GPU): validation runs on the first process while the others wait, and the prediction stages run in
one process on one GPU.

Each kernel is also costed as upstream's recipe (``preset_full``, on the same sessions) would run
it: the line says what the preset changes and the GPU-hours that saves, and the bill ends with
upstream's kernels the preset leaves out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from kzlib.config import validations
from kzlib.kaggle.plan import kernel_plan
from kzlib.preset import PipelineConfig, load_preset, preset_path

# Pages of the competition's data (train.csv and sample_submission.csv rows); a kernel holds out one
# fold of the train pages and predicts all test pages (a detector kernel only for the test-box rule's folds).
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


def _training_seconds(epochs: int, crops: int, pages: float, held_out: float, page_crops: float, speed: float,
                      cfg: PipelineConfig, validate_every: int) -> float:
    """Seconds of a training at ``speed``, a rate that covers an epoch and its validation (upstream's
    logs validated after every epoch). An epoch's share of validation (``held_out`` pages of
    ``page_crops`` crops, forward only, against ``crops`` x ``pages`` training crops) runs on one GPU,
    once every ``validate_every`` epochs; the rest is shared over the session's GPUs."""
    epoch = crops * pages / speed
    validation = held_out * page_crops * FORWARD_SHARE
    share = validation / (validation + crops * pages)
    return epochs * epoch * (1 - share) / _gpus(cfg) + validations(epochs, validate_every) * epoch * share


@dataclass
class Line:
    kernel: str
    gpu_hours: float
    sessions: int
    what: str
    saves: float = 0.0      # GPU-hours this kernel saves against upstream's recipe of it
    changes: str = ""       # what differs from upstream's recipe of it


def kernel_hours(kernel, cfg: PipelineConfig, train_pages: int, test_pages: int) -> tuple[float, str]:
    """GPU-hours of one kernel (0 for a CPU kernel) and how they were counted."""
    if not kernel.gpu:
        return 0.0, "CPU"
    per_fold = train_pages * (cfg.n_folds - 1) / cfg.n_folds
    held_out = train_pages / cfg.n_folds
    if kernel.template == "detect":
        c = cfg.detect_config()
        speed = rate("detector", c.backbone, (c.crop_height, c.crop_width))[0]
        page = c.page_size ** 2 * 0.65 / (c.crop_height * c.crop_width)  # a page's crops at its longest side
        train = _training_seconds(c.epochs, c.crops_per_page, per_fold, held_out, page, speed, cfg, c.validate_every)
        tested = any(s.startswith("detect-test-") for s in kernel.stages)  # only the test-box rule's folds
        predict = (held_out + (test_pages if tested else 0)) * page * FORWARD_SHARE / speed
        return (train + predict) / 3600, (f"{c.epochs} epochs x {c.crops_per_page} crops at "
                                          f"{speed * _gpus(cfg):.1f} crops/s")
    kind = kernel.values["KIND"]
    base = kind.removesuffix("-pl-ft").removesuffix("-pl")
    c = cfg.classify_config(base)
    epochs, crops = c.epochs, c.crops_per_page
    pages = per_fold
    if kind.endswith("-pl-ft"):
        epochs, crops, pages = cfg.finetune_epochs, cfg.finetune_crops_per_page, per_fold + test_pages * cfg.pseudo_oversample
    elif kind.endswith("-pl"):
        crops, pages = cfg.refit_crops_per_page, per_fold + test_pages * cfg.pseudo_oversample
    speed = rate("classifier", c.backbone, (c.crop_height, c.crop_width))[0]
    page = c.test_size ** 2 * 0.65 / (c.crop_height * c.crop_width)
    train = _training_seconds(epochs, crops, pages, held_out, page * c.validate_n_tta, speed, cfg, c.validate_every)
    scales = sum((1 + s) ** 2 for s in [c.scale_aug * i / max(1, cfg.n_tta - 1) for i in range(cfg.n_tta)])
    predict = (held_out + test_pages) * scales * page * FORWARD_SHARE / speed
    return (train + predict) / 3600, (f"{epochs} epochs x {crops} crops of {pages:.0f} pages at "
                                      f"{speed * _gpus(cfg):.1f} crops/s")


def upstream_preset(cfg: PipelineConfig) -> PipelineConfig:
    """Upstream's recipe (``preset_full``) on the sessions ``cfg`` trains on (its ``gpus``)."""
    return replace(load_preset(preset_path("full")), gpus=cfg.gpus)


def _settings(kernel, cfg: PipelineConfig) -> dict:
    """The settings of a kernel that its GPU-hours depend on, by name."""
    if kernel.template == "detect":
        c = cfg.detect_config()
        return {"folds": cfg.n_folds, "backbone": c.backbone, "epochs": c.epochs, "crops a page": c.crops_per_page,
                "page size": c.page_size, "validations": validations(c.epochs, c.validate_every)}
    kind = kernel.values["KIND"]
    base = kind.removesuffix("-pl-ft").removesuffix("-pl")
    c = cfg.classify_config(base)
    epochs, crops = c.epochs, c.crops_per_page
    if kind.endswith("-pl-ft"):
        epochs, crops = cfg.finetune_epochs, cfg.finetune_crops_per_page
    elif kind.endswith("-pl"):
        crops = cfg.refit_crops_per_page
    return {"folds": cfg.n_folds, "backbone": c.backbone, "epochs": epochs, "crops a page": crops,
            "page size": c.test_size, "TTA scales": cfg.n_tta, "validations": validations(epochs, c.validate_every)}


def bill(kernels, cfg: PipelineConfig, budget_hours: float, train_pages: int = TRAIN_PAGES,
         test_pages: int = TEST_PAGES, upstream: PipelineConfig | None = None, prefix: str = "kzlib") -> list[Line]:
    """One line per kernel: its GPU-hours and sessions, and what it changes and saves against
    ``upstream`` (default: upstream's recipe, ``preset_full``, on the same sessions)."""
    ref = upstream or upstream_preset(cfg)
    ref_kernels = {k.slug: k for k in kernel_plan(ref, prefix)}
    out = []
    for k in kernels:
        hours, what = kernel_hours(k, cfg, train_pages, test_pages)
        line = Line(k.slug, hours, max(1, math.ceil(hours / budget_hours)) if hours else 1, what)
        twin = ref_kernels.get(k.slug)
        if twin is not None and k.gpu:
            theirs, ours = _settings(twin, ref), _settings(k, cfg)
            line.changes = ", ".join(f"{name} {theirs[name]}->{ours[name]}" for name in ours if ours[name] != theirs[name])
            line.saves = kernel_hours(twin, ref, train_pages, test_pages)[0] - hours
        out.append(line)
    return out


def left_out(cfg: PipelineConfig, prefix: str = "kzlib", train_pages: int = TRAIN_PAGES,
             test_pages: int = TEST_PAGES, upstream: PipelineConfig | None = None) -> list[tuple[str, int, float]]:
    """Upstream's kernels that ``cfg``'s chain does not run, by group (the slug with its fold as
    ``f*``): (group, kernels, GPU-hours upstream's recipe spends on them)."""
    ref = upstream or upstream_preset(cfg)
    mine = {k.slug for k in kernel_plan(cfg, prefix)}
    groups: dict[str, list[float]] = {}
    for k in kernel_plan(ref, prefix):
        if k.slug not in mine:
            groups.setdefault(re.sub(r"-f\d+$", "-f*", k.slug), []).append(
                kernel_hours(k, ref, train_pages, test_pages)[0])
    return [(g, len(h), sum(h)) for g, h in groups.items()]


def bill_text(kernels, cfg: PipelineConfig, budget_hours: float, q: dict | None, prefix: str = "kzlib") -> str:
    """The bill of ``kernels`` (of ``cfg``'s chain) against the quota ``q`` and upstream's recipe."""
    return format_bill(bill(kernels, cfg, budget_hours, prefix=prefix), q, cfg.gpus, left_out(cfg, prefix))


def quota(api) -> dict | None:
    """The account's weekly GPU quota from the API (``quota_view``): hours allowed, used, left, and
    when it refreshes (``refresh`` as the API says it, ``refresh_at`` in seconds since the epoch, None
    when not given); None when the API does not answer."""
    try:
        q = api.quota_view()
    except Exception:  # noqa: BLE001  (any failure: the bill says the quota is unknown)
        return None
    gpu = getattr(q, "gpu_quota", None)
    if gpu is None or gpu.total_time_allowed is None:
        return None
    allowed = gpu.total_time_allowed.total_seconds() / 3600
    used = gpu.time_used.total_seconds() / 3600 if gpu.time_used is not None else 0.0
    refresh = getattr(q, "quota_refresh_time", None)
    at = None
    if isinstance(refresh, datetime):  # kagglesdk gives UTC without a zone
        at = (refresh if refresh.tzinfo else refresh.replace(tzinfo=timezone.utc)).timestamp()
    return {"allowed": allowed, "used": used, "left": max(0.0, allowed - used), "refresh": str(refresh or ""),
            "refresh_at": at}


def weeks(total: float, q: dict | None, weekly: float = 30.0) -> float:
    """Weeks the plan takes: this week's remaining quota first, then the weekly allowance."""
    allowed = q["allowed"] if q else weekly
    left = q["left"] if q else weekly
    return 0.0 if total <= 0 else (1.0 if total <= left else 1.0 + (total - left) / max(allowed, 1e-9))


def format_bill(lines: list[Line], q: dict | None, gpus: int = 1,
                dropped: list[tuple[str, int, float]] = ()) -> str:
    """The bill as a table; with a ``saves`` column and upstream's left-out kernels (``dropped``,
    from ``left_out``) when the plan differs from upstream's recipe."""
    width = max(len(x.kernel) for x in lines)
    compared = any(x.changes for x in lines) or bool(dropped)
    rows = [f"{'kernel':<{width}}  {'GPU-h':>6}  {'sessions':>8}  " + ("saves  " if compared else "") + "how"]
    for x in lines:
        saves = (f"{x.saves:5.1f}  " if x.changes else f"{'':5}  ") if compared else ""
        vs = f"; against upstream: {x.changes}" if x.changes else ""
        rows.append(f"{x.kernel:<{width}}  {x.gpu_hours:6.1f}  {x.sessions:>8}  {saves}{x.what}{vs}")
    total = sum(x.gpu_hours for x in lines)
    sessions = sum(x.sessions for x in lines if x.gpu_hours)
    rows.append(f"{'total':<{width}}  {total:6.1f}  {sessions:>8}  " + ("       " if compared else "")
                + f"GPU sessions (T4 x2, training on {gpus} GPU{'s' if gpus > 1 else ''})")
    if compared:
        saved = sum(x.saves for x in lines if x.changes)
        gone = sum(h for _, _, h in dropped)
        rows.append(f"against upstream's recipe (preset full on the same sessions): the kernels above save "
                    f"{saved:.1f} GPU-h" + (f"; left out: " + ", ".join(f"{g} ({n} kernel{'s' if n > 1 else ''}, "
                                                                            f"{h:.1f} GPU-h)" for g, n, h in dropped)
                                            + f" = {gone:.1f} GPU-h" if dropped else ""))
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

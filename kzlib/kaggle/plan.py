"""Kernels of the chain and their rendering: one folder per kernel with its script and
``kernel-metadata.json``, plus the push order.

Kernels (made from ``kzlib.stages.plan_stages``; the scripts are ``kernels/*.py`` with their
values filled in):

==========================  =====================================================  ===========================
kernel                      stages                                                 reads the outputs of
==========================  =====================================================  ===========================
``kzlib-detect-f{k}``        detect-f{k}, detect-oof-f{k}, detect-test-f{k}           -
``kzlib-cls-{kind}-f{k}``    detect-merge, classify-{kind}-f{k}, -predict-f{k}        every detector kernel
``kzlib-pseudolabel``        pseudolabel                                           every base classifier kernel
``kzlib-cls-{pk}-pl-ft-f{k}`` detect-merge, classify-{pk}-pl-ft-f{k}, -predict-f{k}   detectors, pseudolabel,
                                                                                   ``kzlib-cls-{pk}-f{k}``
``kzlib-cls-{pk}-pl-f{k}``   detect-merge, classify-{pk}-pl-f{k}, -predict-f{k}       detectors, pseudolabel
``kzlib-stack``              stack (level 2 and the submission)                    every classifier kernel
==========================  =====================================================  ===========================

``detect-test-f{k}`` is in the kernels of the test-box rule's folds only: fold 0's (``fold0``), or
every fold's (``vote``).
"""

from __future__ import annotations

import json
import pprint
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kzlib.io import atomic_path, write_json_atomic
from kzlib.preset import PipelineConfig
from kzlib.stages import plan_stages

COMPETITION = "kuzushiji-recognition"
DATASET_SLUG = "kzlib-kit"   # Kaggle wants dataset slugs of 6-50 characters; "kzlib" is too short
SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

BEGIN = "# ---- values filled in by kzlib kaggle render ----"
END = "# ---- end of the rendered values ----"
BOOTSTRAP = "# ---- bootstrap"  # the line of a template where kernels/bootstrap.py goes
MACHINE_SHAPE = "NvidiaTeslaT4"  # Kaggle's GPU machine shape (T4s; kaggle-cli docs: "GPU T4 x2", the default GPU)
KAGGLE_MAX_GPUS = 2              # the most GPUs a Kaggle session has (T4 x2)
# Kaggle's images as kagglesdk documents ``docker_image``: gcr.io/kaggle-images/python@sha256:<digest>
# (GPU sessions: kaggle-gpu-images); a tag (":v160") names one too
DOCKER_IMAGE_RE = re.compile(r"^gcr\.io/kaggle-(?:gpu-)?images/python(?:@sha256:[0-9a-f]{64}|:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


def template_dir() -> Path:
    """``kernels/`` beside the package in a source checkout; ``kzlib/kernels`` once installed."""
    here = Path(__file__).resolve().parents[1]
    for folder in (here.parent / "kernels", here / "kernels"):
        if (folder / "detect.py").is_file():
            return folder
    raise PlanError(f"the kernel templates (kernels/*.py) are not found beside {here}")


class PlanError(ValueError):
    pass


@dataclass
class Kernel:
    slug: str
    what: str
    stages: list[str]
    upstream: list[str] = field(default_factory=list)  # slugs of the kernels whose outputs it reads
    gpu: bool = False
    template: str = "detect"                            # kernels/<template>.py
    values: dict = field(default_factory=dict)          # FOLD, KIND: filled into the template

    @property
    def title(self) -> str:
        # Kaggle derives a kernel's slug from its title: "kzlib detect f0" -> "kzlib-detect-f0"
        return self.slug.replace("-", " ")


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_slug(slug: str, what: str = "kernel") -> str:
    if not (5 <= len(slug) <= 50 and SLUG_RE.match(slug)):
        raise PlanError(f"{what} slug {slug!r} is not valid on Kaggle (lowercase letters, digits and single "
                        "hyphens, 5-50 characters); use a shorter --prefix or model kind name")
    return slug


def check_docker_image(image: str) -> str:
    """``image`` when it names a Kaggle image (or is empty: Kaggle's own choice), else one PlanError line."""
    if image and not DOCKER_IMAGE_RE.match(image):
        raise PlanError(f"--docker-image {image!r} is not a Kaggle image: give gcr.io/kaggle-gpu-images/python@sha256:"
                        "DIGEST (or gcr.io/kaggle-images/python@sha256:DIGEST, or :TAG); the image a kernel ran on is "
                        "in `kaggle kernels pull USER/SLUG -m` (docker_image)")
    return image


def pin_docker_image(folder: Path, image: str) -> str:
    """Pin the kernel in ``folder`` to ``image`` (its ``kernel-metadata.json``; an image Kaggle named,
    or one ``check_docker_image`` passed); returns the image it named before ("" for none)."""
    path = Path(folder) / "kernel-metadata.json"
    meta = json.loads(path.read_text())
    before = meta.get("docker_image", "")
    if before != image:
        meta["docker_image"] = image
        write_json_atomic(meta, path)
    return before


def kernel_plan(cfg: PipelineConfig, prefix: str = "kzlib") -> list[Kernel]:
    """The kernels of ``cfg``'s chain in push order (every kernel after the ones it reads), made
    from ``kzlib.stages.plan_stages``: one kernel per stage group; a classifier kernel also
    merges the detectors' boxes itself (its input), and reads the kernels that own its stages'
    dependencies."""
    specs = plan_stages(cfg)
    kind_slug = {kind: slugify(kind) for kind in cfg.kinds}
    if len(set(kind_slug.values())) < len(kind_slug):
        raise PlanError(f"model kinds {sorted(cfg.kinds)} give the same kernel names once lowercased "
                        "and hyphenated; rename one")
    groups: dict[str, list] = {}
    for spec in specs:
        if spec.kernel:
            groups.setdefault(spec.kernel, []).append(spec)
    by_name = {spec.name: spec for spec in specs}
    slug_of = {g: f"{prefix}-{slugify(g)}" for g in groups}
    owner = {spec.name: g for g, members in groups.items() for spec in members}
    kernels = []
    for g, members in groups.items():
        names = [m.name for m in members]
        first = members[0]
        template, values = first.step.split("-")[0], {}
        if first.step.startswith("classify"):
            names = ["detect-merge"] + names
            values = {"KIND": first.kind, "FOLD": first.fold}
            base = first.kind.removesuffix("-pl-ft").removesuffix("-pl")
            variant = first.kind[len(base):]
            what = {"": "train, detailed predictions on its held-out pages and test",
                    "-pl-ft": f"fine-tune of {prefix}-cls-{slugify(base)}-f{first.fold} with pseudolabels",
                    "-pl": "from scratch with pseudolabels"}[variant]
            what = f"classifier {first.kind}, fold {first.fold}: {what}"
        elif first.step.startswith("detect"):
            what = f"detector, fold {first.fold}: train, out-of-fold boxes" + (
                ", test boxes" if any(m.step == "detect-test" for m in members) else "")
            values = {"FOLD": first.fold}
        elif first.step == "pseudolabel":
            what = "pseudolabels from the blend of the base classifiers on test"
        else:
            what = "level-2 stacking (LightGBM, XGBoost, CatBoost) and the submission"
        deps = [d for n in names for d in by_name[n].deps if d not in names]
        upstream = list(dict.fromkeys(slug_of[owner[d]] for d in deps))
        gpu = first.step.startswith(("detect", "classify"))
        kernels.append(Kernel(slug_of[g], what, names, upstream, gpu, template, values))
    for k in kernels:
        check_slug(k.slug)
    return kernels


def metadata(kernel: Kernel, user: str, dataset_slug: str, continuation: bool = False, docker_image: str = "",
             model_sources: tuple[str, ...] = ()) -> dict:
    """``kernel-metadata.json``: the kit dataset, the competition and exactly the kernels it reads;
    the Docker image pinned (``docker_image``, else the image of the kernel's first version: a
    continuation runs where its first part did)."""
    sources = [f"{user}/{s}" for s in kernel.upstream]
    if continuation:  # its own previous version's output: the training resumes from its checkpoints
        sources.append(f"{user}/{kernel.slug}")
    meta = {
        "id": f"{user}/{kernel.slug}",
        "title": kernel.title,
        "code_file": "kernel.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": kernel.gpu,
        "enable_internet": False,
        "dataset_sources": [f"{user}/{dataset_slug}"],
        "competition_sources": [COMPETITION],
        "kernel_sources": sources,
        "model_sources": list(model_sources),
        "docker_image_pinning_type": "original",
    }
    if docker_image:
        meta["docker_image"] = docker_image
    if kernel.gpu:  # named: without it the API has been seen to pick a retired GPU
        meta["machine_shape"] = MACHINE_SHAPE
    return meta


def script(kernel: Kernel, cfg: PipelineConfig | None, continuation: bool, budget_hours: float) -> str:
    """The kernel's script: its template (``kernels/<template>.py``) with the values filled in and
    the shared opening (``kernels/bootstrap.py``) pasted at its bootstrap line."""
    text = (template_dir() / f"{kernel.template}.py").read_text()
    a, b = text.index(BEGIN), text.index(END)
    values = {"KERNEL": kernel.slug, **kernel.values, "STAGES": kernel.stages, "UPSTREAM": kernel.upstream,
              "GPU": kernel.gpu, "CONTINUATION": continuation, "BUDGET_HOURS": float(budget_hours),
              "PRESET": asdict(cfg) if cfg is not None else {}}
    lines = [f"{k} = {pprint.pformat(v, width=110, sort_dicts=False)}" for k, v in values.items()]
    text = text[:a] + BEGIN + "\n" + "\n".join(lines) + "\n" + text[b:]
    boot = (template_dir() / "bootstrap.py").read_text()
    boot = boot[boot.index("\n" + BOOTSTRAP) + 1:]
    start = text.index("\n" + BOOTSTRAP) + 1
    return text[:start] + boot + text[text.index("\n", start) + 1:]


def render(cfg: PipelineConfig, user: str, out: Path, dataset_slug: str = DATASET_SLUG, prefix: str = "kzlib",
           continue_: tuple[str, ...] = (), budget_hours: float = 11.0, only: tuple[str, ...] = (),
           gpus: int | None = None, docker_image: str = "") -> list[Kernel]:
    """Write ``out/<slug>/{kernel.py,kernel-metadata.json}`` for every kernel (or the ``only``
    ones), ``out/push_order.txt`` and ``out/render.json`` (what ``kzlib kaggle push`` re-renders
    continuations with); returns the kernels in push order. ``continue_``: slugs of kernels
    rendered as continuations (they read and resume their own previous version's output).
    ``gpus``: processes per training in the GPU kernels (torchrun over a session's T4s), instead
    of the preset's. ``docker_image``: the image every kernel runs in (default: each kernel's
    first version's, pinned)."""
    if not re.match(r"^[A-Za-z0-9_-]+$", user or ""):
        raise PlanError(f"Kaggle user name {user!r} is not valid")
    check_slug(dataset_slug, "dataset")
    check_docker_image(docker_image)
    if not 0 < budget_hours <= 12:
        raise PlanError(f"--budget-hours {budget_hours}: Kaggle sessions end at 12 h; give a budget in (0, 12]")
    if not 1 <= (gpus or cfg.gpus) <= KAGGLE_MAX_GPUS:
        raise PlanError(f"gpus {gpus or cfg.gpus}: a Kaggle session has at most {KAGGLE_MAX_GPUS} GPUs (T4 x2)")
    if gpus is not None:
        cfg = replace(cfg, gpus=gpus)
    kernels = kernel_plan(cfg, prefix)
    slugs = {k.slug for k in kernels}
    unknown = sorted((set(continue_) | set(only)) - slugs)
    if unknown:
        raise PlanError(f"{', '.join(unknown)}: no such kernel (kernels: {', '.join(sorted(slugs))})")
    out = Path(out)
    for k in kernels:
        if only and k.slug not in only:
            continue
        folder = out / k.slug
        if folder.exists():
            shutil.rmtree(folder)
        cont = k.slug in continue_
        with atomic_path(folder / "kernel.py") as tmp:
            tmp.write_text(script(k, cfg, cont, budget_hours))
        write_json_atomic(metadata(k, user, dataset_slug, cont, docker_image), folder / "kernel-metadata.json")
    with atomic_path(out / "push_order.txt") as tmp:
        tmp.write_text("".join(f"{k.slug}\n" for k in kernels))
    write_json_atomic({"user": user, "dataset_slug": dataset_slug, "prefix": prefix, "budget_hours": budget_hours,
                       "docker_image": docker_image, "docker_image_pinning_type": "original", "preset": asdict(cfg)},
                      out / "render.json")
    return kernels


def render_read(model: str, user: str, out: Path, dataset_slug: str = DATASET_SLUG, prefix: str = "kzlib",
                budget_hours: float = 11.0, docker_image: str = "", gpu: bool = True) -> Kernel:
    """One kernel, ``PREFIX-read``: the competition's test pages read with a trained bundle published
    as a Kaggle Model (``model``: OWNER/MODEL/FRAMEWORK/VARIATION/VERSION, attached through
    ``model_sources``), writing ``submission.csv``."""
    if len(model.split("/")) != 5:
        raise PlanError(f"--model {model!r}: give OWNER/MODEL/FRAMEWORK/VARIATION/VERSION (kzlib kaggle publish "
                        "prints it)")
    check_docker_image(docker_image)
    k = Kernel(check_slug(f"{prefix}-read"), "the test pages read with a bundle from Kaggle Models", [], [], gpu, "read",
               {"MODEL": model})
    folder = Path(out) / k.slug
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_path(folder / "kernel.py") as tmp:
        tmp.write_text(script(k, None, False, budget_hours))
    write_json_atomic(metadata(k, user, dataset_slug, False, docker_image, (model,)), folder / "kernel-metadata.json")
    return k


def push_commands(kernels: list[Kernel], out: Path, user: str) -> str:
    lines = ["# `kzlib kaggle push` pushes these in order, at most 2 GPU sessions at a time, waits for each,",
             "# and pushes continuations of kernels stopped by the time budget. By hand, in this order:"]
    for k in kernels:
        lines.append(f"kaggle kernels push -p {out / k.slug}    # after: {', '.join(k.upstream) or '-'}")
    return "\n".join(lines)

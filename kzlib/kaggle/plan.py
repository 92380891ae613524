"""Kernels of the chain and their rendering: one folder per kernel with its script and
``kernel-metadata.json``, plus the push order.

Kernels (the stage names are ``kzlib.pipeline``'s):

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
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kzlib.io import atomic_path, write_json_atomic
from kzlib.preset import PipelineConfig

COMPETITION = "kuzushiji-recognition"
DATASET_SLUG = "kzlib-kit"   # Kaggle wants dataset slugs of 6-50 characters; "kzlib" is too short
SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

SCRIPT = '''"""kzlib kernel {slug}: {what}.

Rendered by `python -m kzlib.kaggle render`; change the preset or the template, not this file.
Runs the kzlib stages {stages} with the kzlib source of the attached dataset.
"""
import json
import os
import sys

INPUT = os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input")
sys.path.insert(0, os.path.join(INPUT, {dataset!r}))

from kzlib.kaggle.runtime import main  # noqa: E402

SPEC = json.loads(r"""
{spec}
""")

if __name__ == "__main__":
    sys.exit(main(SPEC))
'''


class PlanError(ValueError):
    pass


@dataclass
class Kernel:
    slug: str
    what: str
    stages: list[str]
    upstream: list[str] = field(default_factory=list)  # slugs of the kernels whose outputs it reads
    gpu: bool = False

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


def kernel_plan(cfg: PipelineConfig, prefix: str = "kzlib") -> list[Kernel]:
    """The kernels of ``cfg``'s chain in push order (every kernel after the ones it reads), made
    from ``kzlib.pipeline.plan_stages``: one kernel per stage group; a classifier kernel also
    merges the detectors' boxes itself (its input), and reads the kernels that own its stages'
    dependencies."""
    from kzlib.pipeline import plan_stages

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
        if first.step.startswith("classify"):
            names = ["detect-merge"] + names
            base = first.kind.removesuffix("-pl-ft").removesuffix("-pl")
            variant = first.kind[len(base):]
            what = {"": "train, detailed predictions on its held-out pages and test",
                    "-pl-ft": f"fine-tune of {prefix}-cls-{slugify(base)}-f{first.fold} with pseudolabels",
                    "-pl": "from scratch with pseudolabels"}[variant]
            what = f"classifier {first.kind}, fold {first.fold}: {what}"
        elif first.step.startswith("detect"):
            what = f"detector, fold {first.fold}: train, out-of-fold boxes, test boxes"
        elif first.step == "pseudolabel":
            what = "pseudolabels from the blend of the base classifiers on test"
        else:
            what = "level-2 stacking (LightGBM, XGBoost, CatBoost) and the submission"
        deps = [d for n in names for d in by_name[n].deps if d not in names]
        upstream = list(dict.fromkeys(slug_of[owner[d]] for d in deps))
        gpu = first.step.startswith(("detect", "classify"))
        kernels.append(Kernel(slug_of[g], what, names, upstream, gpu))
    for k in kernels:
        check_slug(k.slug)
    return kernels


def metadata(kernel: Kernel, user: str, dataset_slug: str, resume: bool = False) -> dict:
    sources = [f"{user}/{s}" for s in kernel.upstream]
    if resume:  # its own previous version's output: the training resumes from its checkpoints
        sources.append(f"{user}/{kernel.slug}")
    return {
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
    }


def render(cfg: PipelineConfig, user: str, out: Path, dataset_slug: str = DATASET_SLUG, prefix: str = "kzlib",
           resume: tuple[str, ...] = ()) -> list[Kernel]:
    """Write ``out/<slug>/{kernel.py,kernel-metadata.json}`` for every kernel and
    ``out/push_order.txt``; returns the kernels in push order. ``resume``: slugs of kernels
    that read their own previous version's output (a continuation after Kaggle's time limit)."""
    from dataclasses import asdict

    if not re.match(r"^[A-Za-z0-9_-]+$", user or ""):
        raise PlanError(f"Kaggle user name {user!r} is not valid")
    check_slug(dataset_slug, "dataset")
    kernels = kernel_plan(cfg, prefix)
    slugs = {k.slug for k in kernels}
    unknown = sorted(set(resume) - slugs)
    if unknown:
        raise PlanError(f"--resume {', '.join(unknown)}: no such kernel (kernels: {', '.join(sorted(slugs))})")
    out = Path(out)
    for k in kernels:
        folder = out / k.slug
        if folder.exists():
            shutil.rmtree(folder)
        spec = {"kernel": k.slug, "stages": k.stages, "upstream": k.upstream, "dataset": dataset_slug,
                "competition": COMPETITION, "gpu": k.gpu, "preset": asdict(cfg)}
        script = SCRIPT.format(slug=k.slug, what=k.what, stages=", ".join(k.stages), dataset=dataset_slug,
                               spec=json.dumps(spec, indent=1))
        with atomic_path(folder / "kernel.py") as tmp:
            tmp.write_text(script)
        write_json_atomic(metadata(k, user, dataset_slug, k.slug in resume), folder / "kernel-metadata.json")
    with atomic_path(out / "push_order.txt") as tmp:
        tmp.write_text("".join(f"{k.slug}\n" for k in kernels))
    return kernels


def push_commands(kernels: list[Kernel], out: Path, user: str) -> str:
    lines = ["# Push in this order; wait until a kernel's run is complete before pushing the kernels that",
             "# read it. The kernels of one wave are independent and can run at the same time."]
    done: set[str] = set()
    wave = 0
    left = list(kernels)
    while left:
        ready = [k for k in left if set(k.upstream) <= done]
        wave += 1
        lines.append(f"# wave {wave}")
        for k in ready:
            lines.append(f"kaggle kernels push -p {out / k.slug}")
        lines.append(f"# wait until complete: kaggle kernels status {user}/{ready[0].slug}"
                     + (f" (and the other {len(ready) - 1})" if len(ready) > 1 else ""))
        done |= {k.slug for k in ready}
        left = [k for k in left if k.slug not in done]
    return "\n".join(lines)

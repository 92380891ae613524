"""The chain as data: its stages (``plan_stages``), each of a kind of step (``kzlib.steps.STEPS``:
what it runs, writes and hashes), and the config of each network stage. The runner
(``kzlib.pipeline``), the Kaggle planner (``kzlib.kaggle.plan``) and the bundles (``kzlib.export``)
read this module. Torch-free.

Stages of a preset, each after the stages it reads::

    detect-fK            detect-train      a fold's detector                    (kernel detect-fK)
    detect-oof-fK        detect-oof        its boxes on the fold's held-out pages
    detect-test-fK       detect-test       its boxes on the test pages (only the test-box rule's folds)
    detect-merge         detect-merge      every train page's boxes; the test boxes of the rule
    classify-KIND-fK     classify-train    a classifier per kind and fold      (kernel cls-KIND-fK)
    classify-KIND-predict-fK  classify-predict  its detailed files, held-out and test pages
    pseudolabel          pseudolabel       confident test boxes of the base kinds' blend
    classify-KIND-pl-ft-fK / -pl-fK        the pseudolabel kind fine-tuned / refitted with them
    stack                stack             level 2 and the submission
"""

from __future__ import annotations

from dataclasses import dataclass

from kzlib.classify.config import ClassifyConfig
from kzlib.detect.config import DetectConfig
from kzlib.preset import PipelineConfig
from kzlib.work import WorkDir


@dataclass(frozen=True)
class Stage:
    """One stage of the chain. ``step`` says what kind of stage it is (a key of ``kzlib.steps.STEPS``);
    ``kernel`` groups stages into Kaggle kernels (``detect-f0``, ``cls-KIND-f0``, ``pseudolabel``,
    ``stack``)."""
    name: str
    step: str
    deps: tuple[str, ...] = ()
    fold: int | None = None
    kind: str = ""
    kernel: str = ""


def classifier_kinds(cfg: PipelineConfig) -> list[str]:
    """The base kinds, then the pseudolabel kinds (``KIND-pl-ft`` fine-tune, ``KIND-pl`` refit)."""
    out = list(cfg.kinds)
    if cfg.pseudo_kind:
        out.append(f"{cfg.pseudo_kind}-pl-ft")
        if cfg.refit_scratch:
            out.append(f"{cfg.pseudo_kind}-pl")
    return out


def plan_stages(cfg: PipelineConfig) -> list[Stage]:
    """Every stage of ``cfg``'s chain, each after the stages it depends on."""
    folds = range(cfg.n_folds)
    test_folds = cfg.test_rule().folds  # only their detectors' test boxes are read (fold 0's, or every fold's vote)
    out: list[Stage] = []
    for k in folds:
        g = f"detect-f{k}"
        out += [Stage(f"detect-f{k}", "detect-train", (), k, kernel=g),
                Stage(f"detect-oof-f{k}", "detect-oof", (f"detect-f{k}",), k, kernel=g)]
        if k in test_folds:
            out.append(Stage(f"detect-test-f{k}", "detect-test", (f"detect-f{k}",), k, kernel=g))
    out.append(Stage("detect-merge", "detect-merge",
                     tuple(f"detect-oof-f{k}" for k in folds) + tuple(f"detect-test-f{k}" for k in test_folds)))

    def classifier(kind: str, k: int, deps: tuple[str, ...]) -> list[Stage]:
        g = f"cls-{kind}-f{k}"
        return [Stage(f"classify-{kind}-f{k}", "classify-train", deps, k, kind, g),
                Stage(f"classify-{kind}-predict-f{k}", "classify-predict", (f"classify-{kind}-f{k}",), k, kind, g)]

    for kind in cfg.kinds:
        for k in folds:
            out += classifier(kind, k, ("detect-merge",))
    if cfg.pseudo_kind:
        pk = cfg.pseudo_kind
        out.append(Stage("pseudolabel", "pseudolabel",
                         tuple(f"classify-{kind}-predict-f{k}" for kind in cfg.kinds for k in folds),
                         kernel="pseudolabel"))
        for k in folds:
            out += classifier(f"{pk}-pl-ft", k, ("detect-merge", "pseudolabel", f"classify-{pk}-f{k}"))
            if cfg.refit_scratch:
                out += classifier(f"{pk}-pl", k, ("detect-merge", "pseudolabel"))
    out.append(Stage("stack", "stack", tuple(f"classify-{kind}-predict-f{k}" for kind in classifier_kinds(cfg)
                                             for k in folds), kernel="stack"))
    return out


def classifier_config(cfg: PipelineConfig, work: WorkDir, kind: str, fold: int) -> ClassifyConfig:
    """The config of any classifier kind of the chain on ``fold``: a base kind's, or the pseudolabel
    fine-tune's (from the base kind's run of that fold) or refit's."""
    pk = cfg.pseudo_kind
    if pk and kind == f"{pk}-pl-ft":
        return cfg.finetune_config(pk, str(work.classifier(pk, fold).best))
    if pk and kind == f"{pk}-pl":
        return cfg.refit_config(pk)
    return cfg.classify_config(kind)


def stage_config(cfg: PipelineConfig, work: WorkDir, s: Stage) -> DetectConfig | ClassifyConfig:
    """The network config of a detector or classifier stage."""
    return cfg.detect_config() if s.step.startswith("detect") else classifier_config(cfg, work, s.kind, s.fold)

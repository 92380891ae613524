"""The chain as data: its stages (``plan_stages``) and, per kind of stage, one record (``STEPS``) of
what it runs, what it writes, what a half-done one leaves, the settings its fingerprint hashes and
its run folder. The runner (``kzlib.pipeline``), the Kaggle planner (``kzlib.kaggle.plan``) and the
bundles (``kzlib.export``) read this module; ``kzlib.steps`` holds the function each step runs.
Torch-free.

Stages of a preset, each after the stages it reads::

    detect-fK            detect-train      a fold's detector                    (kernel detect-fK)
    detect-oof-fK        detect-oof        its boxes on the fold's held-out pages
    detect-test-fK       detect-test       its boxes on the test pages (the test-box rule's folds)
    detect-merge         detect-merge      every train page's boxes; the test boxes of the rule
    classify-KIND-fK     classify-train    a classifier per kind and fold      (kernel cls-KIND-fK)
    classify-KIND-predict-fK  classify-predict  its detailed files, held-out and test pages
    pseudolabel          pseudolabel       confident test boxes of the base kinds' blend
    classify-KIND-pl-ft-fK / -pl-fK        the pseudolabel kind fine-tuned / refitted with them
    stack                stack             level 2 and the submission
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kzlib import weights
from kzlib.classify.config import ClassifyConfig
from kzlib.config import config_dict
from kzlib.detect.config import DetectConfig
from kzlib.preset import PipelineConfig
from kzlib.runs import RunDir
from kzlib.work import WorkDir


@dataclass(frozen=True)
class Stage:
    """One stage of the chain. ``step`` says what kind of stage it is (a key of ``STEPS``);
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
    out: list[Stage] = []
    for k in folds:
        g = f"detect-f{k}"
        out += [Stage(f"detect-f{k}", "detect-train", (), k, kernel=g),
                Stage(f"detect-oof-f{k}", "detect-oof", (f"detect-f{k}",), k, kernel=g),
                Stage(f"detect-test-f{k}", "detect-test", (f"detect-f{k}",), k, kernel=g)]
    out.append(Stage("detect-merge", "detect-merge",
                     tuple(f"detect-oof-f{k}" for k in folds)
                     + tuple(f"detect-test-f{k}" for k in cfg.test_rule().folds)))

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


def _network_settings(c: DetectConfig | ClassifyConfig) -> dict:
    """A network config as a fingerprint sees it: machine-local values out (device, workers, where
    the files lie), what the network starts from in (the weight file's name and SHA-256)."""
    values = config_dict(c)
    for key, before in type(c).ADDED.items():  # a field added later changes nothing while it does as before
        if values.get(key) == before:
            values.pop(key)
    pretrained = values.pop("pretrained", "")
    for key in ("device", "workers", "init_from"):
        values.pop(key, None)
    out = {"detect" if isinstance(c, DetectConfig) else "classify": values}
    if pretrained:  # scratch: no key, as before the weights were fingerprinted
        out["weights"] = weights.identity(weights.resolve(pretrained, c.backbone))
    return out


@dataclass(frozen=True)
class Step:
    """What one kind of stage runs, writes and hashes.

    - ``runs``: the function ``kzlib.steps`` calls for it (for people; the runner looks it up there);
    - ``writes(work, stage)``: the files a finished stage has written (one missing: it runs again);
    - ``run_folder(work, stage)``: the training's run folder (trainings only): a half-done training
      leaves its ``config.json`` there, and a redone one is set aside from there;
    - ``settings(cfg, work, stage)``: what the stage does as plain values; its fingerprint is their
      hash with the data's.
    """
    name: str
    runs: str
    writes: Callable[[WorkDir, Stage], list[Path]]
    settings: Callable[[PipelineConfig, WorkDir, Stage], dict]
    run_folder: Callable[[WorkDir, Stage], RunDir] | None = None

    def partial(self, work: WorkDir, s: Stage) -> list[Path]:
        """What a started but unfinished stage leaves behind."""
        return [self.run_folder(work, s).config] if self.run_folder else []


def _detector(work: WorkDir, s: Stage) -> RunDir:
    return work.detector(s.fold)


def _classifier(work: WorkDir, s: Stage) -> RunDir:
    return work.classifier(s.kind, s.fold)


def _detect_settings(cfg: PipelineConfig, work: WorkDir, s: Stage) -> dict:
    return {**_network_settings(cfg.detect_config()), "fold": s.fold}


def _classify_settings(cfg: PipelineConfig, work: WorkDir, s: Stage) -> dict:
    out = {**_network_settings(classifier_config(cfg, work, s.kind, s.fold)), "fold": s.fold}
    if s.step == "classify-predict":
        out["n_tta"] = cfg.n_tta
    return out


STEPS = {step.name: step for step in [
    Step("detect-train", "kzlib.detect.train.train",
         lambda w, s: [w.detector(s.fold).best], _detect_settings, _detector),
    Step("detect-oof", "kzlib.detect.predict.predict (held-out pages)",
         lambda w, s: [w.detector(s.fold).oof_boxes], _detect_settings),
    Step("detect-test", "kzlib.detect.predict.predict (test pages)",
         lambda w, s: [w.detector(s.fold).test_boxes], _detect_settings),
    Step("detect-merge", "kzlib.detect.predict.merge_oof, merge_test",
         lambda w, s: [w.oof_boxes, w.test_boxes],
         lambda cfg, w, s: {"test_boxes": cfg.test_box_rule, "test_votes": cfg.test_votes}),
    Step("classify-train", "kzlib.classify.train.train",
         lambda w, s: [w.classifier(s.kind, s.fold).best], _classify_settings, _classifier),
    Step("classify-predict", "kzlib.classify.predict.predict (held-out and test pages)",
         lambda w, s: [w.classifier(s.kind, s.fold).detailed("valid"), w.classifier(s.kind, s.fold).detailed("test")],
         _classify_settings),
    Step("pseudolabel", "kzlib.pseudolabel.write_pseudolabels",
         lambda w, s: [w.pseudo_labels],
         lambda cfg, w, s: {"min_gap": cfg.pseudo_min_gap, "max_second_score": cfg.pseudo_max_second_score,
                            "drop_seg_fp": cfg.pseudo_drop_seg_fp}),
    Step("stack", "kzlib.stack.run: build_features, train, predict",
         lambda w, s: [w.submission],
         lambda cfg, w, s: {"stack": config_dict(cfg.stack_config()), "kinds": classifier_kinds(cfg)}),
]}

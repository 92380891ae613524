"""Presets: the whole chain's settings as one typed JSON file (``configs/preset_*.json``), and
the stage configs they resolve to. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar
from pathlib import Path

from kzlib import weights
from kzlib.classify.config import ClassifyConfig
from kzlib.config import ConfigError, check_positive, config_from_dict, load_config
from kzlib.detect.config import DetectConfig, TestBoxRule
from kzlib.stack.config import StackConfig


@dataclass(frozen=True)
class WeightNeed:
    """One network of a preset that starts from pretrained weights."""
    stage: str     # "detect", "classify KIND"
    arch: str      # its backbone
    value: str     # the config's ``pretrained`` value


@dataclass
class PipelineConfig:
    """A preset: the whole chain's settings. Defaults are the original solution's
    (``configs/preset_full.json`` spells them out; UPSTREAM.md lists every one)."""
    ALIASES: ClassVar[dict] = {"test_boxes": "test_box_rule"}  # old names, read for one release
    n_folds: int = 5
    device: str = "cuda"
    gpus: int = 1                                       # processes per training (torchrun, one GPU each)
    jobs: int = 1                                       # on the CPU, folds trained at once by kzlib run, each in a
    #                                                     process of its own with the cores shared among them
    detect: dict = field(default_factory=dict)          # DetectConfig fields
    kinds: dict = field(default_factory=dict)           # model kind -> ClassifyConfig fields
    n_tta: int = 4
    test_box_rule: str = "fold0"                        # test boxes of every classifier: "fold0" (the fold-0
    #                                                     detector's, as upstream) or "vote" (folds voting)
    test_votes: int = 0                                 # with "vote": folds agreeing on a box (0: majority)
    test_match: str = "iou"                             # with "vote": two folds' boxes are one glyph at IoU >= 0.5,
    #                                                     or with "centre" when the centre of either is inside the other
    pseudo_kind: str = ""                               # kind refitted with pseudolabels ("" = none)
    pseudo_min_gap: float = 5.0
    pseudo_max_second_score: float = 10.0
    pseudo_drop_seg_fp: bool = False                    # upstream keeps confident seg_fp boxes as labels
    pseudo_oversample: int = 1
    finetune_epochs: int = 5
    finetune_lr_factor: float = 0.1
    finetune_crops_per_page: int = 3                    # upstream --repeat-train 3 for the fine-tune
    finetune_time_budget_s: float = 0.0                 # > 0: the fine-tune's epochs cut to fit (ClassifyConfig)
    refit_scratch: bool = True
    refit_crops_per_page: int = 4                       # upstream --repeat-train 4 for the from-scratch refit
    stack: dict = field(default_factory=dict)           # StackConfig fields

    def __post_init__(self):
        config_from_dict(DetectConfig, self.detect, None, "detect.")
        if not self.kinds:
            raise ConfigError("kinds: at least one classifier kind is needed")
        for name, values in self.kinds.items():
            config_from_dict(ClassifyConfig, values, None, f"kinds.{name}.")
        if self.pseudo_kind and self.pseudo_kind not in self.kinds:
            raise ConfigError(f"pseudo_kind: {self.pseudo_kind!r} is not one of the kinds ({', '.join(self.kinds)})")
        check_positive(self, "n_folds", "n_tta", "gpus", "jobs", "pseudo_oversample", "finetune_epochs",
                       "finetune_lr_factor", "finetune_crops_per_page", "refit_crops_per_page")
        check_positive(self, "finetune_time_budget_s", allow_zero=True)
        self.test_rule()  # the rule and its votes are valid
        config_from_dict(StackConfig, self.stack, None, "stack.")
        if self.gpus > 1:  # several processes, one GPU each: checked now, not after hours of training
            if not self.device.startswith("cuda"):
                raise ConfigError(f"gpus: {self.gpus} processes train on one GPU each, but device is "
                                  f"{self.device!r}; set gpus 1 (or device cuda)")
            nets = [("detect", self.detect_config())] + [(f"kinds.{k}", self.classify_config(k)) for k in self.kinds]
            for name, c in nets:
                if c.batch_size % self.gpus:
                    raise ConfigError(f"{name}.batch_size: {c.batch_size} (the global batch) does not split over "
                                      f"gpus {self.gpus}; make it a multiple of {self.gpus}")

    def test_rule(self) -> TestBoxRule:
        return TestBoxRule(self.test_box_rule, self.test_votes, self.n_folds, self.test_match)

    def detect_config(self) -> DetectConfig:
        return config_from_dict(DetectConfig, {**self.detect, "device": self.device, "n_folds": self.n_folds})

    def classify_config(self, kind: str) -> ClassifyConfig:
        return config_from_dict(ClassifyConfig, {**self.kinds[kind], "device": self.device, "n_folds": self.n_folds})

    def finetune_config(self, kind: str, init_from: str) -> ClassifyConfig:
        """The pseudolabel fine-tune of ``kind``: from its checkpoint, few epochs, lr / 10."""
        c = self.classify_config(kind)
        return replace(c, init_from=init_from, epochs=self.finetune_epochs, lr=c.lr * self.finetune_lr_factor,
                       warmup_epochs=0.0, pseudo_oversample=self.pseudo_oversample,
                       crops_per_page=self.finetune_crops_per_page, time_budget_s=self.finetune_time_budget_s)

    def refit_config(self, kind: str) -> ClassifyConfig:
        """The from-scratch refit of ``kind`` with pseudolabels."""
        return replace(self.classify_config(kind), pseudo_oversample=self.pseudo_oversample,
                       crops_per_page=self.refit_crops_per_page)

    def stack_config(self) -> StackConfig:
        return config_from_dict(StackConfig, self.stack)

    def without_pretrained(self) -> "PipelineConfig":
        """The same preset training every network from random weights (``--allow-scratch``)."""
        kinds = {k: {**v, "pretrained": "", "frozen_start": False} for k, v in self.kinds.items()}
        return replace(self, detect={**self.detect, "pretrained": ""}, kinds=kinds)

    def with_time_scale(self, factor: float) -> "PipelineConfig":
        """The preset's time budgets (``time_budget_s`` of the detector and of every kind,
        ``finetune_time_budget_s``) multiplied by ``factor``: a slow machine given more time."""
        if factor <= 0:
            raise ConfigError(f"time scale: must be > 0, got {factor}")
        def scaled(values: dict) -> dict:
            return {**values, "time_budget_s": values["time_budget_s"] * factor} if values.get("time_budget_s") else values
        return replace(self, detect=scaled(self.detect), kinds={k: scaled(v) for k, v in self.kinds.items()},
                       finetune_time_budget_s=self.finetune_time_budget_s * factor)

    def weight_needs(self) -> list[WeightNeed]:
        """Every network this preset trains from pretrained weights."""
        det = self.detect_config()
        out = [WeightNeed("detect", det.backbone, det.pretrained)]
        out += [WeightNeed(f"classify {kind}", c.backbone, c.pretrained)
                for kind, c in ((k, self.classify_config(k)) for k in self.kinds)]
        return [n for n in out if n.value]

    def check_weights(self, folder: Path | None = None, fix: str = "") -> list[Path]:
        """Every weight file this preset needs, checked (the first problem is one ``WeightsError``
        line naming the file and ``fix``, the command that fetches it)."""
        return [weights.require(n.value, n.arch, folder, f"preset stage {n.stage} ({n.arch})", fix)
                for n in self.weight_needs()]

    def with_weights_dir(self, folder: Path) -> "PipelineConfig":
        """Pretrained weight names resolved to files of ``folder`` (the stages' configs then record
        the file they started from)."""
        def fix(values: dict, arch: str) -> dict:
            value = values.get("pretrained", "auto")
            path = weights.resolve(value, arch, folder)
            return {**values, "pretrained": str(path.resolve()) if path else ""}
        det = self.detect_config()
        kinds = {k: fix(v, self.classify_config(k).backbone) for k, v in self.kinds.items()}
        return replace(self, detect=fix(self.detect, det.backbone), kinds=kinds)


PRESET_DIR = Path(__file__).resolve().parent / "configs"


def preset_path(name: str | Path) -> Path:
    """A preset by name (``full``, ``demo``, ... in ``configs/preset_NAME.json``) or a JSON file."""
    path = Path(name)
    if path.suffix == ".json" or path.is_file():  # a folder named like a preset (make demo's demo/) is not one
        if not path.is_file():
            raise ConfigError(f"preset file {path} not found")
        return path
    named = PRESET_DIR / f"preset_{name}.json"
    if not named.is_file():
        known = sorted(p.stem.removeprefix("preset_") for p in PRESET_DIR.glob("preset_*.json"))
        raise ConfigError(f"no preset {name!r} (known: {', '.join(known)}; or give a JSON file)")
    return named


def load_preset(path: Path) -> PipelineConfig:
    return load_config(PipelineConfig, path)

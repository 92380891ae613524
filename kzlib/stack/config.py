"""Level 2's typed configuration (torch-free: planning reads it without the models). Defaults
are the original solution's (``kuzushiji/classify/level2.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kzlib.config import ConfigError, check_choices, check_positive

LIBRARIES = ("lightgbm", "xgboost", "catboost")
FEATURE_SETS = ("upstream", "extended")
OVERLAPS = ("upstream", "iou")   # the box-overlap feature: kzlib.stack.features.max_overlap

# The original solution's parameters (kuzushiji/classify/level2.py), in the libraries' sklearn names.
LIGHTGBM = {"learning_rate": 0.05, "num_leaves": 41, "subsample": 0.8, "subsample_freq": 5, "colsample_bytree": 0.9,
            "min_child_samples": 20, "scale_pos_weight": 1.2, "reg_lambda": 1.0}
# xgboost 0.90 (upstream's) early-stopped on its default metric for binary:logistic, "error", and
# chose "exact" splits by itself below 4M rows (tree_method "auto"); today's defaults are logloss/hist.
XGBOOST = {"learning_rate": 0.15, "gamma": 0.01, "max_depth": 8, "eval_metric": "error", "tree_method": "exact"}
CATBOOST = {"learning_rate": 0.05, "depth": 6}


@dataclass
class StackConfig:
    libraries: tuple[str, ...] = ("lightgbm", "xgboost")
    weights: tuple[float, ...] = (1.0, 1.0)         # blend weights, in the order of ``libraries``
    rounds: int = 400
    early_stopping: int = 20
    features: str = "upstream"                       # upstream, or extended (kzlib's extra features)
    overlap: str = "upstream"                        # box overlap feature: upstream (over the other box's
    #                                                  area, +1 px) or iou
    lightgbm: dict = field(default_factory=lambda: dict(LIGHTGBM))   # LGBMClassifier parameters
    xgboost: dict = field(default_factory=lambda: dict(XGBOOST))     # XGBClassifier parameters
    catboost: dict = field(default_factory=lambda: dict(CATBOOST))   # CatBoostClassifier parameters
    threads: int = 0                                 # 0: the libraries' default
    seed: int = 0

    def __post_init__(self):
        unknown = [lib for lib in self.libraries if lib not in LIBRARIES]
        if unknown or not self.libraries:
            raise ConfigError(f"libraries: {', '.join(unknown) or 'none'}: choose from {', '.join(LIBRARIES)}")
        if len(self.weights) != len(self.libraries):
            raise ConfigError(f"weights: {len(self.weights)} given for {len(self.libraries)} libraries")
        check_choices(self, features=FEATURE_SETS, overlap=OVERLAPS)
        check_positive(self, "rounds", "early_stopping")

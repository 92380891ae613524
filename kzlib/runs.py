"""A training run's folder: one owner for its paths, what it was asked to do, resume-or-start,
the end-of-epoch bookkeeping, and loading a trained run for inference.

A run folder holds::

    config.json        the run's whole config (what rebuilds the model)
    split.json         its data: the fold, the held-out and training page ids, the boxes and
                       pseudolabel files it read, and their SHA-256 (``Split``)
    checkpoint.pth     the last finished epoch (model, optimisation, epoch, best score)
    checkpoint.prev.pth  the epoch before (a damaged checkpoint.pth falls back to it)
    best.pth           the model of the best validation score (inference reads it)
    log.csv, curves.png  one row per epoch, and its plot
    oof_boxes.csv / test_boxes.csv, detailed.csv.gz / test_detailed.csv.gz, scores.json  predictions

Checkpoints hold tensors and plain values only (dicts, lists, numbers, strings) and are loaded with
``torch.load(weights_only=True)`` everywhere (resume, ``init_from``, export, read): a file that would
need anything else unpickled is refused, never run. Each carries ``format`` (``CHECKPOINT_FORMAT``;
none: 1, the kit before versions), checked on load.

A bundle's run folder (``kzlib export``) holds no checkpoint: ``model.safetensors`` (the weights)
and ``run.json`` (config, class list, scores, epoch); ``trained_state`` reads either layout.

The models are detectron2's ``resume_or_load`` and timm's ``CheckpointSaver``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Sequence, TypeVar

import pandas as pd

from kzlib.config import config_dict, config_from_dict, read_json, save_config
from kzlib.errors import DataError, UsageError
from kzlib.io import atomic_path, file_sha256, write_csv_atomic, write_json_atomic

C = TypeVar("C")

CHECKPOINT_FORMAT = 2  # 1: no "format" key (the kit before versions; the same contents); 2: "format": 2
CHECKPOINT_FORMATS = (1, 2)
WEIGHTS_FILE, RUN_FILE = "model.safetensors", "run.json"  # a bundle's run folder


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save through a temporary file: a kill never leaves a half-written checkpoint. A write
    that fails (a full disk) is the ``OSError`` it is, naming ``path``: torch's zip writer turns it
    into a ``RuntimeError`` ("enforce fail at inline_container.cc") that only carries it along."""
    import torch  # checkpoints only: the run folder's paths and records need no torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        try:
            torch.save(state, fh)
        except RuntimeError as e:
            cause = _os_error(e)
            if cause is None:
                raise
            raise cause from None


def _os_error(e: BaseException | None) -> OSError | None:
    """The ``OSError`` behind an exception (its context or cause, at any depth)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def load_checkpoint(path: str | Path, device="cpu") -> dict:
    """A checkpoint of this kit, loaded with ``weights_only=True``: tensors and plain values only; a
    file that holds any other object is an error (nothing in it runs). Its format must be one this
    kit knows (``CheckpointFormatError``, one line)."""
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except RuntimeError as e:
        cause = _os_error(e)
        if cause is not None:
            raise cause from None
        raise
    except pickle.UnpicklingError:  # the restricted unpickler met something else: nothing of it ran
        raise ValueError("it holds objects other than tensors and plain values, which this kit does not "
                         "unpickle (a checkpoint of another program, or a planted payload)") from None
    if isinstance(state, dict):
        version = state.get("format", 1)
        if version not in CHECKPOINT_FORMATS:
            raise CheckpointFormatError(f"{path}: checkpoint format {version!r} is not one this kit reads "
                                        f"({', '.join(map(str, CHECKPOINT_FORMATS))}); it was made by a newer kit: "
                                        "update kzlib, or train into another folder")
    return state


def save_bundle_run(state: dict, folder: str | Path, extra: dict) -> list[Path]:
    """A trained run as a bundle holds it: its weights in ``model.safetensors`` and what is not a
    tensor (``extra``: config, class list, scores, epoch) in ``run.json``; the same tensors, bit for
    bit. Returns the files written."""
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}  # channels_last runs: strided
    data = safetensors_bytes(tensors, metadata={"format": "pt"})  # written here: a full disk is the OSError it is
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(data)
    write_json_atomic({"format": 1, **extra}, folder / RUN_FILE)
    return [folder / WEIGHTS_FILE, folder / RUN_FILE]


def load_bundle_run(folder: str | Path, device="cpu") -> dict:
    """What ``save_bundle_run`` wrote, as a checkpoint dict (``model`` and the ``run.json`` keys)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = read_json(folder / RUN_FILE)
    except UsageError as e:  # read_json's one line names the file
        raise DataError(str(e)) from None
    if not isinstance(info, dict) or info.get("format") != 1 or not isinstance(info.get("config"), dict):
        raise DataError(f"{folder / RUN_FILE}: not a run description of this kit (format 1 with a config)")
    try:
        model = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{folder / WEIGHTS_FILE}: does not load ({str(e).splitlines()[0][:160]})") from None
    return {**{k: v for k, v in info.items() if k != "format"}, "model": model}


class EpochLog:
    """``log.csv`` of a run folder: one row per epoch, rewritten atomically; on resume the rows
    after the checkpoint's epoch are dropped."""

    def __init__(self, path: str | Path, keep_until_epoch: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        if keep_until_epoch is not None and self.path.exists():
            df = pd.read_csv(self.path)
            self.rows = df[df["epoch"] <= keep_until_epoch].to_dict("records")

    def append(self, row: dict) -> None:
        self.rows.append(row)
        write_csv_atomic(pd.DataFrame(self.rows), self.path)

    def plot(self, png: str | Path, metrics: tuple[str, ...]) -> None:
        """Loss curves on the left, validation metrics on the right."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = pd.DataFrame(self.rows)
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for col in [c for c in df.columns if c.startswith("loss")]:
            a.plot(df["epoch"], df[col], marker=".", label=col)
        a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.set_yscale("log"), a.legend(fontsize=8)
        for col in metrics:
            if col in df and df[col].notna().any():  # epochs not validated are gaps; none validated yet: no line
                b.plot(df["epoch"], df[col], marker="o", label=col)
        b.set_xlabel("epoch"), b.set_ylabel("validation"), b.set_ylim(0, 1), b.grid(alpha=0.3)
        if b.get_legend_handles_labels()[0]:
            b.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)


class RunStateError(UsageError):
    """A run folder that cannot be used the way it was asked (resume without a run, a start over a
    run, flags that conflict with the run's saved config, a damaged checkpoint)."""


class CheckpointFormatError(RunStateError):
    """A checkpoint of a format this kit does not know (made by a newer kit)."""


@dataclass
class Split:
    """``split.json``: the data a run trains and validates on."""
    data_dir: str
    fold: int
    n_folds: int
    val_images_given: bool
    train_ids: list[str]
    val_ids: list[str]
    boxes: str = ""                                        # classifier: its boxes file
    pseudolabels: list[str] = field(default_factory=list)  # classifier: pseudolabel files
    classes: int = 0
    inputs: dict = field(default_factory=dict)             # role (train.csv, boxes, ...) -> SHA-256
    world_size: int = 1                                    # processes it was started with (torchrun)


def input_hashes(files: dict[str, str | Path | Sequence[str | Path]]) -> dict:
    """SHA-256 of a run's input files by role (a role may hold several files)."""
    out = {}
    for role, f in files.items():
        if isinstance(f, (str, Path)):
            out[role] = file_sha256(f)
        else:
            out[role] = [file_sha256(x) for x in f]
    return out


def check_inputs(run: "RunDir", saved: dict, current: dict) -> None:
    """A resumed run must read the same files it started with (they may have moved)."""
    for role, sha in saved.items():
        if role in current and current[role] != sha:
            raise RunStateError(f"{run.root}: its {role} has changed since the run started (SHA-256 differs); "
                                "train into another folder, or restore the file")


def check_split(run: "RunDir", saved: Split, fold: int | None, val_images: Sequence[str] | None) -> None:
    """A fold or held-out pages asked of a resumed run must be its own."""
    if fold is not None and fold != saved.fold:
        raise RunStateError(f"{run.root}: the run holds out fold {saved.fold}, not {fold}; drop --fold to continue it")
    if val_images and (not saved.val_images_given or list(val_images) != saved.val_ids):
        raise RunStateError(f"{run.root}: the run holds out other pages than --val-images; drop the flag to continue it")


@dataclass
class OpenedRun(Generic[C]):
    """What a training call works on (``RunDir.open_training``): the config (a resumed run's own),
    the saved split (None: a new run, not started yet), the last checkpoint (None: no epoch
    finished), the fold and the held-out pages given (None: the fold's books)."""
    cfg: C
    saved: Split | None
    checkpoint: dict | None
    fold: int
    val_images: list[str] | None


class RunDir:
    """The paths and state of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    split_file = property(lambda self: self.root / "split.json")
    checkpoint = property(lambda self: self.root / "checkpoint.pth")
    previous = property(lambda self: self.root / "checkpoint.prev.pth")
    best = property(lambda self: self.root / "best.pth")
    log = property(lambda self: self.root / "log.csv")
    curves = property(lambda self: self.root / "curves.png")
    oof_boxes = property(lambda self: self.root / "oof_boxes.csv")
    test_boxes = property(lambda self: self.root / "test_boxes.csv")
    scores = property(lambda self: self.root / "scores.json")

    def detailed(self, split: str) -> Path:
        return self.root / ("detailed.csv.gz" if split == "valid" else "test_detailed.csv.gz")

    def submission(self, split: str) -> Path:
        return self.root / ("submission.csv" if split == "valid" else "test_submission.csv")

    def started(self) -> bool:
        return self.config.is_file()

    def trained(self) -> bool:
        return self.best.is_file() or self.checkpoint.is_file()

    def __str__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------ what the run was asked
    def read_split(self) -> Split:
        if not self.split_file.is_file():
            raise DataError(f"{self.root}: not a run folder (no split.json)")
        values = read_json(self.split_file)
        known = {f.name for f in dataclasses.fields(Split)}
        return Split(**{k: v for k, v in values.items() if k in known})

    def read_config(self, cls: type[C]) -> C:
        return config_from_dict(cls, read_json(self.config), str(self.config))

    def start(self, cfg: Any, split: Split) -> None:
        """Record a new run: its config and its data."""
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        write_json_atomic(dataclasses.asdict(split), self.split_file)

    def open_training(self, cls: type[C], cfg: C, given: dict | None, mode: str, inputs: dict, fold: int | None,
                      val_images: Sequence[str] | None) -> "OpenedRun[C]":
        """``resume_or_start`` for a training call, with a resumed run's checks: it must read the same
        files (``inputs``: role -> SHA-256) and keeps its fold and held-out pages. (Under torchrun,
        ``kzlib.training.open_run``.)"""
        cfg, saved, checkpoint = self.resume_or_start(cls, cfg, given, mode)
        if saved is not None:
            check_inputs(self, saved.inputs, inputs)
            check_split(self, saved, fold, val_images)
            fold, val_images = saved.fold, saved.val_ids if saved.val_images_given else None
        return OpenedRun(cfg, saved, checkpoint, 0 if fold is None else fold,
                         None if val_images is None else list(val_images))

    def resume_or_start(self, cls: type[C], cfg: C, given: dict | None, mode: str) -> tuple[C, Split | None, dict | None]:
        """What a training call continues: (config, saved split or None, checkpoint or None).

        ``mode`` ``start``: the folder must hold no run. ``resume``: it must hold one (config.json;
        a checkpoint if an epoch finished), and that run's config is kept; a flag in ``given``
        that differs from it is an error, not ignored. ``auto`` (the runner): resume when there is
        a run, else start; a config that differs from the run's is an error naming the keys. What
        belongs to the machine (``MACHINE_KEYS``: device, precision ...) is taken as asked."""
        if mode not in ("start", "resume", "auto"):
            raise ValueError(f"mode {mode!r}")
        if not self.started():
            if self.checkpoint.exists():
                raise RunStateError(f"{self.root}: holds checkpoint.pth but no config.json; not a run this kit can "
                                    "resume (delete the folder, or choose another --out)")
            if mode == "resume":
                raise RunStateError(f"{self.root}: nothing to resume (no config.json); drop --resume to start a run")
            return cfg, None, None
        if mode == "start":
            what = "a checkpoint" if self.checkpoint.exists() else "a started run (config.json)"
            raise RunStateError(f"{self.root}: holds {what}; use --resume to continue it, or another --out")
        saved = self.read_config(cls)
        asked = given if mode == "resume" else config_dict(cfg)
        conflicts = config_conflicts(saved, asked or {})
        if conflicts:
            raise RunStateError(f"{self.root}: the run was started with {conflicts}; {'drop those flags' if mode == 'resume' else 'the preset changed since'}"
                                " to continue it, or train into another folder")
        # this machine's device, workers, precision and layout, not the ones the run started with
        here = {k: v for k, v in (asked or {}).items() if k in MACHINE_KEYS and k in config_dict(saved)}
        saved = dataclasses.replace(saved, **here)
        split = self.read_split()
        checkpoint = self.load_checkpoint() if self.checkpoint.exists() or self.previous.exists() else None
        return saved, split, checkpoint

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self) -> dict:
        """The last checkpoint; a damaged ``checkpoint.pth`` falls back to the previous epoch's,
        with a warning. Neither loading is one ``RunStateError`` line saying how to recover."""
        errors = []
        for path in (self.checkpoint, self.previous):
            if not path.exists():
                continue
            try:
                state = load_checkpoint(path)
                if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
                    raise ValueError("not a training checkpoint of this kit")
            except CheckpointFormatError:
                raise
            except Exception as e:  # torch raises many kinds for damaged files
                errors.append(f"{path.name}: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}")
                continue
            if errors:
                print(f"warning: {self.root}: {errors[0]}; resuming from {path.name} (epoch {state['epoch'] + 1})", flush=True)
            return state
        raise RunStateError(f"{self.root}: no loadable checkpoint ({'; '.join(errors)}); delete "
                            f"{self.checkpoint.name} and {self.previous.name} to restart the run from epoch 1, or "
                            "the whole folder")

    def save_epoch(self, state: dict) -> None:
        """The epoch's checkpoint; the one before it is kept as ``checkpoint.prev.pth``."""
        if self.checkpoint.exists():
            self.checkpoint.replace(self.previous)
        save_checkpoint(state, self.checkpoint)

    def save_best(self, state: dict) -> None:
        save_checkpoint(state, self.best)

    def require_trained(self) -> None:
        """One ``RunStateError`` line unless the folder holds trained weights (``trained_state``'s)."""
        if not ((self.root / WEIGHTS_FILE).exists() or self.trained()):
            raise RunStateError(f"{self.root}: not a trained run (no best.pth or checkpoint.pth); train it first")

    def trained_state(self) -> tuple[dict, Path]:
        """The weights inference uses: a bundle's ``model.safetensors`` with its ``run.json`` (then
        no other file of the folder is read), else ``best.pth``, else the last checkpoint."""
        self.require_trained()
        if (self.root / WEIGHTS_FILE).exists():
            return load_bundle_run(self.root), self.root / WEIGHTS_FILE
        path = self.best if self.best.exists() else self.checkpoint
        try:
            return load_checkpoint(path), path
        except CheckpointFormatError:
            raise
        except Exception as e:
            raise RunStateError(f"{path}: does not load ({str(e).splitlines()[0][:160]}); retrain the run, "
                                "or restore the file") from None


PATH_KEYS = ("pretrained", "init_from")
# a run may resume on another machine: another device, worker count, mixed precision or memory layout
MACHINE_KEYS = ("device", "workers", "amp", "amp_cpu", "amp_dtype", "amp_cpu_dtype", "channels_last")


def load_other_checkpoint(path: str | Path, what: str) -> dict:
    """A checkpoint of another run to start from (``init_from``): missing or damaged is one line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        state = load_checkpoint(path)
    except CheckpointFormatError:
        raise
    except Exception as e:  # torch raises many kinds for damaged files
        raise DataError(f"{path}: {what} does not load ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"{path}: {what} holds no model weights")
    return state


def config_conflicts(saved: Any, asked: dict) -> str:
    """``key: asked X, the run has Y`` for every asked value that differs from the saved config
    (what belongs to the machine may change between sessions: ``MACHINE_KEYS``)."""
    have = config_dict(saved)
    out = []
    for k, v in asked.items():
        if k in MACHINE_KEYS or k not in have:
            continue
        v = json.loads(json.dumps(v))
        if k in PATH_KEYS and v and have[k]:  # the same file may be mounted elsewhere in a later session
            same = Path(v).parts[-3:] == Path(have[k]).parts[-3:]
        elif k == "epochs" and have.get("time_budget_s", 0) > 0:  # the budget chose fewer than asked
            same = isinstance(v, int) and v >= have[k]
        else:
            same = v == have[k]
        if not same:
            out.append(f"{k} {json.dumps(have[k])} (asked {json.dumps(v)})")
    return ", ".join(out)


class CheckpointSaver:
    """The end of every epoch of a training loop (process 0), as timm's ``CheckpointSaver``: it holds
    the best validation F1 so far (a resumed run's from its checkpoint), keeps the model of a better
    one as ``best.pth``, writes the epoch's checkpoint (``format``: ``CHECKPOINT_FORMAT``; the one
    before it kept), the log row and the curves. ``model`` and ``opt`` (what has ``state_dict()``)
    are the training's; ``extra`` goes into both files (a classifier's class list)."""

    def __init__(self, run: RunDir, model, opt, cfg: Any, metrics: tuple[str, ...], extra: dict | None = None,
                 keep_last_as_best: bool = False, checkpoint: dict | None = None):
        self.run, self.model, self.opt, self.cfg, self.metrics = run, model, opt, cfg, metrics
        self.extra = extra or {}
        self.keep_last_as_best = keep_last_as_best  # no validation pages: the last epoch is "best"
        self.best = float(checkpoint["best_f1"]) if checkpoint else -1.0
        self.log: EpochLog | None = None

    def open(self, start: int) -> None:
        """The log, its rows after the checkpoint's epoch dropped."""
        self.log = EpochLog(self.run.log, keep_until_epoch=start - 1)

    def save(self, epoch: int, scores: dict, row: dict, last: bool) -> None:
        f1 = scores.get("f1", -1.0)
        cfg = dataclasses.asdict(self.cfg)
        if f1 > self.best or (self.keep_last_as_best and last):
            self.best = max(self.best, f1)
            self.run.save_best({"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "config": cfg,
                                "epoch": epoch, "scores": scores, **self.extra})
        self.run.save_epoch({"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), **self.opt.state_dict(),
                             "epoch": epoch, "best_f1": self.best, "config": cfg, **self.extra})
        self.log.append(row)
        self.log.plot(self.run.curves, self.metrics)


class Stopped(Exception):
    """A long job stopped before the deadline; its finished parts are kept and a rerun resumes."""


class PagesInParts:
    """Predictions over many pages written in resumable parts: a Kaggle session can end in the
    middle of 4,900 test pages, and the next one continues after the last finished part.

    ``folder/NAME-00000.parquet`` holds the rows of pages ``size*i .. size*(i+1)`` (with their ids,
    so a part made for other pages is not reused): a format that holds data only. ``run`` returns
    every page's rows in order, or raises ``Stopped`` before a part that the slowest part so far
    says would end after ``deadline``; ``clean`` removes the parts (and an older kit's ``.pkl``
    parts, which are never read)."""

    def __init__(self, folder: Path, name: str, ids: Sequence[str], size: int = 100):
        self.folder, self.name, self.ids, self.size = Path(folder), name, list(ids), max(1, size)

    def parts(self) -> list[tuple[Path, list[str]]]:
        return [(self.folder / f"{self.name}-{i // self.size:05d}.parquet", self.ids[i: i + self.size])
                for i in range(0, len(self.ids), self.size)]

    def run(self, fn, deadline: float | None = None, log=print):
        """``fn(ids)`` -> a DataFrame of those pages' rows; returns all rows concatenated."""
        frames, slowest = [], 0.0
        for path, ids in self.parts():
            if path.exists():
                try:
                    saved = pd.read_parquet(path)
                except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
                    log(f"warning: {path}: a damaged part ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                        "made again")
                else:
                    if saved.attrs.get("ids") == ids:
                        frames.append(saved)
                        continue
            if deadline is not None and time.time() + slowest > deadline:
                log(f"time budget: stopping before pages {self.ids.index(ids[0]) + 1}-{self.ids.index(ids[-1]) + 1} "
                    f"of {len(self.ids)} (a part takes up to {slowest:.0f} s); rerun to resume")
                raise Stopped(self.name)
            t0 = time.time()
            frame = fn(ids)
            frame.attrs["ids"] = ids
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)
            frames.append(frame)
            slowest = max(slowest, time.time() - t0)
        out = pd.concat(frames, ignore_index=True) if frames else None
        return out

    def clean(self) -> None:
        for path, _ in self.parts():
            path.unlink(missing_ok=True)
        for old in self.folder.glob(f"{self.name}-*.pkl"):  # an older kit's parts: never read
            old.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

"""What a kernel script (``kernels/*.py``) does on Kaggle around its stages.

``Session.open`` finds the competition data and the upstream kernels' outputs under
``/kaggle/input`` on either mount layout (``kzlib.kaggle.inputs``), refuses in seconds, with one
line, an upstream that is missing or not done and a continuation whose previous output is not
attached, installs the kit dataset's wheels, checks the packages and the GPU. ``with session:``
copies the previous version's output (a continuation), links the upstream outputs into the
working folder in the runner's layout, runs the stages under the time budget and writes
``kzlib_status.json`` (stages done, stopped by the budget, or failed, with timings) that the next
kernels and ``kzlib kaggle push`` read; the links are removed at the end so that the output holds
only the kernel's own files.

Roots: ``KAGGLE_INPUT_ROOT`` (default ``/kaggle/input``), ``KAGGLE_WORKING`` (default
``/kaggle/working``); ``KZLIB_TIME_BUDGET_HOURS`` overrides the rendered budget.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from kzlib import __version__
from kzlib.config import config_from_dict
from kzlib.errors import KzError
from kzlib.io import write_json_atomic
from kzlib.kaggle.inputs import STATUS_FILE, describe, find_competition, kernel_outputs
from kzlib.preset import PipelineConfig

# import name -> distribution names (the first one installed gives the version)
PACKAGES = {"torch": ["torch"], "torchvision": ["torchvision"], "timm": ["timm"], "albumentations": ["albumentations"],
            "cv2": ["opencv-python-headless", "opencv-python", "opencv-contrib-python",
                    "opencv-contrib-python-headless"],
            "numpy": ["numpy"], "pandas": ["pandas"], "lightgbm": ["lightgbm"], "xgboost": ["xgboost", "xgboost-cpu"],
            "catboost": ["catboost"], "tqdm": ["tqdm"], "matplotlib": ["matplotlib"]}


class KernelError(KzError):
    """A kernel that cannot run as pushed (an input missing or not done, no GPU, a package)."""
    exit_code = 1


class BudgetStop(Exception):
    """The time budget ended the kernel before a stage finished (its progress is kept)."""


def roots() -> tuple[Path, Path]:
    return (Path(os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input")),
            Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working")))


def install_wheels(folder: Path) -> None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return
    print(f"installing {len(wheels)} wheels from {folder} (offline)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(folder),
                    *map(str, wheels)], check=True)


def package_versions() -> dict[str, str | None]:
    """Installed version of each package the kit imports (None: missing), without importing them."""
    out: dict[str, str | None] = {}
    for module, dists in PACKAGES.items():
        out[module] = None
        if importlib.util.find_spec(module) is None:
            continue
        for dist in dists:
            try:
                out[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                out[module] = "?"
    return out


def link_tree(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """Symlink every file of ``src`` to the same relative path under ``dst`` unless a file is
    already there; returns the links and the folders it created."""
    links, dirs = [], []
    for path in sorted(src.rglob("*")):
        if path.is_dir() or path.name == STATUS_FILE:
            continue
        target = dst / path.relative_to(src)
        if target.exists() or target.is_symlink():
            continue
        for parent in reversed(target.relative_to(dst).parents[:-1]):
            d = dst / parent
            if not d.exists():
                d.mkdir()
                dirs.append(d)
        target.symlink_to(path.resolve())
        links.append(target)
    return links, dirs


def unlink_tree(links: list[Path], dirs: list[Path]) -> None:
    for link in links:
        if link.is_symlink():
            link.unlink()
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


OUTPUT_LIMIT = 19 * 2**30  # /kaggle/working keeps 20 GB; a margin for logs
# files a finished kernel's downstream never reads (continuations need them, so a stopped kernel keeps them)
RESUME_ONLY = ("checkpoint.pth", "checkpoint.prev.pth", "stage_config.json", "stage_result.json")


def keep_what_is_needed(working: Path) -> dict:
    """A finished kernel's output cut to what downstream kernels and bundles read: the checkpoints
    that only a resume needs, and leftover prediction parts, go; the status file says what went
    and how big the output is (Kaggle keeps 20 GB of /kaggle/working)."""
    removed, freed = [], 0
    for path in sorted(working.rglob("*")):
        if path.is_symlink() or not path.exists():
            continue
        if (path.is_file() and path.name in RESUME_ONLY) or (path.is_dir() and path.name == "parts"):
            size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(str(path.relative_to(working)))
            freed += size
    total = sum(f.stat().st_size for f in working.rglob("*") if f.is_file() and not f.is_symlink())
    return {"removed": removed, "removed_bytes": freed, "output_bytes": total}


class Status:
    """``kzlib_status.json`` in the kernel's output: ``running``, then ``done``, ``stopped`` (by
    the time budget: push its continuation) or ``failed``, with every stage's state and seconds."""

    def __init__(self, path: Path, kernel: str, previous: dict | None = None):
        self.path = path
        self.data = {"kernel": kernel, "state": "running", "kit_version": __version__,
                     "continuation": (previous or {}).get("continuation", -1) + 1 if previous else 0,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": dict((previous or {}).get("stages", {}))}
        self.write()

    def write(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json_atomic(self.data, self.path)

    def stage(self, name: str, state: str, seconds: float | None = None) -> None:
        self.data["stages"][name] = {"state": state, **({"seconds": round(seconds, 1)} if seconds is not None else {})}
        self.write()

    def finish(self, state: str, **extra) -> None:
        self.data.update(state=state, **extra)
        self.write()


def check_gpu() -> None:
    """A training kernel's GPU: there, and of an architecture the image's torch build has kernels
    for (Kaggle's image has no sm_60: on a P100 ``is_available()`` says yes and the first kernel
    fails); else one ``KernelError`` line, before anything runs."""
    import torch  # only once the kit's wheels are installed (``Session.__init__``)

    from kzlib.devices import gpu_unsupported

    if not torch.cuda.is_available():
        raise KernelError("this kernel trains on a GPU and none is available: turn on the GPU "
                          "accelerator (machine_shape in kernel-metadata.json)")
    problem = gpu_unsupported()
    if problem:
        raise KernelError(f"{problem}; or choose the T4 accelerator (machine_shape NvidiaTeslaT4 in "
                          "kernel-metadata.json, the kit's default)")


class Session:
    def __init__(self, kernel: str, stages: list[str], upstream: list[str], gpu: bool, continuation: bool,
                 budget_hours: float, preset: dict, kit: Path):
        self.t0 = time.time()
        self.kernel, self.stages, self.upstream, self.gpu = kernel, list(stages), list(upstream), gpu
        self.continuation, self.preset, self.kit = continuation, preset, Path(kit)
        hours = float(os.environ.get("KZLIB_TIME_BUDGET_HOURS", budget_hours))
        self.deadline = self.t0 + hours * 3600
        self.input_root, self.working = roots()
        self.exit_code = 0
        self.links: list[Path] = []
        self.dirs: list[Path] = []
        print(f"kernel {kernel}: stages {', '.join(stages)}; time budget {hours:g} h; kit {kit}", flush=True)
        data = find_competition(self.input_root)
        if data is None:
            raise KernelError(f"the competition data (kuzushiji-recognition) is not attached under {self.input_root}; "
                              f"add the competition to the kernel's inputs. Mounted:\n{describe(self.input_root)}")
        self.data = data
        outputs = kernel_outputs(self.input_root)
        self.previous = outputs.get(kernel) if continuation else None
        if continuation and self.previous is None:
            raise KernelError(f"{kernel} is rendered as a continuation, but its previous version's output is not "
                              f"attached (no {STATUS_FILE} of {kernel} under {self.input_root}); push the first "
                              f"version, or render it without --continue. Mounted:\n{describe(self.input_root)}")
        absent = [u for u in self.upstream if u not in outputs]
        if absent:
            raise KernelError(f"outputs of {', '.join(absent)} are not attached under {self.input_root}; push those "
                              f"kernels first and wait for them to complete. Mounted:\n{describe(self.input_root)}")
        unfinished = [f"{u} ({outputs[u][1].get('state')})" for u in self.upstream if outputs[u][1].get("state") != "done"]
        if unfinished:
            raise KernelError(f"upstream kernel(s) not done: {', '.join(unfinished)}; continue them first "
                              "(kzlib kaggle push does), then push this one")
        self.outputs = {u: outputs[u][0] for u in self.upstream}
        install_wheels(self.kit / "wheels")
        versions = self.versions = package_versions()
        print("packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in versions.items()), flush=True)
        missing = [k for k, v in versions.items() if v is None]
        if missing:
            raise KernelError(f"packages missing from this image: {', '.join(missing)}; add their wheels to the "
                              "dataset with `kzlib dataset --wheels ...` and push a new dataset version")
        if gpu and str(preset.get("device", "cuda")).startswith("cuda"):
            check_gpu()

    @classmethod
    def open(cls, kernel: str, stages, upstream, gpu: bool, continuation: bool, budget_hours: float, preset: dict,
             kit: Path) -> "Session":
        """The session, or one ``error:`` line, a failed status and exit code 1."""
        try:
            return cls(kernel, stages, upstream, gpu, continuation, budget_hours, preset, kit)
        except KzError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            working = roots()[1]
            working.mkdir(parents=True, exist_ok=True)
            Status(working / STATUS_FILE, kernel).finish("failed", error=str(e).splitlines()[0])
            sys.exit(1)

    # ------------------------------------------------------------------ the run
    def __enter__(self) -> "Session":
        # the chain's modules import torch, albumentations, timm ...: only now, once the kit's wheels
        # are installed (``__init__``), may they be imported
        from kzlib.pipeline import Pipeline

        self.working.mkdir(parents=True, exist_ok=True)
        if self.previous is not None:
            print(f"continuing from the previous version's output ({self.previous[0]})", flush=True)
            shutil.copytree(self.previous[0], self.working, dirs_exist_ok=True)
        self.status = Status(self.working / STATUS_FILE, self.kernel, self.previous[1] if self.previous else None)
        self.status.data["packages"] = self.versions  # what this session's image had (a pinned image keeps them)
        self.status.write()
        try:
            for up in self.upstream:
                more = link_tree(self.outputs[up], self.working)
                self.links += more[0]
                self.dirs += more[1]
            self.pipe = None
            if not self.stages:  # a reading kernel (kernels/read.py): no chain to run
                return self
            cfg = config_from_dict(PipelineConfig, self.preset, "preset")
            if self.gpu:  # the training kernels: the preset's pretrained backbones, from the kit's dataset
                cfg.check_weights(self.kit / "pretrained", fix="python -m kzlib dataset --preset PRESET --push")
                cfg = cfg.with_weights_dir(self.kit / "pretrained")
            else:
                cfg = replace(cfg, device="cpu", gpus=1)  # pseudolabels and level 2: no GPU attached, none needed
            self.pipe = Pipeline(self.data, self.working, cfg, deadline=self.deadline)
        except BaseException:
            self._close()
            raise
        return self

    def run(self, stage: str) -> None:
        """Run one stage (skipped when an earlier version finished it)."""
        t0 = time.time()
        self.status.stage(stage, "running")
        result = self.pipe.run(only=stage)
        if result.get("stopped"):
            self.status.stage(stage, "stopped", time.time() - t0)
            raise BudgetStop(stage)
        if result.get("blocked"):
            raise KernelError(f"stage {stage} is waiting for {', '.join(result['blocked'])}: an upstream "
                              "kernel's output is incomplete")
        self.status.stage(stage, "done", time.time() - t0)

    def read(self, model: str) -> None:
        """Read every test page with the bundle attached as the Kaggle Model ``model``
        (OWNER/MODEL/FRAMEWORK/VARIATION/VERSION), into ``read/``, then ``submission.csv``."""
        from kzlib.export import find_bundle  # after the wheels, as in __enter__
        from kzlib.read import read_pages

        try:
            bundle = find_bundle(self.input_root)
        except ValueError as e:
            raise KernelError(f"the model {model}: {e}") from None
        if bundle is None:
            raise KernelError(f"the model {model} is not attached under {self.input_root} (no bundle manifest.json); "
                              f"add it to the kernel's model_sources. Mounted:\n{describe(self.input_root)}")
        t0 = time.time()
        self.status.stage("read", "running")
        pages = read_pages([str(self.data / "test_images")], bundle, self.working / "read",
                           device="cuda" if self.gpu else "cpu")
        shutil.copyfile(self.working / "read" / "submission.csv", self.working / "submission.csv")
        self.status.stage("read", "done", time.time() - t0)
        print(f"{len(pages)} pages read with {bundle}; {self.working / 'submission.csv'}", flush=True)

    def __exit__(self, kind, error, tb) -> bool:
        self._close()
        seconds = round(time.time() - self.t0, 1)
        if error is None:
            self._log_tails()
            kept = keep_what_is_needed(self.working)
            self.status.finish("done", seconds=seconds, **kept)
            if kept["output_bytes"] > OUTPUT_LIMIT:
                print(f"warning: the output holds {kept['output_bytes'] / 2**30:.1f} GiB, more than Kaggle keeps "
                      f"({OUTPUT_LIMIT / 2**30:.0f} GiB of /kaggle/working)", file=sys.stderr, flush=True)
            print(f"\nkernel {self.kernel} done in {seconds:.0f} s; outputs in {self.working}", flush=True)
            return False
        if isinstance(error, BudgetStop):
            saved = [p for p in self.working.rglob("checkpoint.pth")] + [p for p in self.working.rglob("parts")]
            self.status.finish("stopped", stopped_at=str(error), seconds=seconds)
            kept = ("its checkpoints and finished parts are in this version's output" if saved
                    else "nothing of it had finished yet")
            print(f"\nstopped by the time budget in stage {error}; {kept}. Continue it with "
                  f"`kzlib kaggle push` (it pushes the continuation), or by hand: `kzlib kaggle render ... "
                  f"--continue {self.kernel}` then `kaggle kernels push -p <kernels>/{self.kernel}`", flush=True)
            return True
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.status.finish("failed", error=message, seconds=seconds)
        self.exit_code = 1
        if isinstance(error, KzError):
            print(f"error: {error}", file=sys.stderr, flush=True)
            return True
        return False  # a bug: let the traceback show

    def _close(self) -> None:
        unlink_tree(self.links, self.dirs)
        self.links, self.dirs = [], []

    def _log_tails(self) -> None:
        for stage in self.stages:
            log = self.working / "logs" / f"{stage}.log"
            if log.exists():
                print(f"\n--- {log.relative_to(self.working)} (last lines)\n"
                      + "\n".join(log.read_text().splitlines()[-20:]))
        if "stack" in self.stages:
            from kzlib.summary import summary  # after the wheels, as in __enter__

            table, _ = summary(self.pipe)
            print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

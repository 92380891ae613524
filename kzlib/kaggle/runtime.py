"""What a rendered kernel script runs on Kaggle.

1. Installs the dataset's ``wheels/`` (if any) with ``pip install --no-index --find-links`` and
   prints the versions of the packages the kit imports.
2. Copies its own previous version's output into the working folder when it is attached (a
   continuation after Kaggle's ~12-hour limit): finished stages are skipped, an interrupted
   training resumes from ``checkpoint.pth``.
3. Links the attached upstream kernels' outputs into the working folder (the work-folder layout
   of ``run_local.py``), runs its stages with ``kzlib.pipeline``, then removes the links so that
   only its own files are saved as its output.

Trainings stop before an epoch that would end after the time budget (``KZLIB_TIME_BUDGET_HOURS``,
default 11) and the kernel ends normally, so that Kaggle saves the checkpoints.

Roots: ``KAGGLE_INPUT_ROOT`` (default ``/kaggle/input``) and ``KAGGLE_WORKING`` (default
``/kaggle/working``) — overridden by the local emulation.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kzlib.errors import KzError

# import name -> distribution names (the first one installed gives the version)
PACKAGES = {"torch": ["torch"], "torchvision": ["torchvision"], "timm": ["timm"], "albumentations": ["albumentations"],
            "cv2": ["opencv-python-headless", "opencv-python", "opencv-contrib-python",
                    "opencv-contrib-python-headless"],
            "numpy": ["numpy"], "pandas": ["pandas"], "lightgbm": ["lightgbm"], "xgboost": ["xgboost"],
            "catboost": ["catboost"], "tqdm": ["tqdm"], "matplotlib": ["matplotlib"]}

class KernelError(RuntimeError):
    pass


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
        if path.is_dir():
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


def main(spec: dict) -> int:
    """Run one kernel; returns the exit code (0 also when stopped for the time budget)."""
    try:
        return _run(spec)
    except (KernelError, KzError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(spec: dict) -> int:
    t0 = time.time()
    input_root, working = roots()
    deadline = t0 + float(os.environ.get("KZLIB_TIME_BUDGET_HOURS", "11")) * 3600
    dataset, data = input_root / spec["dataset"], input_root / spec["competition"]
    print(f"kernel {spec['kernel']}: stages {', '.join(spec['stages'])}", flush=True)
    install_wheels(dataset / "wheels")
    versions = package_versions()
    print("packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in versions.items()), flush=True)
    missing = [k for k, v in versions.items() if v is None]
    if missing:
        raise KernelError(f"packages missing from this image: {', '.join(missing)}; add their wheels to the "
                          "dataset with `build_dataset.py --wheels ...` and push a new dataset version")
    if not (data / "train.csv").is_file():
        raise KernelError(f"{data}: competition data not found; add the {spec['competition']} competition "
                          "to the kernel's inputs")
    absent = [u for u in spec["upstream"] if not (input_root / u).is_dir()]
    if absent:
        raise KernelError(f"outputs of {', '.join(absent)} are not attached under {input_root}; push those "
                          "kernels first, wait for them to complete, then push this one")

    from kzlib.config import config_from_dict
    from kzlib.pipeline import Pipeline, summary
    from kzlib.preset import PipelineConfig
    from kzlib.weights import check_preset

    working.mkdir(parents=True, exist_ok=True)
    previous = input_root / spec["kernel"]
    if previous.is_dir():
        print(f"continuing from the previous version's output ({previous})", flush=True)
        shutil.copytree(previous, working, dirs_exist_ok=True)
    links, dirs = [], []
    try:
        for up in spec["upstream"]:
            more = link_tree(input_root / up, working)
            links += more[0]
            dirs += more[1]
        cfg = config_from_dict(PipelineConfig, spec["preset"], "preset")
        if spec.get("gpu"):  # the training kernels: the preset's pretrained backbones, from the kit's dataset
            check_preset(cfg, dataset / "pretrained")
            cfg = cfg.with_weights_dir(dataset / "pretrained")
        if not spec.get("gpu"):
            cfg.device = "cpu"  # pseudolabels and level 2: no GPU attached, none needed
        elif cfg.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise KernelError("this kernel trains on a GPU and none is available: turn on the GPU "
                                  "accelerator (enable_gpu in kernel-metadata.json)")
        pipe = Pipeline(data, working, cfg, deadline=deadline)
        for stage in spec["stages"]:
            result = pipe.run(only=stage)
            if result.get("stopped"):
                print(f"\nstopped by the time budget in {result['stopped']}; the checkpoints are in this "
                      f"version's output. To continue: python -m kzlib.kaggle render ... --resume "
                      f"{spec['kernel']}, then kaggle kernels push -p <kernels>/{spec['kernel']}", flush=True)
                return 0
            if result.get("blocked"):
                raise KernelError(f"stage {stage} is waiting for {', '.join(result['blocked'])}: an upstream "
                                  "kernel's output is incomplete")
        if "stack" in spec["stages"]:
            table, _ = summary(pipe)
            print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    finally:
        unlink_tree(links, dirs)
    for stage in spec["stages"]:
        log = working / "logs" / f"{stage}.log"
        if log.exists():
            print(f"\n--- {log.relative_to(working)} (last lines)\n" + "\n".join(log.read_text().splitlines()[-20:]))
    print(f"\nkernel {spec['kernel']} done in {time.time() - t0:.0f} s; outputs in {working}", flush=True)
    return 0

"""Run rendered kernels in push order on this machine, the way Kaggle would.

For each kernel: a fresh ``ROOT/<slug>/working`` folder and an input root ``ROOT/<slug>/input``
holding the dataset, the competition data and the ``working`` folder of every kernel listed in its
``kernel_sources``, mounted as Kaggle names them in either layout:

- ``flat`` (older sessions): ``input/<slug>/`` for each;
- ``kind`` (current sessions): ``input/competitions/<slug>/``, ``input/datasets/<owner>/<slug>/``,
  ``input/notebooks/<owner>/<slug>/``.

The kernel's script then runs in a fresh Python process with ``KAGGLE_INPUT_ROOT`` and
``KAGGLE_WORKING`` pointing there. A continuation (its own slug in ``kernel_sources``) sees its
previous run's output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = ("flat", "kind")


class EmulationError(RuntimeError):
    pass


def mount_point(input_root: Path, layout: str, kind: str, source: str) -> Path:
    """Where Kaggle mounts an input: ``kind`` is competitions, datasets or notebooks; ``source``
    is ``slug`` or ``owner/slug``."""
    slug = source.split("/")[-1]
    if layout == "flat":
        return input_root / slug
    return input_root / kind / source


def mount(input_root: Path, layout: str, kind: str, source: str, target: Path) -> None:
    link = mount_point(input_root, layout, kind, source)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(target).resolve(), target_is_directory=True)


def emulate(kernels_dir: Path, dataset_dir: Path, data_dir: Path, root: Path, only: list[str] | None = None,
            budget_hours: float | None = None, layout: str = "kind", log=print) -> dict[str, dict]:
    """Run the kernels of ``kernels_dir/push_order.txt`` (or ``only``); returns per-kernel
    {seconds, working, exit}. A kernel that fails raises with the tail of its log."""
    if layout not in LAYOUTS:
        raise EmulationError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    kernels_dir, root = Path(kernels_dir), Path(root)
    order = (kernels_dir / "push_order.txt").read_text().split()
    meta = {s: json.loads((kernels_dir / s / "kernel-metadata.json").read_text()) for s in order}
    results = {}
    for i, slug in enumerate(order, 1):
        if only and slug not in only:
            continue
        m = meta[slug]
        base = root / slug
        working, input_root = base / "working", base / "input"
        previous = None
        if m["id"] in m["kernel_sources"] and working.is_dir():  # a continuation: mount the last output
            previous = base / "previous"
            if previous.exists():
                shutil.rmtree(previous)
            working.rename(previous)
        for d in (working, input_root):
            if d.exists():
                shutil.rmtree(d)
        working.mkdir(parents=True)
        for source in m["dataset_sources"]:
            mount(input_root, layout, "datasets", source, dataset_dir)
        for comp in m["competition_sources"]:
            mount(input_root, layout, "competitions", comp, data_dir)
        for source in m["kernel_sources"]:
            up = source.split("/", 1)[1]
            if up == slug:
                if previous is not None:
                    mount(input_root, layout, "notebooks", source, previous)
                continue
            up_working = root / up / "working"
            if not up_working.is_dir():
                raise EmulationError(f"{slug} reads {up}, which has not run (push order broken?)")
            mount(input_root, layout, "notebooks", source, up_working)
        env = {**os.environ, "KAGGLE_INPUT_ROOT": str(input_root), "KAGGLE_WORKING": str(working),
               "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTHONPATH", None)  # kzlib must come from the mounted dataset, as on Kaggle
        if budget_hours is not None:
            env["KZLIB_TIME_BUDGET_HOURS"] = str(budget_hours)
        script = kernels_dir / slug / m["code_file"]
        t0 = time.time()
        log(f"[{i:>2}/{len(order)}] {slug} ...")
        with open(base / "kernel.log", "w") as fh:
            r = subprocess.run([sys.executable, str(script.resolve())], cwd=working, env=env, stdout=fh,
                               stderr=subprocess.STDOUT)
        seconds = time.time() - t0
        if r.returncode:
            tail = "\n".join((base / "kernel.log").read_text().splitlines()[-25:])
            raise EmulationError(f"kernel {slug} failed (exit {r.returncode}); {base / 'kernel.log'}:\n{tail}")
        links = [p for p in working.rglob("*") if p.is_symlink()]
        if links:
            raise EmulationError(f"kernel {slug} left links in its output: {links[:3]}")
        status = json.loads((working / "kzlib_status.json").read_text())
        log(f"[{i:>2}/{len(order)}] {slug} {status['state']} in {seconds:.1f} s")
        results[slug] = {"seconds": round(seconds, 1), "working": str(working), "state": status["state"]}
    return results

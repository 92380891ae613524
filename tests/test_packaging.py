"""The kit as an installable package: the wheel holds every module, the presets and templates, and
the ``kzlib`` command works from the installed copy, away from the source tree."""

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_every_module_and_runs_installed(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("kzlib-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kzlib").rglob("*.py") if "__pycache__" not in p.parts}
    assert source <= names, sorted(source - names)
    assert {"kzlib/configs/preset_full.json", "kzlib/configs/preset_demo.json",
            "kzlib/kaggle/dataset-metadata.json"} <= names
    assert {f"kzlib/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")} <= names  # the kernel templates
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kzlib = kzlib.__main__:main" in zipfile.ZipFile(wheel).read(entry).decode()

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import kzlib, kzlib.preset as p; print(kzlib.__file__); "
                            "print(p.load_preset(p.preset_path('full')).pseudo_kind)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site / "kzlib" / "__init__.py"), "resnext101"]
    cli = subprocess.run([sys.executable, str(site / "bin" / "kzlib"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert cli.returncode == 0 and "detect" in cli.stdout and "run" in cli.stdout, cli.stderr
    plan = subprocess.run([sys.executable, str(site / "bin" / "kzlib"), "run", "--data", str(ROOT / "tests" / "fixtures" / "tiny"),
                           "--work", str(tmp_path / "w"), "--preset", "demo", "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert plan.returncode == 0 and "detect-f0" in plan.stdout and "stack" in plan.stdout, plan.stderr
    render = subprocess.run([sys.executable, str(site / "bin" / "kzlib"), "kaggle", "render", "--user", "test",
                             "--preset", "demo", "--out", str(tmp_path / "k")], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert render.returncode == 0 and (tmp_path / "k" / "kzlib-stack" / "kernel.py").is_file(), render.stderr


def test_one_nccl_library_and_it_is_for_torchs_cuda_major():
    """NCCL ships as nvidia-nccl-cu12 or -cu13, and both own nvidia/nccl/lib/libnccl.so.2: two of them
    in one venv leave whichever installed last (the full xgboost pulled -cu12 beside torch's -cu13).
    The venv holds one, for the CUDA major torch is built with, and torch loads its version."""
    if not torch.version.cuda:
        pytest.skip(f"torch {torch.__version__} is a CPU build: no NCCL")
    owners = sorted({(d.metadata["Name"], d.version) for d in metadata.distributions()
                     if any(Path(str(f)).name.startswith("libnccl.so") for f in (d.files or []))})
    major = torch.version.cuda.split(".")[0]
    assert len(owners) == 1 and owners[0][0] == f"nvidia-nccl-cu{major}", owners
    assert ".".join(map(str, torch.cuda.nccl.version()[:3])) == ".".join(owners[0][1].split(".")[:3])

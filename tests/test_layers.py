"""The package's layers are a contract (pyproject.toml, [tool.importlinter]): no import cycles, no
import from a lower layer to a higher one, no import between the stage packages."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT + ["--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layers_hold():
    r = lint(ROOT)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout + r.stderr


def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "kzlib", tmp_path / "kzlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_have_no_group_whose_members_import_each_other():
    """No layer of the contract joins modules with ":" (which would let them import each other,
    cycles included): each edge module has its own layer, or shares one with siblings that may not."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = [layer for c in contracts if c["type"] == "layers" for layer in c["layers"]]
    assert layers and not [layer for layer in layers if ":" in layer], layers


def test_an_upward_import_or_a_stage_importing_another_breaks_them(tmp_path):
    """The contract can fail: the same check on a copy with one import that runs back up, and one
    from a stage into another."""
    copy(tmp_path)
    io = tmp_path / "kzlib" / "io.py"
    io.write_text(io.read_text() + "\nfrom kzlib import pipeline  # noqa: E402  (an upward import)\n")
    r = lint(tmp_path)
    assert r.returncode == 1 and "kzlib.io -> kzlib.pipeline" in r.stdout, r.stdout + r.stderr
    io.write_text(io.read_text().replace("\nfrom kzlib import pipeline  # noqa: E402  (an upward import)\n", ""))
    stack = tmp_path / "kzlib" / "stack" / "run.py"
    stack.write_text(stack.read_text() + "\nfrom kzlib.classify import predict  # noqa: E402\n")
    r = lint(tmp_path)
    assert r.returncode == 1 and "kzlib.stack.run -> kzlib.classify.predict" in r.stdout, r.stdout + r.stderr


def test_an_export_read_cycle_breaks_them(tmp_path):
    """Reading imports bundles (kzlib.read -> kzlib.export); the way back is an upward import, so the
    knot of issue 32 (Kaggle -> read -> export -> Kaggle) cannot come back unseen."""
    copy(tmp_path)
    export = tmp_path / "kzlib" / "export.py"
    export.write_text(export.read_text() + "\nfrom kzlib import read  # noqa: E402  (a cycle)\n")
    r = lint(tmp_path)
    assert r.returncode == 1 and "kzlib.export -> kzlib.read" in r.stdout, r.stdout + r.stderr
    export.write_text(export.read_text().replace("\nfrom kzlib import read  # noqa: E402  (a cycle)\n",
                                                 "\nfrom kzlib.kaggle import models  # noqa: E402\n"))
    r = lint(tmp_path)
    assert r.returncode == 1 and "kzlib.export -> kzlib.kaggle.models" in r.stdout, r.stdout + r.stderr

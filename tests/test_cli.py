"""The command line: a usage or path error of any command is one line, before torch is imported
(a command that reaches torch paid 13-15 CPU-seconds of imports to refuse its arguments; figures in
BENCHMARKS.md, "Start-up of the commands"), and the ``kzlib`` entry point runs each command's
``main``."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import PRESET

ROOT = Path(__file__).resolve().parents[1]
PAGE = next((ROOT / "tests" / "fixtures" / "tiny" / "test_images").iterdir())

# argv, exit code, what the one line says
REFUSALS = [
    (["read", "/nonexistent", "--model", "/nonexistent", "--out", "{tmp}/x"], 1,
     "/nonexistent: no such file, folder or glob match"),
    (["read", str(PAGE), "--model", "{tmp}/bundle", "--out", "{tmp}/x"], 1,
     "bundle/detect/fold0/model.safetensors: missing from the bundle"),
    (["read", str(PAGE), "--out", "{tmp}/x"], 2, "the following arguments are required: --model"),
    (["run", "--data", "d", "--preset", str(PRESET)], 2, "the following arguments are required: --work"),
    (["run", "--data", "/nonexistent", "--work", "{tmp}/w", "--preset", str(PRESET)], 1,
     "/nonexistent: not a dataset folder (no such directory)"),
    (["run", "--data", "/nonexistent", "--work", "{tmp}/w", "--preset", "nope"], 2, "no preset 'nope' (known: ablation, demo"),
    (["export", "/nonexistent"], 2, "the following arguments are required: --out"),
    (["export", "/nonexistent", "--out", "{tmp}/b"], 1, "/nonexistent: not a runner work folder (no preset.json)"),
    (["detect", "train", "d", "--out", "o", "--epochs", "many"], 2, "argument --epochs: invalid int value: 'many'"),
    (["detect", "train", "/nonexistent", "--out", "{tmp}/o"], 1, "/nonexistent: not a dataset folder"),
    (["detect", "predict", "{tmp}", "/nonexistent", "--split", "test"], 2, "not a trained run (no best.pth"),
    (["classify", "train", "d", "--out", "o"], 2, "the following arguments are required: --boxes"),
    (["classify", "train", str(ROOT / "tests" / "fixtures" / "tiny"), "--boxes", "/nonexistent.csv", "--out",
      "{tmp}/o"], 1, "/nonexistent.csv: no such file"),
]

SWEEP = """
import contextlib, io, json, sys
from kzlib.__main__ import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out.append({"code": code, "err": err.getvalue(), "torch": sorted(m for m in sys.modules if m == "torch"
                                                                     or m.startswith(("torch.", "torchvision")))})
print(json.dumps(out))
"""


def test_refusals_are_one_line_before_torch_is_imported(tmp_path):
    """Every case in one fresh interpreter (pytest's own has torch): after each refusal, neither torch
    nor torch._dynamo (which torchvision's ops bring: most of the cost) has been imported."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({
        "format": 3, "kit_version": "0.0", "torch": "0.0", "detectors": ["detect/fold0"], "classifiers": {"a": ["c"]},
        "n_tta": 1, "test_box_rule": "fold0", "test_votes": 0, "n_folds": 1,
        "files": {"detect/fold0/model.safetensors": "0" * 64}}))
    argvs = [[a.replace("{tmp}", str(tmp_path)) for a in argv] for argv, _, _ in REFUSALS]
    r = subprocess.run([sys.executable, "-c", SWEEP, json.dumps(argvs)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    for (argv, code, said), got in zip(REFUSALS, json.loads(r.stdout)):
        assert got["code"] == code and said in got["err"], (argv, got)
        assert len(got["err"].strip().splitlines()) == 1 or code == 2, (argv, got["err"])  # argparse: usage + line
        assert "Traceback" not in got["err"] and got["torch"] == [], (argv, got["torch"][:5])


def test_the_entry_point_runs_a_commands_main():
    """The one subprocess of the command line: ``python -m kzlib`` dispatches to a command's main,
    and its exit code and error line come back (the other error paths are tested in-process)."""
    r = subprocess.run([sys.executable, "-m", "kzlib", "read", "/nonexistent", "--model", "/nonexistent", "--out", "x"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr == "error: /nonexistent: no such file, folder or glob match\n", r.stderr
    assert subprocess.run([sys.executable, "-m", "kzlib", "nope"], capture_output=True, text=True).returncode == 2

"""benchmarks/gpu_check.py cannot rot: its reduced CPU mode runs every part but the demo, and writes
each part's lines to --out as it goes (a run killed partway keeps the parts that finished)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the script's whole CPU mode, in processes of its own

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu"]


def rows(out: Path) -> dict:
    by_part = {}
    path = out / "gpu_check.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        by_part.setdefault(row["part"], []).append(row)
    return by_part


def test_gpu_check_cpu_mode_runs_every_part(tmp_path):
    r = subprocess.run(SCRIPT + ["--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    by_part = rows(tmp_path)
    assert list(by_part) == ["A", "B", "F", "C", "D", "E"]  # in the order they ran
    assert not any("error" in row for part in by_part.values() for row in part)
    assert all(part[-1]["done"] for part in by_part.values())
    assert by_part["A"][0]["device"].startswith("CPU")
    trainings = [row for row in by_part["B"] if "network" in row]
    assert {row["network"] for row in trainings} == {"detector", "classifier"}
    assert all(row["ok"] and row["scaler_scale"] > 0 and row["predicted_on_cpu"] > 0 for row in trainings)
    assert any(row.get("group") == "cpu:gloo,cuda:gloo" and row["ok"] for row in by_part["B"])
    ddp = by_part["F"][0]
    assert ddp["group"] == "gloo" and ddp["ok"] and ddp["micro_batches"] == 2 and ddp["ddp_bucket_gib"] > 0
    assert ddp["plain_s_per_step"] > 0 and ddp["ddp_s_per_step"] > 0 and ddp["precision"].startswith("fp16")
    assert all(row["s_per_step"] > 0 and row["tflop_per_step"] > 0 for row in by_part["C"] if "done" not in row)
    assert [row["cudnn_benchmark"] for row in by_part["D"] if "done" not in row] == [False, True]
    assert "skipped" in by_part["E"][0]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "[A] device CPU" in log and "part D:" in log and "results:" in log


def test_a_run_killed_partway_keeps_the_parts_that_finished(tmp_path):
    """Killed while part B runs: part A's lines and its log are in --out already."""
    proc = subprocess.Popen(SCRIPT + ["--out", str(tmp_path), "--parts", "A,B"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while not any(row.get("done") for row in rows(tmp_path).get("A", [])):
            assert proc.poll() is None and time.time() < deadline, "part A did not finish"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    by_part = rows(tmp_path)
    assert by_part["A"][0]["device"].startswith("CPU") and by_part["A"][-1]["done"]
    assert not any(row.get("done") for row in by_part.get("B", []))  # B was cut
    assert "[A] device CPU" in (tmp_path / "gpu_check.log").read_text()

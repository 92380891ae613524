"""benchmarks/gpu_check.py cannot rot: its reduced CPU mode runs every part but the demo."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_runs_every_part(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    by_part = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row)
    assert set(by_part) == {"A", "B", "C", "D", "E"} and not any("error" in row for row in rows)
    assert by_part["A"][0]["device"].startswith("CPU")
    trainings = [row for row in by_part["B"] if "network" in row]
    assert {row["network"] for row in trainings} == {"detector", "classifier"}
    assert all(row["ok"] and row["scaler_scale"] > 0 and row["predicted_on_cpu"] > 0 for row in trainings)
    assert any(row.get("group") == "cpu:gloo,cuda:gloo" and row["ok"] for row in by_part["B"])
    assert all(row["s_per_step"] > 0 and row["tflop_per_step"] > 0 for row in by_part["C"])
    assert [row["cudnn_benchmark"] for row in by_part["D"]] == [False, True]
    assert "skipped" in by_part["E"][0]

"""The demo on this machine: its chain with 3 seeds in fp32 (and in bf16 where the CPU has it
natively), the time limit this machine is held to, and one table of times and F1.

    .venv/bin/python benchmarks/demo_spread.py --data demo/data --out bench/spread
        [--seeds 0 1 2] [--precisions fp32 bf16] [--repeat] [--preset demo]

Each run is ``run_local.py --preset FILE`` into OUT/PRECISION-sSEED (resumable: rerun to continue;
a finished run is read, not redone), FILE being the preset with every network's ``seed`` set and
``amp_cpu`` off (fp32) or on (bf16). ``--repeat`` runs the first seed's fp32 chain a second time
(OUT/fp32-sSEED-again) and says whether the F1 figures agree to the fourth decimal.

Printed first: the CPU (model, avx512_bf16, amx), torch's threads, and the machine's reference step
(``profile_epoch.reference_step``: the fp32 classifier step of the demo's 0.814 recipe) with the
runner's limit on this machine: 15 min x (reference step / 1.1 s, the step of BENCHMARKS.md's
2-core Xeon). A VM's speed drifts over an hour, so the step is measured again after every run: a
run is held to the limit of the mean of the steps just before and just after it, and the summary
also gives the limit of the median of all. Then per run: runner seconds, its reference step and
limit, the trainings' and the rest's seconds (stage seconds summed: with the preset's ``jobs`` 2
two folds' stages run side by side, so they add up to more than the runner's), and the valid / test
F1 of every model; then the mean
and the worst seed per precision. Writes OUT/spread.csv.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_epoch import reference_step  # noqa: E402
from kzlib.devices import cpu_has_bf16  # noqa: E402
from kzlib.preset import preset_path  # noqa: E402

XEON_STEP_S = 1.1  # the reference step of BENCHMARKS.md's 2-core Xeon, the machine the 15-minute goal names
LIMIT_S = 15 * 60


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    listed = ", ".join(have) or "none of avx512f, avx512_bf16, amx"
    return f"CPU: {model}; {torch.get_num_threads()} torch threads; flags: {listed}; bf16 native: {cpu_has_bf16()}"


def seeded_preset(preset: dict, seed: int, bf16: bool) -> dict:
    """The preset with every network's seed and the CPU's mixed precision set."""
    p = json.loads(json.dumps(preset))
    for net in [p["detect"], *p["kinds"].values()]:
        net["seed"] = seed
        net["amp_cpu"] = bf16
    return p


def probe(data: Path) -> float:
    """This machine's reference step now, printed with the runner's limit it gives."""
    ref = reference_step(data)
    limit = LIMIT_S * ref / XEON_STEP_S
    print(f"reference step (fp32 classifier step of the 0.814 recipe): {ref:.3f} s -> the runner's limit now: "
          f"15 min x {ref:.3f} / {XEON_STEP_S} = {limit:.0f} s ({limit / 60:.1f} min)", flush=True)
    return ref


def run_chain(data: Path, work: Path, preset: dict) -> tuple[float, bool]:
    """Runs (or finishes) the chain: the runner's wall seconds, and whether it ran in this call
    (False: a finished run, its seconds read back)."""
    work.mkdir(parents=True, exist_ok=True)
    preset_file = work.parent / f"{work.name}.preset.json"
    preset_file.write_text(json.dumps(preset, indent=1))
    seconds_file = work / "runner_seconds.txt"
    if seconds_file.exists():
        return float(seconds_file.read_text()), False
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--data", str(data), "--work", str(work),
                    "--preset", str(preset_file)], check=True)
    seconds = time.time() - t0
    seconds_file.write_text(f"{seconds:.1f}")
    return seconds, True


def run_row(name: str, work: Path, seconds: float) -> dict:
    """Times and F1 of one finished run, from its summary.csv and stage_times.csv."""
    table = pd.read_csv(work / "summary.csv")
    times = pd.read_csv(work / "stage_times.csv")
    training = times["stage"].str.match(r"^(detect-f\d|classify-[^-]+(-pl-ft|-pl)?-f\d)$")
    row = {"run": name, "runner_s": round(seconds), "training_s": round(times.loc[training, "seconds"].sum()),
           "other_s": round(times.loc[~training, "seconds"].sum())}
    for stage in ("detect", "classify"):
        pick = training & times["stage"].str.startswith(stage) & ~times["stage"].str.contains("-pl")
        row[f"{stage}_train_s"] = round(times.loc[pick, "seconds"].sum())
    row["finetune_s"] = round(times.loc[training & times["stage"].str.contains("-pl"), "seconds"].sum())
    for r in table.itertuples():
        row[f"{r.model}: valid"] = round(float(r.valid_f1), 4)
        row[f"{r.model}: test"] = round(float(r.test_f1), 4)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    ap.add_argument("--repeat", action="store_true", help="run the first seed's fp32 chain twice and compare")
    a = ap.parse_args()
    preset = json.loads(preset_path(a.preset).read_text())
    print(cpu_line(), flush=True)
    steps = [probe(a.data)]
    precisions = [p for p in a.precisions if p == "fp32" or cpu_has_bf16()]
    if len(precisions) < len(a.precisions):
        print("bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); fp32 only", flush=True)
    runs = [(p, s, "") for p in precisions for s in a.seeds]
    if a.repeat:
        runs.insert(1, ("fp32", a.seeds[0], "-again"))
    rows = []
    for precision, seed, again in runs:
        name = f"{precision}-s{seed}{again}"
        print(f"\n=== {name} ===", flush=True)
        work = a.out / name
        seconds, ran = run_chain(a.data, work, seeded_preset(preset, seed, precision == "bf16"))
        if ran:  # the run's own step: the mean of those just before and after it, kept with the run
            steps.append(probe(a.data))
            (work / "reference_step.txt").write_text(f"{(steps[-2] + steps[-1]) / 2:.4f}")
        ref_file = work / "reference_step.txt"  # absent for a run made before the script kept it
        ref = float(ref_file.read_text()) if ref_file.exists() else float("nan")
        row = run_row(name, work, seconds)
        rows.append({"run": name, "runner_s": row.pop("runner_s"), "ref_step_s": round(ref, 3),
                     "limit_s": round(LIMIT_S * ref / XEON_STEP_S, 0), **row, "precision": precision, "seed": seed})
    df = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "spread.csv", index=False)
    pd.set_option("display.width", 250)
    ref = float(pd.Series(steps).median())
    limit = LIMIT_S * ref / XEON_STEP_S
    print(f"\n{cpu_line()}\nreference steps {', '.join(f'{x:.3f}' for x in steps)} s: median {ref:.3f} s, "
          f"runner limit here {limit:.0f} s")
    print(df.drop(columns=["precision", "seed"]).to_string(index=False))
    level2 = "level 2: test"
    for precision, g in df[~df["run"].str.endswith("-again")].groupby("precision", sort=False):
        own = g.dropna(subset=["limit_s"])
        own = ("no step of its own (made before the script kept one)" if own.empty else
               f"{(own['runner_s'] <= own['limit_s']).sum()} of {len(own)} within")
        print(f"{precision}: level-2 test F1 mean {g[level2].mean():.4f}, worst {g[level2].min():.4f} "
              f"({len(g)} seeds); runner {g['runner_s'].min():.0f}-{g['runner_s'].max():.0f} s; each run against "
              f"its own limit: {own}; against the median's {limit:.0f} s: "
              f"{'within' if g['runner_s'].max() <= limit else 'OVER'}")
    if a.repeat:
        first, again = (df[df["run"] == f"fp32-s{a.seeds[0]}{x}"].iloc[0] for x in ("", "-again"))
        f1s = [c for c in df.columns if c.endswith((": valid", ": test"))]
        same = all(f"{first[c]:.4f}" == f"{again[c]:.4f}" for c in f1s)
        print(f"repeat of fp32 seed {a.seeds[0]}: every F1 the same to the fourth decimal: {same}")


if __name__ == "__main__":
    main()

"""Run the whole chain on one machine: detector folds, classifier folds per model kind,
pseudolabels and their refits, level-2 stacking, submission. Resumable: rerun the same command
after an interruption and finished stages are skipped, an interrupted training resumes.

  kzlib run --data DATA_DIR --work RUNS_DIR --preset full|demo|FILE.json   (or python run_local.py ...)
                      [--folds 0,1] [--only STAGE] [--dry-run] [--device cpu] [--jobs N]
                      [--pretrained-dir DIR] [--allow-scratch] [--rerun-changed] [--time-scale X]

On the CPU, --jobs N (the preset's ``jobs``; the demo's: 2) trains N folds at once, each in a process of
its own with the CPU's threads shared among them: on two cores two narrow networks on one thread each
get through more steps than one network on two threads.

Several GPUs: start one runner per GPU on the same work folder with different --folds, e.g.
  CUDA_VISIBLE_DEVICES=0 kzlib run ... --folds 0,1,2 &
  CUDA_VISIBLE_DEVICES=1 kzlib run ... --folds 3,4 &
Each runs the stages of its folds that are ready and reports the rest as waiting; rerun (without
--folds) once they finish, and the stages that need every fold (merges, pseudolabels, level 2) run.
"""

import functools
import sys
import time
from dataclasses import replace
from pathlib import Path

from kzlib import weights
from kzlib.cli import device_arg, folds_arg, one_line_errors, parser
from kzlib.data import DataDir, require_valid
from kzlib.errors import EnvironmentProblem, UsageError
from kzlib.preset import load_preset, preset_path


@one_line_errors()
def main(argv=None) -> int:
    p = parser("kzlib run", __doc__)
    p.add_argument("--data", type=Path, required=True, help="competition-layout data folder")
    p.add_argument("--work", type=Path, required=True, help="work folder (runs, logs, state, submission)")
    p.add_argument("--preset", default="demo", help="full, demo, or a preset JSON file")
    p.add_argument("--folds", type=folds_arg, help="comma-separated folds whose per-fold stages this process runs")
    p.add_argument("--only", help="run only this stage (or stage prefix, e.g. detect, classify-resnet18)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with each stage's status")
    p.add_argument("--device", type=device_arg, help="override the preset's device (cpu, cuda)")
    p.add_argument("--jobs", type=int, help="on the CPU: folds trained at once, each in a process of its own with "
                                            "the threads shared (default: the preset's jobs)")
    p.add_argument("--pretrained-dir", type=Path,
                   help="folder of the pretrained weights (default $KZLIB_PRETRAINED or pretrained/)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="redo the stages whose settings or data changed since they ran (and the stages after them); "
                        "without it the runner refuses to mix them")
    p.add_argument("--allow-scratch", action="store_true",
                   help="train every network from random weights instead of the preset's pretrained ones")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply the preset's time budgets (time_budget_s) by this: more time, more epochs "
                        "on a slow CPU (the demo's budgets keep it near 15 minutes)")
    a = p.parse_args(argv)
    if a.jobs is not None and a.jobs < 1:
        raise UsageError(f"--jobs: {a.jobs}: at least 1")
    cfg = load_preset(preset_path(a.preset))
    if a.time_scale != 1.0:
        scaled = cfg.with_time_scale(a.time_scale)
        if scaled == cfg:
            raise UsageError(f"--time-scale: preset {a.preset} has no time budgets (time_budget_s) to scale; "
                             "its epochs are fixed")
        cfg = scaled
    if a.device:
        cfg = replace(cfg, device=a.device)  # the preset's checks again (gpus > 1 needs CUDA)
    if a.allow_scratch:
        cfg = cfg.without_pretrained()
        print("note: --allow-scratch: every network starts from random weights (the preset's pretrained "
              "backbones and frozen starts are off)")
    folder = a.pretrained_dir or weights.default_dir()
    # before anything else: a missing file is one line naming the command that fetches it, not hours later
    cfg.check_weights(folder, fix=f"{weights.FETCH} --preset {a.preset} --out {folder}")
    cfg = cfg.with_weights_dir(folder)
    DataDir(a.data).require("train_csv")  # the folds are made from it, even for a dry run
    # torch, the devices and the chain's stages: only once the arguments, the preset and the weights are checked
    from kzlib import devices, pipeline, summary

    print(devices.describe_asked(cfg.device), flush=True)
    jobs = cfg.jobs if a.jobs is None else a.jobs
    if jobs > 1 and cfg.device != "cpu":
        print(f"note: jobs {jobs} is for the CPU; on {cfg.device} the folds run one at a time", flush=True)
        jobs = 1
    threads = max(1, devices.cpu_threads() // jobs)
    if jobs > 1 and not a.dry_run:
        print(f"jobs: {jobs} folds at a time, {threads} thread(s) each", flush=True)
    if not a.dry_run:
        problem = devices.cuda_problem(cfg.device) if cfg.device.startswith("cuda") else None
        if problem:
            raise EnvironmentProblem(f"preset {a.preset} runs on a CUDA GPU, but {problem}; or pass --device cpu "
                                     "to run it on the CPU anyway (slow)")
        print(f"checking {a.data} ...", flush=True)
        require_valid(a.data, cfg.n_folds)
    pipe = pipeline.Pipeline(a.data, a.work, cfg, a.folds or None)
    if pipe.fold_mode == "page":
        print(f"note: fewer books than the {cfg.n_folds} folds: folds are made by page, not by book")
    t0 = time.time()
    result = pipe.run(a.only, a.dry_run, a.rerun_changed, functools.partial(print, flush=True), jobs, threads)
    if a.dry_run:
        return 0
    print(f"\nfinished in {time.time() - t0:.0f} s; work folder {a.work}")
    if result["blocked"]:
        print(f"{len(result['blocked'])} stage(s) wait for other stages; rerun when they are done")
    if result.get("skipped"):
        print(f"{len(result['skipped'])} stage(s) run in another process; rerun when it is done")
    summary.report(pipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""kzlib kaggle render|push|emulate|download|publish

  render  --user NAME [--preset kaggle_week|kaggle_month|full|demo|FILE] [--out build/kernels] [--dataset-slug kzlib-kit]
          [--prefix kzlib] [--budget-hours 11] [--continue SLUG ...] [--only SLUG ...] [--gpus 1|2]
          [--docker-image IMAGE] [--read-model OWNER/MODEL/pytorch/VARIATION/VERSION]
      one folder per kernel (kernel.py from kernels/*.py with its values filled in, and
      kernel-metadata.json), push_order.txt and render.json; then the bill: GPU-hours and sessions
      per kernel, the total, the account's quota (when the API answers) and the weeks it takes.
      --read-model renders one kernel instead: the test pages read with a bundle from Kaggle Models.
  push    [--kernels build/kernels] [--max-gpu 2] [--max-cpu 4] [--poll 60] [--max-continuations 3]
          [--retry SLUG ...] [--max-weeks 8] [--force] [--max-quota-wait 24]
      pushes the kernels in dependency order with at most 2 GPU sessions, waits for each, continues
      the ones stopped by the time budget; rerun it to carry on (push_state.json). Before the first
      push: the bill, refused beyond --max-weeks unless --force. A used-up weekly GPU quota: no GPU
      push before its refresh (waited for up to --max-quota-wait hours, else exit 1 with the time).
      A status or output that cannot be read never changes a kernel's state. --retry: failed
      kernels again, unless Kaggle says they are running or complete.
  emulate --data DATA_DIR --root DIR [--preset FILE] [--user test] [--layout kind|flat] [--only SLUG ...]
      renders the kernels and builds the dataset under DIR, runs every kernel in push order with
      the Kaggle folder layout rebuilt under DIR, and scores the final submission when the data
      folder has test_labels.csv (synthetic data).
  download DATA_DIR [--keep-archive]
      the competition data through the Kaggle API, unpacked into the Kaggle layout and checked.
  publish BUNDLE --model OWNER/MODEL/pytorch/VARIATION [--notes TEXT]
      a bundle (kzlib export) as a new version of this Kaggle Model variation (the model and the
      variation are made when missing), once Kaggle lists it; prints OWNER/MODEL/pytorch/VARIATION/N,
      what `render --read-model` takes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kzlib.cli import one_line_errors, parser
from kzlib.data import print_report
from kzlib.errors import EnvironmentProblem, UsageError
from kzlib.export import MANIFEST, load
from kzlib.kaggle.api import real_api
from kzlib.kaggle.bill import bill_text, quota
from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user
from kzlib.kaggle.download import download
from kzlib.kaggle.emulate import LAYOUTS, EmulationError, emulate
from kzlib.kaggle.models import parse_handle, publish
from kzlib.kaggle.plan import DATASET_SLUG, PlanError, push_commands, render, render_read
from kzlib.kaggle.push import Scheduler
from kzlib.metric import main as metric_main
from kzlib.preset import load_preset, preset_path


def _preset(name: str):
    return load_preset(preset_path(name))


def render_cmd(a) -> int:
    user = kaggle_user(a.user)
    if a.read_model:
        k = render_read(a.read_model, user, a.out, a.dataset_slug, a.prefix, a.budget_hours, a.docker_image)
        print(f"{k.slug} in {a.out / k.slug}: reads the test pages with {a.read_model}\n"
              f"then: kaggle kernels push -p {a.out / k.slug}")
        return 0
    cfg = _preset(a.preset)
    kernels = render(cfg, user, a.out, a.dataset_slug, a.prefix, tuple(a.continue_), a.budget_hours,
                     tuple(a.only), a.gpus, a.docker_image)
    gpus = f"; {a.gpus} GPUs per training (torchrun)" if a.gpus and a.gpus > 1 else ""
    print(f"{len(kernels)} kernels in {a.out} for {user} (dataset {user}/{a.dataset_slug}); "
          f"time budget {a.budget_hours:g} h a session{gpus}")
    print(push_commands(kernels, a.out, user))
    api = None
    try:
        api = real_api()
    except EnvironmentProblem:
        pass  # no credentials here: the bill without the account's quota
    cfg = replace(cfg, gpus=a.gpus) if a.gpus else cfg
    print("\n" + bill_text(kernels, cfg, a.budget_hours, quota(api) if api else None, a.prefix))
    print(f"\nthen: kzlib kaggle push --kernels {a.out}")
    return 0


def push_cmd(a) -> int:
    s = Scheduler(a.kernels, real_api(), max_gpu=a.max_gpu, max_cpu=a.max_cpu, poll=a.poll,
                  max_continuations=a.max_continuations, continue_stopped=not a.no_continue,
                  max_quota_wait=a.max_quota_wait * 3600)
    if a.retry:
        s.retry(a.retry)
    return s.run(max_weeks=a.max_weeks, force=a.force)


def emulate_cmd(a) -> int:
    root = a.root
    kernels = render(_preset(a.preset), a.user, root / "kernels", a.dataset_slug)
    build_dataset(root / "dataset", a.user, slug=a.dataset_slug)
    print(f"{len(kernels)} kernels rendered, dataset built in {root}")
    results = emulate(root / "kernels", root / "dataset", a.data, root / "run", a.only or None, layout=a.layout)
    sub = root / "run" / kernels[-1].slug / "working" / "submission.csv"
    table = pd.DataFrame([{"kernel": k, **v} for k, v in results.items()])
    print(table[["kernel", "state", "seconds"]].to_string(index=False))
    if sub.exists():
        print(f"submission: {sub}")
        if (a.data / "test_labels.csv").exists():
            return metric_main([str(sub), str(a.data / "test_labels.csv")])
    return 0


def download_cmd(a) -> int:
    return print_report(download(a.data_dir, keep_archive=a.keep_archive))


def publish_cmd(a) -> int:
    parse_handle(a.model)  # a bad handle is one line before anything is read
    if not (a.bundle / MANIFEST).is_file():
        raise UsageError(f"{a.bundle}: not a bundle (no {MANIFEST}); make one with `kzlib export WORK --out BUNDLE`")
    bundle = load(a.bundle)  # its manifest and every file checked: what is published reads
    print(publish(bundle.root, a.model, notes=a.notes))
    return 0


@one_line_errors(BuildError, PlanError, EmulationError, ValueError, FileNotFoundError, code=2)
def main(argv=None) -> int:
    p = parser("kzlib kaggle", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write the kernel folders and the push order")
    r.add_argument("--user", help="Kaggle user name (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
    r.add_argument("--preset", default="full",
                   help="kaggle_week (a week of free GPU quota), kaggle_month, full, demo, or a preset JSON file")
    r.add_argument("--out", type=Path, default=Path("build") / "kernels")
    r.add_argument("--continue", dest="continue_", nargs="*", default=[], metavar="SLUG",
                   help="render these as continuations: they read and resume their own previous output")
    r.add_argument("--resume", dest="continue_", nargs="*", help=argparse.SUPPRESS)  # the old name of --continue
    r.add_argument("--only", nargs="*", default=[], metavar="SLUG", help="render only these kernels")
    r.add_argument("--budget-hours", type=float, default=11.0,
                   help="stop every stage before it would run past this many hours of a session (Kaggle stops at 12)")
    r.add_argument("--dataset-slug", default=DATASET_SLUG)
    r.add_argument("--prefix", default="kzlib", help="first word of every kernel slug")
    r.add_argument("--gpus", type=int, choices=(1, 2), default=None,
                   help="train on both T4s of a session (data-parallel, torchrun) instead of the preset's gpus")
    r.add_argument("--docker-image", default="", metavar="gcr.io/kaggle-gpu-images/python@sha256:DIGEST",
                   help="the Kaggle image every kernel runs in (default: the one Kaggle gives the first kernel "
                        "pushed, which push then pins for the rest of the chain)")
    r.add_argument("--read-model", metavar="OWNER/MODEL/pytorch/VARIATION/VERSION",
                   help="render one kernel that reads the test pages with this bundle from Kaggle Models")
    ps = sub.add_parser("push", help="push the kernels in order, at most N GPU sessions, and see them through")
    ps.add_argument("--kernels", type=Path, default=Path("build") / "kernels")
    ps.add_argument("--max-gpu", type=int, default=2, help="GPU sessions at a time (a Kaggle account gets 2)")
    ps.add_argument("--max-cpu", type=int, default=4, help="CPU sessions at a time")
    ps.add_argument("--poll", type=float, default=60.0, help="seconds between status checks")
    ps.add_argument("--max-continuations", type=int, default=3)
    ps.add_argument("--no-continue", action="store_true", help="report budget-stopped kernels instead of continuing them")
    ps.add_argument("--retry", nargs="+", metavar="SLUG",
                    help="push these failed kernels again (Kaggle is asked first: a running or complete one is followed)")
    ps.add_argument("--max-quota-wait", type=float, default=24.0, metavar="HOURS",
                    help="wait this long at most for a used-up weekly GPU quota to refresh, else exit 1 with its time")
    ps.add_argument("--max-weeks", type=float, default=8.0,
                    help="refuse a plan that takes more weeks of GPU quota than this (before the first push)")
    ps.add_argument("--force", action="store_true", help="push even a plan beyond --max-weeks")
    e = sub.add_parser("emulate", help="run every kernel locally in push order")
    e.add_argument("--data", type=Path, required=True, help="competition-layout data folder")
    e.add_argument("--root", type=Path, required=True, help="folder for kernels, dataset and kernel outputs")
    e.add_argument("--preset", default="demo")
    e.add_argument("--user", default="test")
    e.add_argument("--dataset-slug", default=DATASET_SLUG)
    e.add_argument("--layout", choices=LAYOUTS, default="kind", help="Kaggle's input layout to rebuild")
    e.add_argument("--only", nargs="*", default=[], metavar="SLUG", help="run only these kernels")
    d = sub.add_parser("download", help="the competition data through the Kaggle API, unpacked and checked")
    d.add_argument("data_dir", type=Path)
    d.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    pb = sub.add_parser("publish", help="a bundle (kzlib export) as a new version of a Kaggle Model variation")
    pb.add_argument("bundle", type=Path)
    pb.add_argument("--model", required=True, metavar="OWNER/MODEL/pytorch/VARIATION")
    pb.add_argument("--notes", default="", help="the version's notes (default: kzlib export)")
    a = p.parse_args(argv)
    return {"render": render_cmd, "push": push_cmd, "emulate": emulate_cmd, "download": download_cmd,
            "publish": publish_cmd}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

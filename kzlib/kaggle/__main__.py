"""python -m kzlib.kaggle render|emulate

  render  --user NAME [--preset full|demo|FILE] [--out build/kernels] [--dataset-slug kzlib-kit]
          [--prefix kzlib] [--resume SLUG ...]
      one folder per kernel (kernel.py + kernel-metadata.json), push_order.txt, and the
      `kaggle kernels push -p ...` commands in order.
  emulate --data DATA_DIR --root DIR [--preset FILE] [--user test] [--only SLUG ...]
      renders the kernels and builds the dataset under DIR, runs every kernel in push order with
      the Kaggle folder layout rebuilt under DIR, and scores the final submission when the data
      folder has test_labels.csv (synthetic data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kzlib.cli import one_line_errors
from kzlib.kaggle.build import BuildError
from kzlib.kaggle.emulate import EmulationError
from kzlib.kaggle.plan import DATASET_SLUG, PlanError



def _preset(name: str):
    from kzlib.preset import load_preset, preset_path

    return load_preset(preset_path(name))


def render_cmd(a) -> int:
    from kzlib.kaggle.build import kaggle_user
    from kzlib.kaggle.plan import push_commands, render

    user = kaggle_user(a.user)
    kernels = render(_preset(a.preset), user, a.out, a.dataset_slug, a.prefix, tuple(a.resume))
    print(f"{len(kernels)} kernels in {a.out} for {user} (dataset {user}/{a.dataset_slug})")
    print(push_commands(kernels, a.out, user))
    return 0


def emulate_cmd(a) -> int:
    import pandas as pd

    from kzlib.kaggle.build import build_dataset
    from kzlib.kaggle.emulate import emulate
    from kzlib.kaggle.plan import render
    from kzlib.metric import main as metric_main

    root = a.root
    kernels = render(_preset(a.preset), a.user, root / "kernels", a.dataset_slug)
    build_dataset(root / "dataset", a.user, slug=a.dataset_slug)
    print(f"{len(kernels)} kernels rendered, dataset built in {root}")
    results = emulate(root / "kernels", root / "dataset", a.data, root / "run", a.only or None)
    sub = root / "run" / kernels[-1].slug / "working" / "submission.csv"
    print(pd.DataFrame([{"kernel": k, **v} for k, v in results.items()])[["kernel", "seconds"]].to_string(index=False))
    if sub.exists():
        print(f"submission: {sub}")
        if (a.data / "test_labels.csv").exists():
            return metric_main([str(sub), str(a.data / "test_labels.csv")])
    return 0


@one_line_errors(BuildError, PlanError, EmulationError, ValueError, FileNotFoundError, code=2)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kzlib.kaggle", description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write the kernel folders and print the push order")
    r.add_argument("--user", help="Kaggle user name (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
    r.add_argument("--preset", default="full", help="full, demo, or a preset JSON file")
    r.add_argument("--out", type=Path, default=Path("build") / "kernels")
    r.add_argument("--resume", nargs="*", default=[], metavar="SLUG",
                   help="kernels that read their own previous output (continue after the time limit)")
    r.add_argument("--dataset-slug", default=DATASET_SLUG)
    r.add_argument("--prefix", default="kzlib", help="first word of every kernel slug")
    e = sub.add_parser("emulate", help="run every kernel locally in push order")
    e.add_argument("--data", type=Path, required=True, help="competition-layout data folder")
    e.add_argument("--root", type=Path, required=True, help="folder for kernels, dataset and kernel outputs")
    e.add_argument("--preset", default="demo")
    e.add_argument("--user", default="test")
    e.add_argument("--dataset-slug", default=DATASET_SLUG)
    e.add_argument("--only", nargs="*", default=[], metavar="SLUG", help="run only these kernels")
    a = p.parse_args(argv)
    return render_cmd(a) if a.cmd == "render" else emulate_cmd(a)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Build the Kaggle Dataset that the kzlib kernels import: kzlib source, presets, trained weights,
pretrained backbone files and (optionally) wheels, plus dataset-metadata.json.

  python build_dataset.py [--user NAME] [--preset full] [--weights [NAME=]RUN_DIR ...] [--pretrained FILE ...]
                          [--wheels SPEC_OR_WHL ...] [--out build/dataset] [--slug kzlib-kit] [--push]

Then `kaggle datasets create -p build/dataset -r zip` (first time) or
`kaggle datasets version -p build/dataset -r zip -m MESSAGE`; --push runs the right one.
"""

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from kzlib.cli import one_line_errors  # noqa: E402
from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user, preset_weights, push, push_command  # noqa: E402
from kzlib.kaggle.plan import DATASET_SLUG  # noqa: E402


@one_line_errors(BuildError, code=2)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", help="Kaggle user name (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
    p.add_argument("--weights", nargs="*", default=[], metavar="[NAME=]RUN_DIR",
                   help="trained run folders (best.pth, config.json) to include under weights/NAME")
    p.add_argument("--preset", nargs="*", default=[], metavar="NAME",
                   help="include the pretrained weights these presets train from (e.g. full), from --pretrained-dir")
    p.add_argument("--pretrained-dir", type=Path, help="weights folder (default $KZLIB_PRETRAINED or pretrained/)")
    p.add_argument("--pretrained", nargs="*", default=[], metavar="FILE",
                   help="more backbone weight files, included under pretrained/ (presets name them by file name)")
    p.add_argument("--wheels", nargs="*", default=[], metavar="SPEC_OR_WHL",
                   help="wheel files, or requirement specs pip downloads (no dependencies), for packages the "
                        "Kaggle image lacks; kernels install them offline")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "dataset")
    p.add_argument("--slug", default=DATASET_SLUG, help="dataset slug; kernels find kzlib at /kaggle/input/SLUG")
    p.add_argument("--push", action="store_true", help="create or version the dataset with the kaggle CLI")
    a = p.parse_args(argv)
    user = kaggle_user(a.user)
    pretrained = preset_weights(a.preset, a.pretrained_dir) + list(a.pretrained)
    files = build_dataset(a.out, user, a.weights, pretrained, a.wheels, a.slug)
    width = max(len(f) for f, _ in files)
    for f, size in files:
        print(f"{f:<{width}}  {size:>12,d}")
    print(f"{len(files)} files, {sum(s for _, s in files) / 2**20:.1f} MiB in {a.out} (dataset {user}/{a.slug})")
    if a.push:
        push(a.out, user, a.slug)
    else:
        create, version = push_command(a.out, user, a.slug)
        print("to upload: " + shlex.join(create) + "   (first time)\n"
              "       or: " + shlex.join(version) + "   (new version)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

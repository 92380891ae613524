"""The ``kzlib`` command: one entry point for every stage's CLI.

    kzlib COMMAND [ARGS ...]        (the same as python -m kzlib.COMMAND ARGS ...)
"""

from __future__ import annotations

import importlib
import sys

from kzlib import __version__

# command -> (module whose main() it runs, what it does)
COMMANDS = {
    "data": ("kzlib.data", "check a dataset folder, write its folds"),
    "synth": ("kzlib.synth", "synthetic pages in the competition layout"),
    "viz": ("kzlib.viz", "draw a page with its characters"),
    "metric": ("kzlib.metric", "the competition F1 of a submission"),
    "weights": ("kzlib.weights_cli", "fetch and check the pretrained backbones"),
    "detect": ("kzlib.detect.__main__", "stage 1: the detector (train, predict, merge)"),
    "classify": ("kzlib.classify.__main__", "stage 2: the classifier (train, predict)"),
    "pseudolabel": ("kzlib.pseudolabel", "stage 3: pseudolabels from a blend of classifiers"),
    "stack": ("kzlib.stack.__main__", "stage 4: level 2 (features, train, predict)"),
    "run": ("kzlib.run", "the whole chain on one machine, resumable"),
    "export": ("kzlib.export", "a model bundle from a finished run"),
    "read": ("kzlib.read", "read pages: characters, text in reading order, pictures, a submission"),
    "order": ("kzlib.order", "the reading order of boxes (train.csv format in)"),
    "kaggle": ("kzlib.kaggle.__main__", "the chain as Kaggle kernels (download, render, push, emulate)"),
    "dataset": ("kzlib.kaggle.build", "the Kaggle Dataset with the kit and its weights"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: kzlib COMMAND [ARGS ...]   (kzlib COMMAND --help for its arguments)\n\ncommands:\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"kzlib {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"kzlib: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv[0] = f"kzlib {argv[0]}"
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

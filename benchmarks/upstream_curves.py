"""What shorter trainings cost by the original solution's own logs: the validation F1 of every
fold's detector and classifiers after each epoch, from lopuhin/kaggle-kuzushiji-2019's
``_runs/*/json-log-plots.log`` (the ``f1`` records: one per epoch, on the fold's held-out pages;
the detector's is box F1 with perfect classes, the classifiers' the competition's F1 on the
detector's out-of-fold boxes, without TTA).

    git clone https://github.com/lopuhin/kaggle-kuzushiji-2019 /tmp/upstream
    .venv/bin/python benchmarks/upstream_curves.py /tmp/upstream [--epochs 10 13 20 31]

For each kind of run it prints the five folds' mean F1 at the given epochs and at the last one, the
drop from the last (what stopping a 45/50-epoch schedule there loses: an upper bound for a schedule
that ends there, which anneals its learning rate as upstream's did only at its end), and how much
the best epoch beats the last (what keeping the best checkpoint by per-epoch validation gains over
validating once at the end). UPSTREAM.md quotes these figures for the kaggle_week and kaggle_month
presets.
"""

import argparse
import json
import statistics
from pathlib import Path

RUNS = {"detector (resnet152)": "segment-fold{}", "classifier resnet152": "clf-fold{}",
        "classifier resnext101_32x8d": "clf-fold{}-wsl8d-mt256-frozen",
        "resnext101 pseudolabel fine-tune": "clf-fold{}-wsl8d-mt256-frozen-pseudo-ft",
        "resnext101 pseudolabel refit": "clf-fold{}-wsl8d-mt256-frozen-pseudo"}


def curve(path: Path) -> list[float]:
    return [json.loads(line)["f1"] for line in path.read_text().splitlines() if '"f1"' in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("upstream", type=Path, help="a checkout of lopuhin/kaggle-kuzushiji-2019")
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 13, 20, 31])
    a = p.parse_args()
    for name, pattern in RUNS.items():
        curves = [curve(a.upstream / "_runs" / pattern.format(k) / "json-log-plots.log") for k in range(5)]
        last = statistics.mean(c[-1] for c in curves)
        best_gain = [max(c) - c[-1] for c in curves]
        cells = [f"epoch {e}: {statistics.mean(c[e - 1] for c in curves):.4f} "
                 f"(-{last - statistics.mean(c[e - 1] for c in curves):.4f})"
                 for e in a.epochs if all(len(c) >= e for c in curves)]
        print(f"{name}: epochs {'/'.join(str(len(c)) for c in curves)}; last {last:.4f} "
              f"(folds {' '.join(f'{c[-1]:.4f}' for c in curves)}); " + "; ".join(cells)
              + f"; best epoch over last: mean {statistics.mean(best_gain):.4f}, at most {max(best_gain):.4f}")


if __name__ == "__main__":
    main()

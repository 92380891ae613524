"""Level-2 F1 of finished demo runs under each test-box rule, on pages that no fold trained on and
that are not the test pages: more pages of the demo's test book.

    .venv/bin/python -m kzlib.synth DEV --books 4 --pages-per-book 12 --test-pages 20 --test-books 1 \\
        --classes 200 --height 1200 --seed 3 --workers 2        # the demo's data, its test book 20 pages long
    .venv/bin/python benchmarks/test_box_rules.py --dev DEV --demo demo/data --out OUT WORK_DIR...

The pages of DEV's test book that the demo's test set (``--demo``'s test_labels.csv) does not hold
are read (``kzlib read``) with each work folder's models under every rule: fold 0's boxes, the
folds' vote matched by IoU and by centres (any fold), and the vote of both folds; the work folder
is left as it is (the rule goes into a shadow folder's preset.json). Prints one row a run and rule,
and the mean over the runs.
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.data import read_labels_csv  # noqa: E402
from kzlib.metric import score_on_pages  # noqa: E402
from kzlib.read import read_pages  # noqa: E402

RULES = {"fold0": ("fold0", 0, "centre"), "vote, IoU": ("vote", 1, "iou"), "vote, centres": ("vote", 1, "centre"),
         "vote of both": ("vote", 2, "centre")}


def shadow(work: Path, folder: Path, rule: tuple) -> Path:
    """``work``'s files linked into ``folder``, with the rule in its own preset.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():
        if f.name != "preset.json" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    preset = json.loads((work / "preset.json").read_text())
    preset["test_box_rule"], preset["test_votes"], preset["test_match"] = rule
    (folder / "preset.json").write_text(json.dumps(preset, indent=1))
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("works", type=Path, nargs="+", help="finished work folders of the demo chain")
    p.add_argument("--dev", type=Path, required=True, help="the demo's data made with more test pages of its test book")
    p.add_argument("--demo", type=Path, required=True, help="the demo's data (its test pages are left out)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    truth = read_labels_csv(a.dev / "test_labels.csv")
    held = set(read_labels_csv(a.demo / "test_labels.csv")["image_id"])
    dev_ids = [i for i in truth["image_id"] if i not in held]
    pages = a.out / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    for i in dev_ids:
        if not (pages / f"{i}.jpg").exists():
            (pages / f"{i}.jpg").symlink_to((a.dev / "test_images" / f"{i}.jpg").resolve())
    print(f"{len(dev_ids)} pages of the test book that are not the demo's test pages, "
          f"{sum(len(str(x).split()) // 5 for x in truth.set_index('image_id').loc[dev_ids, 'labels'].dropna())} characters")
    rows = []
    for work in a.works:
        for name, rule in RULES.items():
            tag = f"{work.name}-{'-'.join(map(str, rule))}"
            out = a.out / "read" / tag
            if not (out / "submission.csv").exists():
                read_pages([str(pages)], shadow(work, a.out / "works" / tag, rule), out, trust=True, log=lambda *_: None)
            s = score_on_pages(pd.read_csv(out / "submission.csv", keep_default_na=False), truth, dev_ids)
            rows.append({"run": work.name, "rule": name, "f1": s["f1"], "precision": s["precision"], "recall": s["recall"]})
            print(f"{work.name:10s} {name:14s} F1 {s['f1']:.4f} (precision {s['precision']:.3f}, recall {s['recall']:.3f})",
                  flush=True)
    df = pd.DataFrame(rows)
    print(df.pivot(index="run", columns="rule", values="f1").round(4).to_string())
    print("mean:", df.groupby("rule", sort=False)["f1"].mean().round(4).to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tiny chain's fingerprint: the SHA-256 of its submission and of every CSV it wrote (a .gz's
contents), and of every trained network's weights, tensor by tensor; with ``--compare`` it says what differs from a
fingerprint written earlier (by another version of the kit).

    .venv/bin/python benchmarks/tiny_chain_digest.py --tmp /tmp/tiny --out digest.json [--compare old.json]

It runs the chain of the tests' ``finished_run`` (tests/fixtures/tiny, preset_tiny with 2 folds and
kind a), then exports the work folder and checks that the bundle's weights are the run's, bit for bit.
Run it once on the kit before a change (PYTHONPATH=OLD_TREE, e.g. `git archive BASE | tar -x -C OLD_TREE`)
and once after, then compare: a change
of a file format must leave every figure of the chain the same.
"""

import argparse
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: PYTHONPATH=OLD_TREE runs the old kit on the same chain


def weights_digest(state: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tmp", type=Path, default=Path("/tmp/tiny_chain"))
    p.add_argument("--out", type=Path, required=True, help="the fingerprint (JSON)")
    p.add_argument("--compare", type=Path, help="a fingerprint of another kit to compare with")
    p.add_argument("--no-run", action="store_true", help="fingerprint the chain already in --tmp")
    a = p.parse_args()
    from kzlib.pipeline import Pipeline
    from kzlib.preset import load_preset

    data, work = a.tmp / "data", a.tmp / "work"
    if not a.no_run:
        shutil.rmtree(a.tmp, ignore_errors=True)
        a.tmp.mkdir(parents=True)
        preset = json.loads((ROOT / "tests" / "fixtures" / "preset_tiny.json").read_text())
        preset.update(n_folds=2, pseudo_kind="", kinds={"a": preset["kinds"]["a"]})
        (a.tmp / "preset.json").write_text(json.dumps(preset))
        shutil.copytree(ROOT / "tests" / "fixtures" / "tiny", data)
        Pipeline(data, work, load_preset(a.tmp / "preset.json")).run(log=lambda *_: None)
    digest = {"files": {}, "weights": {}}
    for f in sorted(work.rglob("*")):
        rel = str(f.relative_to(work))
        if f.is_file() and (f.name.endswith((".csv", ".csv.gz")) and "log.csv" not in f.name):
            raw = f.read_bytes()  # a .gz's header holds the time it was written: its contents are compared
            digest["files"][rel] = hashlib.sha256(gzip.decompress(raw) if f.suffix == ".gz" else raw).hexdigest()
        if f.name == "best.pth":
            digest["weights"][str(f.parent.relative_to(work))] = weights_digest(
                torch.load(f, map_location="cpu", weights_only=True)["model"])
    try:  # the bundle's weights (safetensors from issue 33 on) are the run's
        from safetensors.torch import load_file

        from kzlib.export import export

        bundle = export(work, a.tmp / "bundle", log=lambda *_: None)
        runs = [*bundle.detectors, *(r for rs in bundle.classifiers.values() for r in rs)]
        found = {}
        for run in runs:
            f = run / "model.safetensors"
            if f.is_file():
                found[str(run.relative_to(bundle.root))] = weights_digest(load_file(f))
        if found:
            same = all(v == digest["weights"].get(k) for k, v in found.items())
            digest["bundle_weights_equal_run_weights"] = same
            print(f"bundle: {len(found)} safetensors files; weights bit-equal to the run's best.pth: {same}")
    except ImportError:
        pass
    a.out.write_text(json.dumps(digest, indent=1) + "\n")
    print(f"{a.out}: {len(digest['files'])} CSV files, {len(digest['weights'])} networks; submission.csv "
          f"{digest['files'].get('submission.csv', '-')[:16]}")
    if a.compare:
        old = json.loads(a.compare.read_text())
        for what in ("files", "weights"):
            keys = sorted(set(old[what]) | set(digest[what]))
            differ = [k for k in keys if old[what].get(k) != digest[what].get(k)]
            print(f"{what}: {len(keys) - len(differ)} of {len(keys)} the same" + (f"; differ: {differ}" if differ else ""))


if __name__ == "__main__":
    main()

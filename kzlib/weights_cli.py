"""``python -m kzlib weights``: fetch the pretrained backbones that presets name, and list what is
there.

    python -m kzlib weights fetch [--preset full ...] [--out DIR] [--arch ARCH ...] [--all] [--force]
    python -m kzlib weights list [--preset full demo ...] [--dir DIR]

``fetch`` downloads, through torchvision's and timm's own loaders, every registered file that the
named presets need, whichever way they name it (``"auto"`` or a registered file name), and says why
when a preset needs nothing it can fetch. ``list`` shows each preset stage's file and its status:
``verified`` (SHA-256 as in the manifest), ``unverified`` (a file of your own that loads),
``corrupt`` or ``missing``. The folder is ``--out``/``--dir``, else ``$KZLIB_PRETRAINED``, else
``pretrained/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from kzlib import weights
from kzlib.cli import one_line_errors, parser
from kzlib.preset import load_preset, preset_path


def _presets(names: Sequence[str]):
    return [(n, load_preset(preset_path(n))) for n in names]


def fetch_plan(presets: Sequence[str], log=print) -> list[str]:
    """The architectures whose registered files the presets need, in order; a need the kit cannot
    fetch (a file of the user's own) or a preset that needs nothing is said, not skipped silently."""
    archs = []
    for name, cfg in _presets(presets):
        needs = cfg.weight_needs()
        if not needs:
            log(f"preset {name}: trains every network from random weights; nothing to fetch for it")
        for n in needs:
            spec = weights.spec_for(n.value, n.arch)
            if spec is None:
                log(f"preset {name}: stage {n.stage} names {n.value!r}, which is not a file kzlib can fetch "
                    f"(registered: {', '.join(weights.BY_FILE)}); put it in the weights folder yourself")
            else:
                archs.append(spec.arch)
    return list(dict.fromkeys(archs))


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib weights", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the pretrained backbones the presets need (needs internet)")
    f.add_argument("--out", type=Path, help="weights folder (default $KZLIB_PRETRAINED or pretrained/)")
    f.add_argument("--preset", nargs="*", default=["full"], help="presets whose weights to fetch (default full)")
    f.add_argument("--arch", nargs="*", default=[], help=f"architectures to fetch as well ({', '.join(weights.SPECS)})")
    f.add_argument("--all", action="store_true", help="every registered architecture")
    f.add_argument("--force", action="store_true", help="download again even when verified")
    ls = sub.add_parser("list", help="what each preset needs, and what is present and verified")
    ls.add_argument("--dir", type=Path, help="weights folder (default $KZLIB_PRETRAINED or pretrained/)")
    ls.add_argument("--preset", nargs="*", default=["full", "demo"])
    a = p.parse_args(argv)
    if a.cmd == "fetch":
        out = a.out or weights.default_dir()
        archs = list(weights.SPECS) if a.all else list(dict.fromkeys(fetch_plan(a.preset) + a.arch))
        rows = weights.fetch(out, archs, a.force)
        print(f"{len(rows)} weight file(s) in {out}" + (f", listed in {out / weights.MANIFEST}" if rows else ""))
        return 0
    folder = a.dir or weights.default_dir()
    print(f"weights folder: {folder}")
    print(f"{'preset':<10} {'stage':<28} {'backbone':<18} {'file':<44} status")
    bad = []
    for name, cfg in _presets(a.preset):
        needs = cfg.weight_needs()
        if not needs:
            print(f"{name:<10} (trains from scratch: no pretrained weights)")
        for n in needs:
            path = weights.resolve(n.value, n.arch, folder)
            st = weights.status(path)
            if st in ("missing", "corrupt"):
                bad.append(name)
            print(f"{name:<10} {n.stage:<28} {n.arch:<18} {str(path):<44} {st}")
    if bad:
        presets = " ".join(dict.fromkeys(bad))
        print(f"{len(bad)} file(s) missing or corrupt: run `{weights.FETCH} --preset {presets}"
              + (f" --out {folder}`" if a.dir else "`"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

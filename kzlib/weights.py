"""Pretrained backbones: fetch them once through the libraries' own loaders, keep them as plain
state-dict files with a manifest (SHA-256, source), check them before any training.

    python -m kzlib.weights fetch [--out DIR] [--preset full ...] [--all] [--force]
    python -m kzlib.weights list [--dir DIR] [--preset full ...]

A config names its weights with ``pretrained``: ``"auto"`` is the file registered below for its
backbone, a bare file name is looked up in the weights folder, a path is taken as it is, and
``""`` trains from random initialisation. The weights folder is ``--dir``/``--out``, else
``$KZLIB_PRETRAINED``, else ``pretrained/`` in the working directory. Nothing is downloaded
anywhere else: ``fetch`` is the only step that needs the internet, and kernels on Kaggle find the
files in the kit's dataset.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kzlib.cli import EnvironmentProblem, one_line_errors, parser
from kzlib.io import file_sha256

MANIFEST = "manifest.json"
FETCH = "python -m kzlib.weights fetch"


class WeightsError(EnvironmentProblem):
    """A weight file that is missing, corrupt or of the wrong architecture."""


@dataclass(frozen=True)
class WeightSpec:
    arch: str      # the torchvision/timm architecture the file fits
    file: str      # file name in the weights folder
    library: str   # whose loader fetches it: torchvision or timm
    source: str    # the loader's name for it


SPECS = {s.arch: s for s in [
    *(WeightSpec(f"resnet{d}", f"resnet{d}_imagenet1k_v1.pth", "torchvision", "IMAGENET1K_V1")
      for d in (18, 34, 50, 101, 152)),
    WeightSpec("resnext101_32x8d", "resnext101_32x8d_wsl.pth", "timm", "resnext101_32x8d.fb_wsl_ig1b_ft_in1k"),
]}


def _torchvision_state(spec: WeightSpec) -> dict:
    import torchvision

    return torchvision.models.get_model_weights(spec.arch)[spec.source].get_state_dict(progress=True)


def _timm_state(spec: WeightSpec) -> dict:
    import timm

    return timm.create_model(spec.source, pretrained=True).state_dict()


# library -> function(spec) -> state dict; tests replace these with fakes (no network in tests)
LOADERS: dict[str, Callable[[WeightSpec], dict]] = {"torchvision": _torchvision_state, "timm": _timm_state}


def default_dir() -> Path:
    return Path(os.environ.get("KZLIB_PRETRAINED", "pretrained"))


def resolve(value: str, arch: str, weights_dir: Path | None = None) -> Path | None:
    """The file a config's ``pretrained`` value names (None: from scratch)."""
    if not value:
        return None
    folder = Path(weights_dir) if weights_dir is not None else default_dir()
    if value == "auto":
        if arch not in SPECS:
            raise WeightsError(f"no registered pretrained weights for {arch!r} (known: {', '.join(SPECS)}); "
                               "give pretrained as a file, or \"\" to train from scratch")
        return folder / SPECS[arch].file
    path = Path(value)
    if path.is_absolute() or path.exists() or len(path.parts) > 1:
        return path
    return folder / path


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: unreadable manifest ({e}); delete it and run `{FETCH}` again") from None


def status(path: Path) -> str:
    """``verified`` (SHA-256 matches the manifest beside it), ``present`` (no manifest entry),
    ``missing`` or ``corrupt``."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    entry = read_manifest(path.parent).get(path.name)
    if entry is None:
        return "present"
    return "verified" if entry.get("sha256") == file_sha256(path) and path.stat().st_size == entry.get("bytes") \
        else "corrupt"


def require(value: str, arch: str, weights_dir: Path | None = None, what: str = "") -> Path | None:
    """The resolved weight file, checked: missing or corrupt is one ``WeightsError`` line naming the
    file and the fetch command."""
    path = resolve(value, arch, weights_dir)
    if path is None:
        return None
    state = status(path)
    where = f"{what}: " if what else ""
    if state == "missing":
        raise WeightsError(f"{where}pretrained weights {path} not found; run `{FETCH} --out {path.parent}` once on a "
                           "machine with internet (or pass --allow-scratch to train from random weights)")
    if state == "corrupt":
        raise WeightsError(f"{where}pretrained weights {path} do not match their SHA-256 in {path.parent / MANIFEST}; "
                           f"delete the file and run `{FETCH} --out {path.parent}` again")
    return path


def load_state(path: Path) -> dict:
    """A plain state dict from a weight file (a checkpoint holding one under ``state_dict`` or
    ``model`` works too); ``module.`` prefixes are removed."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for damaged files
        raise WeightsError(f"{path}: not a readable weight file ({str(e).splitlines()[0][:200]}); delete it and "
                           f"run `{FETCH}` again") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fetch(out: Path, archs: Iterable[str], force: bool = False, log=print) -> list[dict]:
    """Download each architecture's weights through its library's loader into ``out``, as plain
    state-dict files, and record them in ``out/manifest.json``; files already verified are kept."""
    import torch

    from kzlib.io import atomic_path, write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    rows = []
    for arch in archs:
        if arch not in SPECS:
            raise WeightsError(f"no registered weights for {arch!r} (known: {', '.join(SPECS)})")
        spec = SPECS[arch]
        path = out / spec.file
        if not force and status(path) == "verified":
            log(f"{path}: present and verified")
            rows.append(manifest[spec.file])
            continue
        log(f"fetching {spec.library} {spec.arch} ({spec.source}) ...")
        try:
            state = LOADERS[spec.library](spec)
        except Exception as e:  # network, hub and cache errors of two libraries
            raise WeightsError(f"{spec.library} could not provide {spec.source} for {arch} "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                               "check the internet connection and retry") from None
        state = {k: v for k, v in state.items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        entry = {"file": spec.file, "arch": arch, "library": spec.library, "source": spec.source,
                 "sha256": file_sha256(path), "bytes": path.stat().st_size, "tensors": len(state)}
        manifest[spec.file] = entry
        write_json_atomic(manifest, out / MANIFEST)
        log(f"{path}: {entry['bytes'] / 2**20:.1f} MiB, sha256 {entry['sha256'][:16]}...")
        rows.append(entry)
    return rows


def preset_needs(cfg) -> list[tuple[str, str, str]]:
    """(stage, backbone, pretrained value) of every network a preset (``PipelineConfig``) trains
    from pretrained weights."""
    det = cfg.detect_config()
    out = [("detect", det.backbone, det.pretrained)]
    for kind in cfg.kinds:
        c = cfg.classify_config(kind)
        out.append((f"classify {kind}", c.backbone, c.pretrained))
    return [row for row in out if row[2]]


def check_preset(cfg, weights_dir: Path | None = None) -> list[Path]:
    """Every weight file the preset needs, checked (the first problem raises)."""
    return [require(value, arch, weights_dir, f"preset stage {stage} ({arch})")
            for stage, arch, value in preset_needs(cfg)]


def _presets(names: Sequence[str]):
    from kzlib.preset import load_preset, preset_path

    return [(n, load_preset(preset_path(n))) for n in names]


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib.weights", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the pretrained backbones the presets need (needs internet)")
    f.add_argument("--out", type=Path, help="weights folder (default $KZLIB_PRETRAINED or pretrained/)")
    f.add_argument("--preset", nargs="*", default=["full"], help="presets whose weights to fetch (default full)")
    f.add_argument("--arch", nargs="*", default=[], help=f"architectures to fetch as well ({', '.join(SPECS)})")
    f.add_argument("--all", action="store_true", help="every registered architecture")
    f.add_argument("--force", action="store_true", help="download again even when verified")
    ls = sub.add_parser("list", help="what each preset needs, and what is present and verified")
    ls.add_argument("--dir", type=Path, help="weights folder (default $KZLIB_PRETRAINED or pretrained/)")
    ls.add_argument("--preset", nargs="*", default=["full", "demo"])
    a = p.parse_args(argv)
    if a.cmd == "fetch":
        out = a.out or default_dir()
        archs = list(SPECS) if a.all else list(dict.fromkeys(
            [arch for _, cfg in _presets(a.preset) for _, arch, value in preset_needs(cfg) if value == "auto"]
            + a.arch))
        rows = fetch(out, archs, a.force)
        print(f"{len(rows)} weight file(s) in {out}, listed in {out / MANIFEST}")
        return 0
    folder = a.dir or default_dir()
    print(f"weights folder: {folder}")
    print(f"{'preset':<10} {'stage':<28} {'backbone':<18} {'file':<44} status")
    bad = 0
    for name, cfg in _presets(a.preset):
        needs = preset_needs(cfg)
        if not needs:
            print(f"{name:<10} (trains from scratch: no pretrained weights)")
        for stage, arch, value in needs:
            path = resolve(value, arch, folder)
            st = status(path)
            bad += st in ("missing", "corrupt")
            print(f"{name:<10} {stage:<28} {arch:<18} {str(path):<44} {st}")
    if bad:
        print(f"{bad} file(s) missing or corrupt: run `{FETCH}" + (f" --out {folder}`" if a.dir else "`"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pretrained backbones: the registry of the files the kit knows how to fetch, the libraries'
own loaders that fetch them, a manifest (SHA-256, source) beside them, and the checks a training
runs before it starts. It knows no preset: ``kzlib.preset`` asks it about the files a preset names,
and ``python -m kzlib weights fetch|list`` (``kzlib.weights_cli``) is the command line.

A config names its weights with ``pretrained``: ``"auto"`` is the file registered below for its
backbone, a bare file name is looked up in the weights folder (a registered file name fetches the
same way as ``"auto"``), a path is taken as it is, and ``""`` trains from random initialisation.
The weights folder is ``$KZLIB_PRETRAINED``, else ``pretrained/`` in the working directory, unless
a caller names one. Nothing is downloaded anywhere else: ``fetch`` is the only step that needs the
internet, and kernels on Kaggle find the files in the kit's dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from kzlib.errors import EnvironmentProblem
from kzlib.io import atomic_path, file_sha256, write_json_atomic

MANIFEST = "manifest.json"
FETCH = "python -m kzlib weights fetch"


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
BY_FILE = {s.file: s for s in SPECS.values()}


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


def spec_for(value: str, arch: str) -> WeightSpec | None:
    """The registered file a ``pretrained`` value names — ``"auto"`` or a registered file name,
    wherever it lies — or None when the kit cannot fetch it (a file of the user's own, or
    scratch). A registered file of another architecture than ``arch`` is a ``WeightsError``."""
    if not value:
        return None
    if value == "auto":
        resolve(value, arch)  # an unregistered architecture is one line
        return SPECS[arch]
    spec = BY_FILE.get(Path(value).name)
    if spec is not None and spec.arch != arch:
        raise WeightsError(f"pretrained {value!r} holds {spec.arch} weights, but the network is a {arch}; "
                           f"use \"auto\" or {SPECS[arch].file if arch in SPECS else 'a file of that architecture'}")
    return spec


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: unreadable manifest ({e}); delete it and run `{FETCH}` again") from None


def _state_or_error(path: Path) -> tuple[dict | None, str]:
    """(state dict, "") of a weight file, or (None, why it is not one)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds for damaged or foreign files
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return None, f"not a readable weight file ({first})"
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        return None, "holds no state dict"
    return state, ""


def status(path: Path) -> str:
    """``verified`` (its SHA-256 matches the manifest beside it), ``unverified`` (no manifest entry,
    but it loads as a state dict: a file of the user's own), ``corrupt`` (the SHA-256 differs, or it
    does not load) or ``missing``."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    entry = read_manifest(path.parent).get(path.name)
    if entry is None:
        return "unverified" if _state_or_error(path)[0] is not None else "corrupt"
    return "verified" if entry.get("sha256") == file_sha256(path) and path.stat().st_size == entry.get("bytes") \
        else "corrupt"


_IDENTITY: dict[tuple[str, float, int], dict] = {}


def identity(path: Path) -> dict:
    """What a training starts from, for a stage's fingerprint: the weight file's name and SHA-256
    (the manifest's, else computed once per file version)."""
    path = Path(path)
    if not path.is_file():
        return {"file": path.name, "sha256": "missing"}
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _IDENTITY:
        entry = read_manifest(path.parent).get(path.name) or {}
        _IDENTITY[key] = {"file": path.name, "sha256": entry.get("sha256") or file_sha256(path)}
    return _IDENTITY[key]


def require(value: str, arch: str, weights_dir: Path | None = None, what: str = "", fix: str = "") -> Path | None:
    """The resolved weight file, checked: missing or corrupt is one ``WeightsError`` line naming the
    file and the command that fixes it (``fix``, else the fetch command for the file's folder)."""
    path = resolve(value, arch, weights_dir)
    if path is None:
        return None
    state = status(path)
    where = f"{what}: " if what else ""
    fetchable = spec_for(value, arch) is not None
    fix = fix or (f"{FETCH} --out {path.parent}" if fetchable else "")
    if state == "missing":
        how = (f"run `{fix}` once on a machine with internet" if fix
               else f"put that file there yourself (kzlib can fetch only {', '.join(BY_FILE)})")
        raise WeightsError(f"{where}pretrained weights {path} not found; {how} (or pass --allow-scratch to train "
                           "from random weights)")
    if state == "corrupt":
        entry = read_manifest(path.parent).get(path.name)
        why = f"do not match their SHA-256 in {path.parent / MANIFEST}" if entry else _state_or_error(path)[1]
        again = f"; delete the file and run `{fix}` again" if fix else "; replace the file"
        raise WeightsError(f"{where}pretrained weights {path} {why}{again}")
    return path


def load_state(path: Path) -> dict:
    """A plain state dict from a weight file (a checkpoint holding one under ``state_dict`` or
    ``model`` works too); ``module.`` prefixes are removed."""
    state, why = _state_or_error(Path(path))
    if state is None:
        raise WeightsError(f"{path}: {why}; delete it and run `{FETCH}` again")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(module, path: Path, ignore: tuple[str, ...] = ("fc.",)) -> None:
    """Load a weight file into ``module`` by name and shape: every tensor of the module (but
    BatchNorm's batch counters and names starting with ``ignore``, e.g. a classifier head) must come
    from the file; tensors of the file the module lacks (a ResNet's layer4 and head in a truncated
    trunk) are left out. Anything missing is one ``WeightsError`` naming an example."""
    state = load_state(Path(path))
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked") and not k.startswith(ignore)]
    if missing:
        raise WeightsError(f"{path}: {len(missing)} of {len(own)} tensors of the network are missing from the file or "
                           f"of another shape (e.g. {missing[0]}); weights of another architecture?")
    module.load_state_dict(matched, strict=False)


def fetch(out: Path, archs: Iterable[str], force: bool = False, log=print) -> list[dict]:
    """Download each architecture's weights through its library's loader into ``out``, as plain
    state-dict files, and record them in ``out/manifest.json``; files already verified are kept."""
    import torch

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
        with atomic_path(path) as tmp:
            torch.save(dict(state), tmp)
        entry = {"file": spec.file, "arch": arch, "library": spec.library, "source": spec.source,
                 "sha256": file_sha256(path), "bytes": path.stat().st_size, "tensors": len(state)}
        manifest[spec.file] = entry
        write_json_atomic(manifest, out / MANIFEST)
        log(f"{path}: {entry['bytes'] / 2**20:.1f} MiB, sha256 {entry['sha256'][:16]}...")
        rows.append(entry)
    return rows

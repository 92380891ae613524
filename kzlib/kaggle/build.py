"""The Kaggle Dataset folder that kernels import kzlib from (``build_dataset.py``).

Layout of the folder (mounted on Kaggle at ``/kaggle/input/<dataset slug>``)::

    dataset-metadata.json      rendered from dataset-metadata.json at the repository's root (edit its title,
                               subtitle and description once; USER and SLUG are filled in), else from
                               the copy installed with the package
    kzlib/                     the package modules kernels import (source only; no caches)
    kzlib/configs/             the presets and stage configs
    weights/<name>/            trained runs: best.pth and config.json (``--weights``)
    pretrained/<file>          backbone weight files named by presets (``--preset``, ``--pretrained``),
                               with their entries of ``manifest.json`` (SHA-256) when the source has one
    wheels/*.whl               packages the Kaggle image lacks (``--wheels``), installed offline
    MANIFEST.tsv               every file with its size and SHA-256

Building twice from the same inputs gives the same files with the same bytes.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from kzlib.cli import one_line_errors, parser
from kzlib.io import file_sha256
from kzlib.errors import EnvironmentProblem
from kzlib.kaggle.api import CREDENTIALS, describe, http_status, is_transient, real_api, user_name
from kzlib.kaggle.plan import DATASET_SLUG, check_slug
from kzlib.preset import load_preset, preset_path
from kzlib.weights import FETCH, read_manifest, require

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "dataset-metadata.json"


def metadata_template() -> Path:
    """The dataset's metadata template: the repository's own (``dataset-metadata.json`` at its
    root, where a Kaggle user sets the title and description), else the packaged copy (an
    installed kit without a checkout)."""
    own = ROOT / "dataset-metadata.json"
    return own if own.is_file() else PACKAGED_TEMPLATE


class BuildError(RuntimeError):
    pass


def kaggle_config() -> dict:
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    path = folder / "kaggle.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BuildError(f"{path}: not valid JSON ({e})") from None
    return {}


def kaggle_user(user: str | None = None, api=None) -> str:
    """``user``, else ``KAGGLE_USERNAME``, else the username of ``~/.kaggle/kaggle.json``, else the
    account the Kaggle client authenticates as (an access token or ``kaggle auth login``)."""
    user = user or os.environ.get("KAGGLE_USERNAME") or kaggle_config().get("username")
    if not user:
        try:
            user = user_name(api or real_api())
        except EnvironmentProblem:
            user = None
    if not user:
        raise BuildError(f"no Kaggle user name: pass --user NAME, or {CREDENTIALS}")
    return user


def kernel_modules(root: Path = ROOT, entry: str = "kzlib.kaggle.session") -> list[Path]:
    """The kzlib source files a kernel can import: every ``kzlib`` module reachable from the
    kernel runtime through import statements (including imports inside functions), plus the
    ``__init__.py`` of each package on the way."""
    def path_of(module: str) -> Path | None:
        base = root.joinpath(*module.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    seen: set[Path] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # the packages above it run their __init__ first
            p = path_of(".".join(parts[:i]))
            if p is None or p in seen:
                continue
            seen.add(p)
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kzlib":
                    todo.append(node.module)
                    todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules imported by name
                elif isinstance(node, ast.Import):
                    todo += [a.name for a in node.names if a.name.split(".")[0] == "kzlib"]
    return sorted(seen)


def _sources(root: Path) -> list[tuple[Path, str]]:
    """(file, path in the dataset) of the kernels' kzlib modules and the configs, sorted."""
    files = [(p, p.relative_to(root).as_posix()) for p in kernel_modules(root)]
    files += [(p, p.relative_to(root).as_posix()) for p in sorted((root / "kzlib" / "configs").glob("*.json"))]
    return files

def _weights(run_dirs: Sequence[str]) -> list[tuple[Path, str]]:
    files, names = [], set()
    for item in run_dirs:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        run = Path(path)
        name = name or "-".join(run.resolve().parts[-2:])
        if not (run / "best.pth").is_file():
            raise BuildError(f"--weights {item}: {run / 'best.pth'} not found (a detector or classifier run folder)")
        if name in names:
            raise BuildError(f"--weights {item}: the name {name!r} is used twice; give NAME=RUN_DIR")
        names.add(name)
        files += [(run / f, f"weights/{name}/{f}") for f in ("best.pth", "config.json") if (run / f).is_file()]
    return files


KAGGLE_PYTHON = "3.12"  # Kaggle/docker-python's interpreter (its "Python 3.12 bump")
KAGGLE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def _wheels(items: Sequence[str], tmp: Path, python: str = KAGGLE_PYTHON) -> list[tuple[Path, str]]:
    """Wheel files given as paths are copied; other items are requirement specs that pip
    downloads for Kaggle's platform and Python (binary wheels only, without dependencies: list
    each package the image lacks), whatever machine builds the dataset."""
    files = []
    specs = [i for i in items if not i.endswith(".whl")]
    for item in items:
        if item.endswith(".whl"):
            if not Path(item).is_file():
                raise BuildError(f"--wheels {item}: file not found")
            files.append((Path(item), f"wheels/{Path(item).name}"))
    if specs:
        down = tmp / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--implementation", "cp", "--python-version", python,
               *[a for plat in KAGGLE_PLATFORMS for a in ("--platform", plat)], "-d", str(down), *specs]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise BuildError(f"--wheels: pip download failed for {' '.join(specs)} (Kaggle's platform, Python "
                             f"{python}): {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        files += [(p, f"wheels/{p.name}") for p in sorted(down.glob("*.whl"))]
    return files


def render_metadata(user: str, slug: str = DATASET_SLUG, template: Path | None = None) -> dict:
    template = template or metadata_template()
    meta = json.loads(template.read_text())
    meta["id"] = meta["id"].replace("USER", user).replace("SLUG", slug)
    owner, _, ds = meta["id"].partition("/")
    if owner != user or ds != slug:
        raise BuildError(f"{template}: id must be USER/SLUG (got {meta['id']!r})")
    if not 6 <= len(slug) <= 50:  # the kaggle CLI refuses other lengths
        raise BuildError(f"dataset slug {slug!r}: Kaggle needs 6-50 characters")
    check_slug(slug, "dataset")
    if not 6 <= len(meta.get("title", "")) <= 50 or len(meta.get("licenses", [])) != 1:
        raise BuildError(f"{template}: the kaggle CLI needs a 6-50 character title and exactly one licence")
    return meta


def preset_weights(presets: Sequence[str], weights_dir: Path | None = None) -> list[str]:
    """The weight files the named presets train from, checked (missing or corrupt: one line)."""
    files = []
    for name in presets:
        cfg = load_preset(preset_path(name))
        for n in cfg.weight_needs():
            path = require(n.value, n.arch, weights_dir, f"--preset {name}: stage {n.stage}",
                           f"{FETCH} --preset {name}" + (f" --out {weights_dir}" if weights_dir else ""))
            files.append(str(path))
    return list(dict.fromkeys(files))


def _pretrained_manifest(files: Sequence[str]) -> dict:
    """The weights manifests' entries of ``files`` (each file's own folder's manifest.json)."""
    out = {}
    for f in map(Path, files):
        entry = read_manifest(f.parent).get(f.name)
        if entry is not None:
            out[f.name] = entry
    return out


def build_dataset(out: Path, user: str, weights: Sequence[str] = (), pretrained: Sequence[str] = (),
                  wheels: Sequence[str] = (), slug: str = DATASET_SLUG, root: Path = ROOT,
                  python: str = KAGGLE_PYTHON) -> list[tuple[str, int]]:
    """Assemble the dataset folder at ``out`` (replaced whole); returns (path, size) of its files."""
    out = Path(out)
    meta = render_metadata(user, slug)
    for f in pretrained:
        if not Path(f).is_file():
            raise BuildError(f"--pretrained {f}: file not found")
    with tempfile.TemporaryDirectory(prefix="kzlib-dataset-") as t:
        tmp = Path(t)
        files = _sources(root) + _weights(weights) + [(Path(f), f"pretrained/{Path(f).name}") for f in pretrained]
        files += _wheels(wheels, tmp, python)
        seen: dict[str, Path] = {}
        for src, rel in files:
            if rel in seen and seen[rel].resolve() != src.resolve():
                raise BuildError(f"two inputs would both be {rel}: {seen[rel]} and {src}")
            seen[rel] = src
        stage = out.parent / f".{out.name}.building"
        if stage.exists():
            shutil.rmtree(stage)
        for rel, src in sorted(seen.items()):
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        (stage / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        manifest = _pretrained_manifest(pretrained)
        if manifest:
            (stage / "pretrained" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        listing = sorted((p.relative_to(stage).as_posix(), p.stat().st_size) for p in stage.rglob("*") if p.is_file())
        manifest = "".join(f"{rel}\t{size}\t{file_sha256(stage / rel)}\n" for rel, size in listing)
        (stage / "MANIFEST.tsv").write_text("path\tbytes\tsha256\n" + manifest)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in out.rglob("*") if p.is_file())


def push_command(out: Path, user: str, slug: str = DATASET_SLUG, exists: bool | None = None) -> list[list[str]]:
    """The kaggle CLI commands that upload the folder (printed for people who push by hand)."""
    create = ["kaggle", "datasets", "create", "-p", str(out), "-r", "zip"]
    version = ["kaggle", "datasets", "version", "-p", str(out), "-r", "zip", "-m", "kzlib build"]
    if exists is None:
        return [create, version]
    return [version if exists else create]


def push(out: Path, user: str, slug: str = DATASET_SLUG, api=None, wait: float = 600.0, poll: float = 10.0,
         log=print) -> None:
    """Create the dataset on Kaggle, or add a version when it exists (sub-folders zipped), through the
    Kaggle API, then wait until Kaggle has processed it (``datasets status``: ready; failed is one
    line). The client's errors are said as it says them; a transient one is asked again."""
    api = api or real_api()
    ref = f"{user}/{slug}"

    def status() -> str | None:
        """The dataset's status, None when it does not exist; transient failures asked again."""
        for attempt in range(5):
            try:
                return str(api.dataset_status(ref) or "").lower()
            except Exception as e:  # noqa: BLE001  (the client's errors)
                if http_status(e) == 404:
                    return None
                if not is_transient(e) or attempt == 4:
                    raise BuildError(f"--push: the status of {ref} cannot be read ({describe(e)})") from None
                time.sleep(poll * 2 ** attempt)
        return None

    exists = status() is not None
    log(f"{'adding a version to' if exists else 'creating'} the dataset {ref} from {out} ...")

    def version():
        return api.dataset_create_version(str(out), "kzlib build", dir_mode="zip", quiet=True)

    try:
        try:
            response = version() if exists else api.dataset_create_new(str(out), dir_mode="zip", quiet=True)
        except Exception as e:  # noqa: BLE001
            if exists or http_status(e) != 409:
                raise
            # it exists though its status was not found (Kaggle still processing its first version)
            log(f"{ref} exists already ({describe(e)}); adding a version to it ...")
            response = version()
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"--push: the Kaggle API refused the dataset ({describe(e)})") from None
    error = getattr(response, "error", "") or ""
    if error:
        raise BuildError(f"--push: the Kaggle API refused the dataset: {error}")
    deadline = time.time() + wait
    while time.time() < deadline:
        state = status() or ""
        if "ready" in state:
            log(f"{ref} is ready")
            return
        if "failed" in state or "error" in state or "deleted" in state:
            raise BuildError(f"--push: Kaggle could not process {ref} (status {state}); look at the dataset's page, "
                             "fix what it says and push again")
        time.sleep(poll)
    log(f"{ref} is still being processed; `kaggle datasets status {ref}` says when it is ready")


CLI_DOC = """Build the Kaggle Dataset that the kzlib kernels import: kzlib source, presets, trained weights,
pretrained backbone files and (optionally) wheels, plus dataset-metadata.json.

  kzlib dataset [--user NAME] [--preset full] [--weights [NAME=]RUN_DIR ...] [--pretrained FILE ...]
                [--wheels SPEC_OR_WHL ...] [--out build/dataset] [--slug kzlib-kit] [--push]

Then `kaggle datasets create -p build/dataset -r zip` (first time) or
`kaggle datasets version -p build/dataset -r zip -m MESSAGE`; --push runs the right one.
"""


@one_line_errors(BuildError, code=2)
def main(argv=None) -> int:
    p = parser("kzlib dataset", CLI_DOC)
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
    p.add_argument("--out", type=Path, default=Path("build") / "dataset")
    p.add_argument("--slug", default=DATASET_SLUG, help="dataset slug; kernels find kzlib at /kaggle/input/SLUG")
    p.add_argument("--push", action="store_true", help="create or version the dataset through the Kaggle API")
    p.add_argument("--kaggle-python", default=KAGGLE_PYTHON, help="Python version of the Kaggle image (for --wheels)")
    a = p.parse_args(argv)
    user = kaggle_user(a.user)
    pretrained = preset_weights(a.preset, a.pretrained_dir) + list(a.pretrained)
    files = build_dataset(a.out, user, a.weights, pretrained, a.wheels, a.slug, python=a.kaggle_python)
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



"""The competition data, downloaded through the Kaggle API and unpacked into the Kaggle layout.

    python -m kzlib kaggle download DATA_DIR [--keep-archive]

The download is one archive holding ``train.csv``, ``unicode_translation.csv``,
``sample_submission.csv`` and two more archives, ``train_images.zip`` and ``test_images.zip``;
they are unpacked into ``train_images/`` and ``test_images/``, then the folder is checked
(``python -m kzlib data check``). Running it again skips what is already there.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from kzlib.data import check_dataset
from kzlib.errors import DataError, EnvironmentProblem
from kzlib.io import ensure_writable
from kzlib.kaggle.api import real_api

COMPETITION = "kuzushiji-recognition"
RULES = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"


def fetch(out: Path, api, competition: str = COMPETITION, log=print) -> Path:
    """The competition's archive in ``out`` (downloaded unless it is there)."""
    archive = out / f"{competition}.zip"
    if archive.is_file() and zipfile.is_zipfile(archive):
        log(f"{archive}: already downloaded")
        return archive
    log(f"downloading {competition} into {out} (several GB) ...")
    try:
        api.competition_download_files(competition, path=str(out), quiet=False)
    except Exception as e:  # the SDK raises requests' HTTPError, or its own errors
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code == 403:
            raise EnvironmentProblem(f"Kaggle refused the download (403): accept the competition's rules at {RULES} "
                                     "with the account of your API token, then run this again") from None
        if code == 401:
            raise EnvironmentProblem("Kaggle refused the credentials (401): get a new API token at "
                                     "https://www.kaggle.com/settings/api") from None
        if code == 404:
            raise EnvironmentProblem(f"no competition {competition!r} on Kaggle (404)") from None
        raise EnvironmentProblem(f"the download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                                 "; check the connection and run this again (it resumes)") from None
    if not archive.is_file() or not zipfile.is_zipfile(archive):
        raise DataError(f"{archive}: the download did not leave a zip archive; delete it and run this again")
    return archive


def _extract_images(inner: zipfile.ZipFile, folder: Path, source: str) -> int:
    """The images of an inner archive into ``folder`` (flat), through a temporary folder."""
    tmp = folder.with_name(f".{folder.name}.unpacking")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = 0
    for member in inner.infolist():
        name = Path(member.filename).name
        if member.is_dir() or not name.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        with inner.open(member) as src, open(tmp / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        n += 1
    if n == 0:
        shutil.rmtree(tmp)
        raise DataError(f"{source}: no images inside")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return n


def unpack(archive: Path, out: Path, log=print) -> dict:
    """The archive's CSV files into ``out`` and its image archives into ``out/<name>/``."""
    counts = {}
    with zipfile.ZipFile(archive) as outer:
        names = {Path(m).name: m for m in outer.namelist()}
        for csv in ("train.csv", "unicode_translation.csv", "sample_submission.csv"):
            if csv not in names:
                raise DataError(f"{archive}: {csv} is missing from the archive")
            if not (out / csv).is_file():
                with outer.open(names[csv]) as src, open(out / csv, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        for folder in ("train_images", "test_images"):
            if (out / folder).is_dir() and any((out / folder).iterdir()):
                log(f"{out / folder}: already unpacked")
                continue
            if f"{folder}.zip" in names:
                with outer.open(names[f"{folder}.zip"]) as raw, zipfile.ZipFile(raw) as inner:
                    counts[folder] = _extract_images(inner, out / folder, f"{archive}:{folder}.zip")
            else:  # some mirrors hold the images directly in a folder
                members = [m for m in outer.namelist() if m.startswith(f"{folder}/") and not m.endswith("/")]
                if not members:
                    raise DataError(f"{archive}: neither {folder}.zip nor {folder}/ is in the archive")
                counts[folder] = _extract_images(outer, out / folder, f"{archive}:{folder}/")
            log(f"{out / folder}: {counts[folder]} images")
    return counts


def download(out: Path, api=None, keep_archive: bool = False, log=print):
    """Download, unpack and check; returns the check report."""
    out = ensure_writable(out, "data folder")
    if api is None:
        api = real_api()
    archive = fetch(out, api, log=log)
    unpack(archive, out, log=log)
    if not keep_archive:
        archive.unlink()
    return check_dataset(out, progress=False)

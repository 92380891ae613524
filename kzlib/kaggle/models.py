"""Trained bundles (``kzlib export``) as Kaggle Models: a model, a PyTorch variation of it, and a new
version of the variation each time a bundle is published.

    kzlib export WORK --out BUNDLE
    kzlib kaggle publish BUNDLE --model OWNER/MODEL/pytorch/VARIATION

The bundle's folders are uploaded zipped and Kaggle unpacks them; a kernel attaches the version
through ``model_sources`` (``kzlib kaggle render --read-model OWNER/MODEL/pytorch/VARIATION/N``) and
``kzlib read --model`` takes the folder Kaggle mounts (/kaggle/input/models/OWNER/MODEL/pytorch/
VARIATION/N).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from kzlib.errors import EnvironmentProblem, UsageError
from kzlib.io import write_json_atomic
from kzlib.kaggle import api as kaggle_api

HANDLE = re.compile(r"^([A-Za-z0-9_-]+)/([a-z0-9-]+)/(pytorch)/([a-z0-9-]+)$")


def parse_handle(handle: str) -> tuple[str, str, str, str]:
    m = HANDLE.match(handle or "")
    if not m:
        raise UsageError(f"--model {handle!r}: give OWNER/MODEL/pytorch/VARIATION (lowercase letters, digits "
                         "and hyphens)")
    return m.groups()


def metadata(bundle: Path, owner: str, model: str, framework: str, variation: str) -> None:
    """``model-metadata.json`` and ``model-instance-metadata.json`` beside the bundle's manifest
    (what the client reads; the manifest does not list them, so the bundle stays verifiable)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    kinds = ", ".join(manifest["classifiers"])
    write_json_atomic({"ownerSlug": owner, "slug": model, "title": f"kzlib {model}"[:50], "isPrivate": True,
                       "subtitle": "Kuzushiji recognition: detector, classifiers, level 2",
                       "description": "A model bundle of the kzlib kit (kzlib export): read pages with `kzlib read "
                                      "PAGES --model THIS_FOLDER --out OUT`."}, bundle / "model-metadata.json")
    write_json_atomic({"ownerSlug": owner, "modelSlug": model, "instanceSlug": variation, "framework": framework,
                       "licenseName": "CC BY-SA 4.0",
                       "overview": f"{len(manifest['detectors'])} detector(s), classifiers {kinds}, level 2 "
                                   f"{'yes' if manifest.get('level2') else 'no'}; kzlib {manifest['kit_version']}, "
                                   f"torch {manifest['torch']}",
                       "usage": "kzlib read PAGES --model /kaggle/input/models/OWNER/MODEL/pytorch/VARIATION/VERSION "
                                "--out OUT"}, bundle / "model-instance-metadata.json")


def publish(bundle: Path, handle: str, api=None, notes: str = "", log=print, wait: float = 900.0,
            poll: float = 2.0) -> str:
    """Publish ``bundle`` as a new version of the Kaggle Model variation ``handle`` (the model and
    the variation are made when missing); returns OWNER/MODEL/pytorch/VARIATION/VERSION once Kaggle
    lists that version (a new version is processed after the upload; at most ``wait`` seconds)."""
    owner, model, framework, variation = parse_handle(handle)
    bundle = Path(bundle)
    metadata(bundle, owner, model, framework, variation)
    api = api or kaggle_api.real_api()

    def call(what: str, fn, *args, **kwargs):
        try:
            response = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  (the client's errors, said as it says them)
            raise EnvironmentProblem(f"Kaggle Models: {what} failed ({kaggle_api.describe(e)})") from None
        error = getattr(response, "error", None)
        if error:
            raise EnvironmentProblem(f"Kaggle Models: {what} refused: {error}")
        return response

    def exists(fn, ref: str) -> bool:
        try:
            fn(ref)
            return True
        except Exception as e:  # noqa: BLE001
            if kaggle_api.http_status(e) == 404:
                return False
            raise EnvironmentProblem(f"Kaggle Models: {ref} cannot be read ({kaggle_api.describe(e)})") from None

    if not exists(api.model_get, f"{owner}/{model}"):
        log(f"creating the model {owner}/{model}")
        call("creating the model", api.model_create_new, str(bundle))
    before = 0
    if exists(api.model_instance_get, handle):
        before = call("reading the variation", api.model_instance_get, handle).version_number or 0
        log(f"adding a version to {handle}")
        call("the new version", api.model_instance_version_create, handle, str(bundle), notes or "kzlib export",
             quiet=True, dir_mode="zip")
    else:
        log(f"creating the variation {handle}")
        call("creating the variation", api.model_instance_create, str(bundle), quiet=True, dir_mode="zip")
    deadline, number = time.time() + wait, before
    while number <= before:  # Kaggle lists the new version once it has processed the upload
        if exists(api.model_instance_get, handle):
            number = call("reading the variation back", api.model_instance_get, handle).version_number or 0
        if number > before:
            break
        if time.time() > deadline:
            raise EnvironmentProblem(f"Kaggle Models: {handle} still lists version {before or 'none'} {wait:.0f} s after "
                                     "the upload; look at the model's page, then run again")
        time.sleep(poll)
    version = f"{handle}/{number}"
    log(f"published {bundle} as {version}; a kernel attaches it with model_sources [{version!r}] "
        f"(kzlib kaggle render --read-model {version})")
    return version

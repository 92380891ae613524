import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # official_metric reference
FIXTURE = ROOT / "tests" / "fixtures" / "tiny"
# The CEO's real sample beside the checkout (../shared); tests using it skip when it is absent.
SAMPLE = Path(os.environ.get("KZ_SAMPLE_DIR", ROOT.parent / "shared" / "data" / "kuzushiji-sample"))


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A writable copy of the tiny fixture dataset (6 train pages of 3 books, 2 test pages)."""
    dst = tmp_path / "tiny"
    shutil.copytree(FIXTURE, dst)
    return dst


@pytest.fixture
def sample() -> Path:
    if not (SAMPLE / "train.csv").exists():
        pytest.skip(f"real sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished two-fold run of one small kind on the tiny pages (level 2 included): (data, work)."""
    from kzlib.pipeline import Pipeline
    from kzlib.preset import load_preset

    tmp = tmp_path_factory.mktemp("run")
    preset = json.loads((ROOT / "tests" / "fixtures" / "preset_tiny.json").read_text())
    preset.update(n_folds=2, pseudo_kind="", kinds={"a": preset["kinds"]["a"]})
    (tmp / "preset.json").write_text(json.dumps(preset))
    data = tmp / "data"
    shutil.copytree(FIXTURE, data)
    work = tmp / "work"
    Pipeline(data, work, load_preset(tmp / "preset.json")).run(log=lambda *_: None)
    assert (work / "submission.csv").is_file()
    return data, work

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

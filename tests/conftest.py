import os
import shutil
import sys
from pathlib import Path

import pytest

# One OpenMP thread per test process: `make test` runs 2 xdist workers on 2 cores, and most tests
# start more processes (runners, kernels, torchrun); with torch's default of one thread per core the
# processes outnumber the cores and torch's spinning threads wait for each other (measured: the suite
# took 478 s with the default and 309 s with one thread). Set before anything imports torch; the
# processes the tests start inherit it. A value of one's own is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # official_metric reference, helpers
from helpers import tiny_detect, tiny_preset, write_preset  # noqa: E402
FIXTURE = ROOT / "tests" / "fixtures" / "tiny"
# The CEO's real sample beside the checkout (../shared); tests using it skip when it is absent.
SAMPLE = Path(os.environ.get("KZ_SAMPLE_DIR", ROOT.parent / "shared" / "data" / "kuzushiji-sample"))


# What `make test` runs a second time under the Kaggle image's versions (.venv-kaggle/, made from
# requirements.txt with requirements-kaggle.txt's overrides: torch 2.10, torchvision 0.25 ...), as
# `pytest -m kaggle_image`: the tiny chain (`finished_run`) with a bundle exported from it and read,
# the kernels' bootstrap and session, fp16 training with the out-of-memory fallback, the device
# checks and the one NCCL. Under `-m kaggle_image` a name here that names no test is an error.
KAGGLE_IMAGE = (
    "test_read.py::test_bundle_has_every_part_with_hashes",
    "test_read.py::test_read_without_level2_gives_the_runners_blend",
    "test_read.py::test_a_tampered_or_foreign_bundle_is_refused",
    "test_kaggle.py::test_a_kernel_says_what_is_mounted_when_an_input_is_missing",
    "test_devices.py::test_a_kaggle_training_kernel_on_such_a_gpu_stops_in_one_line",
    "test_devices.py::test_a_gpu_the_build_cannot_run_is_one_line_and_auto_falls_back_to_the_cpu",
    "test_precision.py::test_classifier_fp16_with_an_injected_oom_then_resumed_on_another_precision",
    "test_precision.py::test_detector_fp16_two_epochs_with_an_injected_oom",
    "test_packaging.py::test_one_nccl_library_and_it_is_for_torchs_cuda_major",
)


def pytest_collection_modifyitems(config, items):
    found = set()
    for item in items:
        name = f"{Path(str(item.fspath)).name}::{item.originalname}"
        if name in KAGGLE_IMAGE:
            item.add_marker(pytest.mark.kaggle_image)
            found.add(name)
    files = {Path(str(item.fspath)).name for item in items}
    missing = [n for n in KAGGLE_IMAGE if n.split("::")[0] in files and n not in found]
    if missing and "kaggle_image" in (config.getoption("markexpr") or ""):  # whole files collected
        raise pytest.UsageError(f"tests/conftest.py KAGGLE_IMAGE names tests that do not exist: {', '.join(missing)}")


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
    write_preset(tmp / "preset.json", n_folds=2, pseudo_kind="", kinds={"a": tiny_preset()["kinds"]["a"]})
    data = tmp / "data"
    shutil.copytree(FIXTURE, data)
    work = tmp / "work"
    Pipeline(data, work, load_preset(tmp / "preset.json")).run(log=lambda *_: None)
    assert (work / "submission.csv").is_file()
    return data, work


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> tuple[Path, Path]:
    """A detector trained for two epochs on fold 0 of the tiny pages (``helpers.tiny_detect(epochs=2)``),
    once per session for the tests that compare with or start from one: (data, run folder). Read it;
    copy before changing."""
    from kzlib.detect.train import train

    tmp = tmp_path_factory.mktemp("detector")
    data = tmp / "data"
    shutil.copytree(FIXTURE, data)
    train(data, tmp / "run", tiny_detect(epochs=2), fold=0)
    return data, tmp / "run"

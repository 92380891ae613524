#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.py needs on a GPU machine without network (the device tool's
# H200: Python 3.12, torch 2.11, torchvision 0.26, timm, opencv, pandas ... preinstalled): wheels of
# the packages its image lacks, and the demo's data (part E), in .gpu/ (git-ignored, 64 MiB at most).
# Then run, on that machine, the command this script prints last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels
# albumentations and what it needs beyond the image; LightGBM and XGBoost (CPU build) for level 2
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .gpu/wheels \
    albumentations==2.0.8 albucore==0.0.24 stringzilla simsimd pydantic==2.11.7 pydantic-core==2.33.2 \
    annotated-types typing-inspection==0.4.1 typing-extensions lightgbm==4.7.0 xgboost-cpu==3.2.0
"$PY" -m kzlib synth .gpu/demo --books 4 --pages-per-book 12 --test-pages 5 --classes 200 --height 1200 --seed 3 --workers 2
du -sh .gpu/wheels .gpu/demo
cat <<'CMD'
device run, carry [".gpu"], timeout_s 480 (gpu_check.py keeps within --minutes 7; the install takes ~20 s):
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --out $OUT --demo-data .gpu/demo --minutes 7
CMD

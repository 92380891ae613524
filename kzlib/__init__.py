"""kzlib: a kit for Kuzushiji recognition (detector, classifier, pseudolabels, level-2 stacking).

Modules are imported explicitly (``from kzlib import data``); nothing is read at import time.
"""

import os

__version__ = "0.2.0"

# albumentations asks PyPI for its latest version on import: a network call (and a warning
# offline, as on Kaggle kernels) that the kit never needs.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

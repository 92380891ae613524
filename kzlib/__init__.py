"""kzlib: a kit for Kuzushiji recognition (detector, classifier, pseudolabels, level-2 stacking).

Modules are imported explicitly (``from kzlib import data``); nothing is read at import time.
"""

__version__ = "0.1.0"

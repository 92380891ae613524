#!/usr/bin/env python
"""Build the Kaggle Dataset that the kzlib kernels import (``kzlib dataset``); see
``python build_dataset.py --help``."""

import sys

from kzlib.kaggle.build import main

if __name__ == "__main__":
    sys.exit(main())

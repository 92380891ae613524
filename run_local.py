#!/usr/bin/env python
"""Run the whole chain on one machine (``kzlib run``); see ``python run_local.py --help``."""

import sys

from kzlib.run import main

if __name__ == "__main__":
    sys.exit(main())

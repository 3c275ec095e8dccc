"""Full benchmark run that saves results under bench/results/ (see ``numbaconv bench --help``).

Usage: ``python bench/run.py [--quick] [--sets resnet50 vgg16] [--batch 1 32]``. Run from the
repository root; numbaconv must be installed (``pip install -e .``).
"""

import os
import sys

from numbaconv.__main__ import main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(["bench", "--out", os.path.join(here, "results")] + sys.argv[1:]))

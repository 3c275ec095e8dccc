"""Full benchmark run that saves results under bench/results/ (see ``numbaconv bench --help``).

Usage: ``python bench/run.py [--quick] [--only conv scaling elementwise e2e memory startup]
[--sets resnet50 vgg16] [--batches 1 32] [--fresh]``. Run from the repository root; numbaconv must
be installed (``pip install -e .``; ``pip install -e .[bench]`` adds matplotlib for the plot).
Results go to ``bench/results/cpu.json``, ``cpu.md`` and ``cpu.png`` (``cpu-quick.*`` with
``--quick``), merged row by row with an earlier run on the same machine unless ``--fresh``.
"""

import os
import sys

from numbaconv.__main__ import main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(["bench", "--out", os.path.join(here, "results")] + sys.argv[1:]))

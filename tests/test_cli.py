"""The command line: ``python -m numbaconv info|bench|demo`` and the demo's model-zoo run."""

import subprocess
import sys

import numpy as np
import pytest

from numbaconv import demo
from numbaconv.__main__ import main


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["bench", "--help"],
                                  ["demo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: numbaconv" in capsys.readouterr().out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--models", "alexnet"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "numbaconv", "--device", "cpu", "info"],
                         capture_output=True, text=True, check=True).stdout
    for word in ("numbaconv", "numba", "numpy", "device", "threads", "simd", "cache"):
        assert word in out, out


def test_digits_upscaled_for_the_zoo():
    x, y = demo.digits_as(3, 64)
    assert x.shape == (len(y), 3, 64, 64) and x.dtype == np.float32
    assert x.flags.c_contiguous and 0 <= x.min() and x.max() <= 1
    small, _ = demo.digits_as(1, 8)
    assert np.array_equal(x[:, 0, ::8, ::8], small[:, 0])  # repetition, not interpolation


def test_demo_runs_and_reports(capsys):
    assert main(["--device", "cpu", "demo", "--models", "lenet5", "--rounds", "1",
                 "--batch", "100"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "img/s" in out
    rows = demo.run(["lenet5"], batch=359, rounds=1)
    assert rows[0]["images"] == 359 and rows[0]["images_per_s"] > 0
    with pytest.raises(ValueError, match="unknown model"):
        demo.run(["alexnet"])

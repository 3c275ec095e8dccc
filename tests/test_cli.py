"""The command line: ``python -m numbaconv info|bench|demo``, the training demo and the zoo run."""

import json
import subprocess
import sys
from xml.etree import ElementTree

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


def test_every_public_module_after_a_plain_import():
    # nc.datasets was an AttributeError until something else had imported it.
    code = ("import numbaconv as nc; x, y = nc.datasets.load_digits('test'); "
            "print(x.shape[0] == len(y) > 0, sorted(set(nc.__all__) - set(dir(nc))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "[]"], out


def test_digits_upscaled_for_the_zoo():
    x, y = demo.digits_as(3, 64)
    assert x.shape == (len(y), 3, 64, 64) and x.dtype == np.float32
    assert x.flags.c_contiguous and 0 <= x.min() and x.max() <= 1
    small, _ = demo.digits_as(1, 8)
    assert np.array_equal(x[:, 0, ::8, ::8], small[:, 0])  # repetition, not interpolation


def test_shifted_moves_each_digit_by_at_most_a_pixel():
    x, _ = demo.datasets.load_digits("test")
    s = demo.shifted(x, np.random.default_rng(0))
    assert s.shape == x.shape and s.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(0, len(x), 37):  # each is one of the nine one-pixel windows of the padding
        assert any(np.array_equal(s[i, 0], padded[i, 0, dy:dy + 8, dx:dx + 8])
                   for dy in range(3) for dx in range(3)), i


def test_demo_trains_lenet_to_97_percent(tmp_path, capsys):
    """The README's main job, as a user runs it (default settings): held-out accuracy >= 97%,
    and the history and plot are saved."""
    assert main(["--device", "cpu", "demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "images/s" in out
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 30 and history["device"] == "cpu"
    assert history["test_accuracy"][-1] >= 0.97, history["test_accuracy"]
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    svg = ElementTree.parse(tmp_path / "training.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2


def test_demo_rejects_bad_settings(capsys):
    with pytest.raises(ValueError, match="positive"):
        demo.train(epochs=0)
    with pytest.raises(ValueError, match="learning rate"):
        demo.train(epochs=1, lr=0.0)
    with pytest.raises(SystemExit):
        main(["demo", "--models", "lenet5"])  # --models is for --zoo
    assert "--models needs --zoo" in capsys.readouterr().err


def test_demo_zoo_runs_and_reports(capsys):
    assert main(["--device", "cpu", "demo", "--zoo", "--models", "lenet5", "--rounds", "1",
                 "--batch", "100"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "img/s" in out
    rows = demo.run_zoo(["lenet5"], batch=359, rounds=1)
    assert rows[0]["images"] == 359 and rows[0]["images_per_s"] > 0
    with pytest.raises(ValueError, match="unknown model"):
        demo.run_zoo(["alexnet"])

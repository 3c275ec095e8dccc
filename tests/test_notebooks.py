"""The notebooks in notebooks/ run top to bottom without an error, on the CPU.

Each notebook is executed with nbclient in a fresh Jupyter kernel running this interpreter, from
the notebooks/ folder (where Jupyter starts them), with ``NUMBACONV_DEVICE=cpu`` and matplotlib's
non-interactive Agg backend. The quickstart's CPU-vs-CUDA cell checks the two backends itself
where CUDA is available. The tests are not named after CUDA, so the CUDA-simulator pass of CI
(``-k cuda``) leaves them out.

Needs nbclient, nbformat, ipykernel and matplotlib, all in the ``test`` extra: without one of
them the tests fail (saying what to install) rather than skip, so CI cannot pass without having
run the notebooks.
"""

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import DEVICES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "numbaconv-test-python"
# Per cell: generous, because a cold kernel cache compiles on a small, busy machine.
CELL_TIMEOUT_S = 900

_MISSING = [m for m in ("nbclient", "nbformat", "ipykernel", "matplotlib")
            if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif("cpu" not in DEVICES, reason="the notebooks run on the CPU, and "
                       "NUMBACONV_TEST_DEVICES leaves 'cpu' out"),
]


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """``run(name, **env)`` executes notebooks/<name> and returns its text output (stdout and
    Markdown), failing the test on any cell error."""
    # A kernel spec of our own that starts this interpreter, found first through JUPYTER_PATH,
    # so that no "python3" kernel installed elsewhere on the machine is picked up.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "numbaconv tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # No platformdirs migration warning from jupyter_core (warnings are errors in this suite).
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")

    if _MISSING:
        pytest.fail(f"the notebook tests need {', '.join(_MISSING)}: pip install -e '.[test]'")

    def run(name, **env):
        import nbformat
        from nbclient import NotebookClient

        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        kernel_env = {k: v for k, v in os.environ.items() if k != "NUMBACONV_BENCH_RESULTS"}
        kernel_env.update(NUMBACONV_DEVICE="cpu", MPLBACKEND="Agg",
                          PYTHONPATH=os.pathsep.join(
                              [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                          IPYTHONDIR=str(tmp_path / "ipython"), **env)
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                startup_timeout=120, allow_errors=False,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute(env=kernel_env)  # raises CellExecutionError, with the cell, on an error
        text = []
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    text.append(out["text"])
                text.append(out.get("data", {}).get("text/markdown", ""))
        return "".join(text)

    return run


def test_quickstart_notebook(run_notebook):
    text = run_notebook("01_quickstart.ipynb")
    assert "current device: cpu" in text
    assert "same outputs after loading: True" in text


def test_sequences_notebook(run_notebook):
    text = run_notebook("03_sequences.ipynb")
    assert "loss decreased: True" in text
    assert "output past each item's end is zero: [True, True, True]" in text
    assert "h_n of item 2 = state after its 10 steps: True" in text


def test_benchmarks_notebook(run_notebook):
    """With the repository's bench/results/, whatever it holds now."""
    run_notebook("02_benchmarks.ipynb")


def test_distributed_notebook(run_notebook):
    """Batch, spatial and channel partitioning on a 2-process LocalCluster (needs dask)."""
    text = run_notebook("04_distributed.ipynb")
    for part in ("batch", "spatial ops", "predict_tiled", "channel split"):
        assert f"{part}: equal to one machine: True" in text, part


# ---- the benchmarks notebook on results folders that hold only some of the sections ----------

def _conv_row(layer, kind, batch, ms, peers):
    gflop = 0.2 * batch
    row = {"layer": layer, "set": layer.split(".")[0], "kind": kind, "batch": batch,
           "dtype": "float32", "device": "x", "threads": 2, "gflop": gflop,
           "max_rel_err": 1e-7, "numbaconv_ms": ms, "numbaconv_gflops": gflop / ms * 1e3}
    for i, peer in enumerate(peers):
        row[f"{peer}_ms"] = ms * (1.2 + i)
        row[f"{peer}_gflops"] = gflop / (ms * (1.2 + i)) * 1e3
    return row


def _partial_results(folder):
    """A conv-only CPU run without PyTorch at batch 1, a GPU run with conv (cuDNN peers) and
    memory-bound ops, a quick run next to the full one, and two files that are not results."""
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "simd_lanes_f32": 16,
               "numba": "0", "numpy": "0", "python": "3"}
    runs = [{"when": "2026-01-01T00:00:00", "args": "bench --only conv", "sections": ["conv"]}]
    cpu = {"machine": machine, "device": "cpu", "quick": False, "runs": runs,
           "conv": [_conv_row("resnet50.3x3.56", "dense", 1, 1.0, []),
                    _conv_row("mobilenetv2.dw3x3.56.144", "depthwise", 1, 0.5, [])]}
    gpu = {"machine": dict(machine, gpu="Test GPU"), "device": "cuda", "quick": False,
           "runs": runs, "sgemm_gflops": 1000.0,
           "conv": [_conv_row("resnet50.3x3.56", "dense", b, 0.1, ["cudnn", "cudnn_tf32"])
                    for b in (1, 32)],
           "elementwise": [{"op": "relu", "shape": [4, 8, 8, 8], "dtype": "float32",
                            "numbaconv_gbs": 500.0}]}
    quick = dict(copy.deepcopy(cpu), quick=True, e2e=[
        {"net": "resnet18", "batch": 1, "image": 224, "threads": 2, "numbaconv_ms": 20.0,
         "numbaconv_images_per_s": 50.0}])
    # Other benchmarks' results share the folder (machine dict and all) and are not read.
    other = {"machine": machine, "runs": {"spatial": []}}
    for name, data in (("cpu.json", cpu), ("gpu.json", gpu), ("cpu-quick.json", quick),
                       ("train.json", other)):
        (folder / name).write_text(json.dumps(data))
    (folder / "gpu-quick.json").write_text("{")


def test_benchmarks_notebook_partial_results(run_notebook, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    _partial_results(folder)
    text = run_notebook("02_benchmarks.ipynb", NUMBACONV_BENCH_RESULTS=str(folder))
    for expected in ("skipping gpu-quick.json", "cpu-quick.json", "no end-to-end results",
                     "no thread-scaling results", "Test GPU"):
        assert expected in text, expected
    assert "train.json" not in text


def test_benchmarks_notebook_no_results(run_notebook, tmp_path):
    text = run_notebook("02_benchmarks.ipynb", NUMBACONV_BENCH_RESULTS=str(tmp_path / "absent"))
    assert "No benchmark results found" in text

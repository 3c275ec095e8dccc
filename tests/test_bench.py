"""The benchmark (numbaconv.bench): every section on tiny shapes, the files it writes, and that a
wrong result is refused before anything is timed. Timings themselves are not tested."""

import json

import numpy as np
import pytest

from numbaconv import _benchnets as nets
from numbaconv import bench
from numbaconv import functional as F

try:
    import torch
except ImportError:  # the benchmark runs without PyTorch, with fewer columns
    torch = None

WITH_TORCH = torch is not None
TINY = [("resnet50.tiny3x3", 4, 8, 9, 3, 1, 1, 1), ("vgg16.tiny3x3s2", 3, 8, 10, 3, 2, 1, 1),
        ("mobilenetv2.tinydw", 8, 8, 9, 3, 1, 1, 8), ("mobilenetv2.tinypw", 8, 16, 7, 1, 1, 0, 1)]
BUDGET = 0.005


def _quiet(*args):
    pass


@pytest.fixture(scope="module")
def conv_rows():
    return bench.run_conv(TINY, 2, with_torch=WITH_TORCH, budget=BUDGET, progress=_quiet)


def test_conv_rows(conv_rows):
    assert [r["layer"] for r in conv_rows] == [la[0] for la in TINY]
    assert [r["kind"] for r in conv_rows] == ["dense", "dense", "depthwise", "dense"]
    for r in conv_rows:
        assert r["batch"] == 2 and r["max_rel_err"] < bench.CONV_RTOL
        assert r["numbaconv_ms"] > 0 and r["numbaconv_gflops"] > 0
        assert r["steady_alloc_bytes"] >= 0
        assert ("torch_ms" in r) == WITH_TORCH


def test_conv_check_refuses_a_wrong_result(monkeypatch):
    right = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: right(*a, **k) * 1.001)
    with pytest.raises(bench.BenchCheckError, match="resnet50.tiny3x3"):
        bench.run_conv(TINY[:1], 1, with_torch=False, budget=BUDGET, progress=_quiet)


def test_scaling_rows():
    rows = bench.run_scaling(TINY[:1], 1, with_torch=WITH_TORCH, budget=BUDGET, progress=_quiet)
    (r,) = rows
    n = r["threads"]
    assert r["numbaconv_speedup"] == pytest.approx(r["numbaconv_1t_ms"] / r[f"numbaconv_{n}t_ms"])
    assert ("torch_speedup" in r) == WITH_TORCH
    assert r["method"] == "each library alone in a fresh process"
    (same,) = bench.run_scaling(TINY[:1], 1, with_torch=False, budget=BUDGET, progress=_quiet,
                                alone=False)  # in this process
    assert same["numbaconv_speedup"] > 0 and "torch_speedup" not in same


def test_elementwise_rows():
    rows, ceiling = bench.run_elementwise((1, 4, 8, 8), with_torch=WITH_TORCH, budget=BUDGET,
                                          progress=_quiet)
    names = [r["op"].split()[0] for r in rows]
    assert set(names) == {"relu", "relu6", "leaky_relu", "sigmoid", "tanh", "silu", "gelu",
                          "gelu_tanh", "hardswish", "batch_norm", "max_pool2d", "avg_pool2d",
                          "adaptive_avg_pool2d", "adaptive_max_pool2d"}
    assert ceiling > 0
    for r in rows:
        assert r["max_err"] < bench.ELEMENTWISE_TOL and r["timed"] == "second of two calls"
        assert r["pct_of_ceiling"] == pytest.approx(100 * r["numbaconv_gbs"] / r["ceiling_gbs"])
        assert ("torch_gbs" in r) == WITH_TORCH


def test_time_rounds_calls_before_with_each_function_before_timing_it():
    calls = []

    def before(fn):
        calls.append("before")
        fn()
    res = bench._time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             budget=0, min_runs=2, max_runs=2, before=before)
    assert calls == ["a", "b"] + ["before", "a", "a", "before", "b", "b"] * 2
    assert res["a"]["runs"] == res["b"]["runs"] == 2


@pytest.mark.parametrize("op", ["relu", "max_pool2d", "batch_norm"])
def test_elementwise_check_refuses_a_wrong_result(monkeypatch, op):
    right = getattr(F, op)
    monkeypatch.setattr(F, op, lambda *a, **k: right(*a, **k) + 1e-3)
    with pytest.raises(bench.BenchCheckError, match=op):
        bench.run_elementwise((1, 4, 8, 8), with_torch=False, budget=BUDGET, ops=[op],
                              progress=_quiet)


@pytest.fixture(scope="module")
def e2e_rows():
    pytest.importorskip("torch")
    return bench.run_e2e(batches=[1, 2], image=32, small=True, budget=BUDGET, progress=_quiet)


def test_e2e_rows(e2e_rows):
    assert [(r["net"], r["batch"]) for r in e2e_rows] == [(n, b) for n in nets.NETS
                                                          for b in (1, 2)]
    for r in e2e_rows:
        assert r["path"].startswith("nn.fuse(models.") and "nn.fuse" not in r["unfused_path"]
        assert r["logits_rel_err"] < bench.E2E_RTOL and r["unfused_logits_rel_err"] < bench.E2E_RTOL
        assert r["torch_over_numbaconv"] == pytest.approx(r["torch_ms"] / r["numbaconv_ms"])
        assert r["fusion_speedup"] == pytest.approx(r["numbaconv_unfused_ms"] / r["numbaconv_ms"])
        assert r["numbaconv_images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["numbaconv_ms"])


@pytest.mark.parametrize("op, which", [("linear", "fused"), ("batch_norm", "unfused")])
def test_e2e_check_refuses_a_wrong_result(monkeypatch, op, which):
    """A wrong op fails the check of the path that runs it (only the unfused model has
    BatchNorm left), before anything is timed."""
    pytest.importorskip("torch")
    right = getattr(F, op)
    monkeypatch.setattr(F, op, lambda *a, **k: right(*a, **k) * 1.01)
    with pytest.raises(bench.BenchCheckError, match=f"{which} logits"):
        bench.run_e2e(["resnet18"], [1], image=32, small=True, budget=BUDGET, progress=_quiet)


def test_benchnets_batchnorm_is_not_the_identity():
    model = nets.build("mobilenetv2", small=True)
    sd = nets.randomize_batchnorm(model)
    assert np.array_equal(model.state_dict()["features.0.1.running_var"],
                          sd["features.0.1.running_var"])
    assert np.abs(sd["features.0.1.running_var"] - 1).max() > 0.1
    with pytest.raises(ValueError, match="unknown network"):
        nets.build("alexnet")


@pytest.fixture(scope="module")
def memory_rows():
    return bench.run_memory(["resnet18"], [2], image=32, small=True, with_torch=WITH_TORCH,
                            progress=_quiet)


def test_memory_rows(memory_rows):
    impls = [r["impl"] for r in memory_rows]
    assert impls == list(bench._IMPLS.values())[:3 if WITH_TORCH else 2]
    fused, unfused = memory_rows[:2]
    for r in memory_rows:
        assert r["input_bytes"] == 2 * 3 * 32 * 32 * 4 and r["weights_bytes"] > 0
        assert r["rss_rise_bytes"] >= 0 and r["max_rss_bytes"] >= r["rss_before_bytes"] > 0
        assert "resident set" in r["rss_method"]
    for r in (fused, unfused):
        # Every layer's input and output are alive during the forward, and the network's
        # input throughout, so the traced peak cannot be below the bound.
        assert r["traced_peak_bytes"] >= r["lower_bound_bytes"] >= r["largest_layer_io_bytes"]
        assert r["largest_layer_io_bytes"] > r["input_bytes"]
        assert r["weight_cache_bytes"] > 0 and r["workspace_pool_bytes"] >= 0
    assert fused["weights_bytes"] < unfused["weights_bytes"]  # BatchNorm folded away


def test_startup_in_fresh_processes():
    out = bench.run_startup(layer=(1, 4, 8, 9, 3, 1), repeats=1, cold_net="mobilenetv2",
                            small=True, image=32, empty_cache=False, progress=_quiet)
    fc, cold = out["first_call"], out["cold"]
    assert 0 < fc["import_s"] and 0 < fc["first_call_s"] < fc["process_wall_s"]
    assert cold["total_s"] == pytest.approx(cold["import_s"] + cold["first_forward_s"])
    assert cold["build_s"] > 0 and cold["empty_cache"] is False


def test_results_files_summary_and_merge(tmp_path, conv_rows, memory_rows):
    machine = bench.machine(torch)
    for key in ("cpu", "cores", "threads", "simd_lanes_f32", "numba", "numpy", "llvmlite"):
        assert key in machine
    elementwise, ceiling = bench.run_elementwise((1, 4, 8, 8), with_torch=WITH_TORCH,
                                                 budget=BUDGET, ops=["relu"], progress=_quiet)
    first = {"machine": machine, "device": "cpu", "sgemm_gflops": 100.0, "conv": conv_rows,
             "elementwise": elementwise, "bandwidth_ceiling_gbs": ceiling,
             "memory": memory_rows,
             "runs": [{"when": "t0", "args": "first",
                       "sections": ["conv", "elementwise", "memory"]}]}
    bench.write_results(first, str(tmp_path), "cpu")
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["machine"]["cpu"] == machine["cpu"]
    whats = [r["what"] for r in saved["summary"]]
    if WITH_TORCH:
        assert any(w.startswith("dense conv2d, ResNet-50 + VGG-16, batch 2") for w in whats)
        assert any(w.startswith("depthwise conv2d, MobileNetV2, batch 2") for w in whats)
    assert any("% of copy bandwidth" in w for w in whats)
    (mem,) = [r for r in saved["summary"] if "peak / lower bound" in r["what"]]
    assert mem["target"] is None and mem["holds"] is None and mem["value"] >= 1.0
    md = (tmp_path / "cpu.md").read_text()
    assert "## Targets" in md and "resnet50.tiny3x3" in md and "relu" in md
    assert "follows an untimed call of the same function" in md
    assert "## Peak memory" in md and "numbaconv nn.fuse(model)" in md
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "cpu.png").stat().st_size > 0
    except ImportError:
        assert not (tmp_path / "cpu.png").exists()

    # A second, partial run replaces the rows it measured again and keeps the others.
    again = dict(conv_rows[0], numbaconv_ms=123.0)
    second = {"machine": machine, "device": "cpu", "sgemm_gflops": 90.0, "conv": [again],
              "runs": [{"when": "t1", "args": "second", "sections": ["conv"]}]}
    bench.write_results(second, str(tmp_path), "cpu")
    merged = json.loads((tmp_path / "cpu.json").read_text())
    assert len(merged["conv"]) == len(conv_rows)
    assert [r["numbaconv_ms"] for r in merged["conv"] if r["layer"] == again["layer"]] == [123.0]
    assert len(merged["elementwise"]) == 1 and len(merged["runs"]) == 2
    assert len(merged["memory"]) == len(memory_rows)


def test_e2e_results_written(tmp_path, e2e_rows):
    result = {"machine": bench.machine(torch), "device": "cpu", "e2e": e2e_rows,
              "runs": [{"when": "t0", "args": "e2e", "sections": ["e2e"]}]}
    saved = bench.write_results(result, str(tmp_path), "cpu")
    rows = [r for r in saved["summary"] if "inference" in r["what"]]
    assert len(rows) == len(e2e_rows) and all("nn.fuse(models." in r["detail"] for r in rows)
    md = (tmp_path / "cpu.md").read_text()
    assert "## Inference end to end" in md and "unfused img/s" in md
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "cpu.png").stat().st_size > 0
    except ImportError:
        assert not (tmp_path / "cpu.png").exists()


def test_overhead_rows(tmp_path):
    rows = bench.run_overhead(with_torch=WITH_TORCH, budget=BUDGET, calls=3, progress=_quiet)
    assert [r["op"].split()[0] for r in rows] == ["conv2d", "relu", "max_pool2d", "linear"]
    for r in rows:
        assert r["max_err"] < bench.CONV_RTOL and r["numbaconv_us"] > 0 and r["calls"] == 3
        assert ("torch_us" in r) == WITH_TORCH
    result = {"machine": bench.machine(torch), "device": "cpu", "overhead": rows,
              "runs": [{"when": "t0", "args": "overhead", "sections": ["overhead"]}]}
    saved = bench.write_results(result, str(tmp_path), "cpu")
    (row,) = [r for r in saved["summary"] if "small op call" in r["what"]]
    assert row["target"] is None and row["value"] == max(r["numbaconv_us"] for r in rows)
    assert "## Host time of small calls" in (tmp_path / "cpu.md").read_text()


@pytest.mark.parametrize("op", ["conv2d", "relu", "max_pool2d", "linear"])
def test_overhead_check_refuses_a_wrong_result(monkeypatch, op):
    right = getattr(F, op)
    monkeypatch.setattr(F, op, lambda *a, **k: right(*a, **k) * 1.001)
    with pytest.raises(bench.BenchCheckError, match=op):
        bench.run_overhead(with_torch=False, budget=BUDGET, calls=1, progress=_quiet)


def _conv_row(layer, batch, nc_ms, cudnn_ms):
    name, c, oc, hw, k, s, p, g = layer
    return {"layer": name, "set": name.split(".")[0], "kind": bench.layer_kind(layer),
            "batch": batch, "numbaconv_ms": nc_ms, "cudnn_ms": cudnn_ms}


def test_gpu_summary_uses_cudnn_and_the_gpu_targets():
    # Rows as a CUDA run writes them: the peer is cuDNN with TF32 off, the targets (issue 7)
    # hold at batch 32 only, dense conv counts the ResNet-50 set alone.
    res50 = bench.SETS["resnet50"][1]
    vgg = bench.SETS["vgg16"][1]
    dw = bench.SETS["mobilenetv2"][0]
    conv = [_conv_row(res50, 32, 2.0, 1.0), _conv_row(vgg, 32, 1.0, 100.0),
            _conv_row(dw, 32, 1.0, 1.5), _conv_row(res50, 1, 1.0, 1.0)]
    over = [{"op": "relu", "device": "cuda", "calls": 10, "numbaconv_us": 25.0}]
    e2e = [{"net": "resnet18", "batch": 32, "image": 224, "torch_over_numbaconv": 0.6,
            "numbaconv_images_per_s": 600.0, "torch_images_per_s": 1000.0}]
    rows = {r["what"]: r for r in bench.summarize(
        {"device": "cuda", "conv": conv, "overhead": over, "e2e": e2e})}
    dense32 = rows["dense conv2d, ResNet-50, batch 32: geomean cudnn/nc"]
    assert dense32["value"] == pytest.approx(0.5) and dense32["target"] == 0.7
    assert dense32["holds"] is False
    assert rows["dense conv2d, ResNet-50, batch 1: geomean cudnn/nc"]["target"] is None
    depth = rows["depthwise conv2d, MobileNetV2, batch 32: geomean cudnn/nc"]
    assert depth["value"] == pytest.approx(1.5) and depth["holds"] is True
    e2e_row = rows["resnet18 inference, batch 32: torch/nc time"]
    assert e2e_row["target"] == 0.5 and e2e_row["holds"] is True
    (small,) = [r for w, r in rows.items() if "small op call" in w]
    assert small["target"] == 20.0 and small["holds"] is False


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert bench.plot({"conv": [], "e2e": []}, str(tmp_path / "x.png")) is False
    assert "matplotlib is not installed" in capsys.readouterr().out

"""The CPU depthwise launcher (numbaconv.cpu.depthwise) called directly, against the float64
reference, over kernel sizes, strides, dilations, asymmetric padding, channel multipliers, the
fused bias / residual / activation epilogue and both dtypes.

The narrower SIMD widths (8 = AVX2, 1 = scalar) run in a child process with
``NUMBACONV_SIMD_WIDTH`` forced (conftest's ``run_at_width``).
"""

import os
import textwrap

import numpy as np
import pytest

import reference as R
from conftest import assert_close, rand
from numbaconv import _ops
from numbaconv.cpu import simd
from numbaconv.cpu.depthwise import depthwise_conv2d

HERE = os.path.dirname(os.path.abspath(__file__))

# (id, N, C, multiplier, H, W, (KH, KW), stride, (top, left) padding, (bottom, right) padding,
# dilation). Bottom/right padding reaches the launcher only through the output's shape; a
# negative value drops input rows/columns that no window reaches fully (floor division).
CASES = [
    ("3x3_pad1", 1, 3, 1, 10, 11, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("3x3_nopad", 2, 4, 1, 9, 13, (3, 3), (1, 1), (0, 0), (0, 0), (1, 1)),
    ("3x3_s2", 1, 5, 1, 17, 19, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ("3x3_s2_even", 3, 3, 1, 16, 16, (3, 3), (2, 2), (1, 1), (0, 0), (1, 1)),
    ("3x3_s2_nopad", 1, 2, 1, 15, 22, (3, 3), (2, 2), (0, 0), (0, -1), (1, 1)),
    ("3x3_dil2", 1, 3, 1, 12, 14, (3, 3), (1, 1), (2, 2), (2, 2), (2, 2)),
    ("3x3_s2_dil2", 2, 2, 1, 19, 21, (3, 3), (2, 2), (2, 2), (2, 2), (2, 2)),
    ("3x3_asym", 1, 3, 1, 11, 12, (3, 3), (1, 1), (0, 2), (2, 0), (1, 1)),
    ("3x3_pad2", 1, 2, 1, 7, 9, (3, 3), (1, 1), (2, 2), (2, 2), (1, 1)),
    ("5x5_pad2", 1, 4, 1, 13, 21, (5, 5), (1, 1), (2, 2), (2, 2), (1, 1)),
    ("5x5_s2", 3, 3, 1, 15, 15, (5, 5), (2, 2), (2, 2), (2, 1), (1, 1)),
    ("5x5_dil2", 1, 2, 1, 14, 17, (5, 5), (1, 1), (4, 4), (4, 4), (2, 2)),
    ("7x7_pad3", 1, 3, 1, 23, 18, (7, 7), (1, 1), (3, 3), (3, 3), (1, 1)),
    ("7x7_s2", 1, 2, 1, 29, 31, (7, 7), (2, 2), (3, 3), (3, 2), (1, 1)),
    ("rect_3x5", 1, 2, 1, 9, 20, (3, 5), (1, 2), (1, 2), (1, 1), (1, 1)),
    ("stride3", 1, 2, 1, 20, 23, (3, 3), (3, 3), (1, 1), (1, 1), (1, 1)),
    ("stride_2x1", 1, 2, 1, 13, 18, (3, 3), (2, 1), (1, 1), (1, 1), (1, 2)),
    ("mult2", 1, 3, 2, 10, 9, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("mult3_s2", 2, 2, 3, 13, 17, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ("mult2_5x5", 1, 2, 2, 12, 12, (5, 5), (1, 1), (2, 2), (2, 2), (1, 1)),
    ("1x1", 2, 3, 1, 5, 7, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1)),
    ("tiny_1x1_image", 2, 3, 1, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("tiny_2x3_s2", 1, 4, 1, 2, 3, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ("kernel_wider_than_image", 1, 2, 1, 3, 2, (5, 5), (1, 1), (2, 2), (2, 2), (1, 1)),
    ("padding_past_image", 1, 2, 1, 4, 4, (3, 3), (1, 1), (3, 3), (3, 3), (1, 1)),
    ("wide_row", 1, 2, 1, 5, 70, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("tall", 1, 2, 1, 41, 6, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    # Narrow rows (the flat path with float32 vectors of 16 lanes, the rows path otherwise).
    ("flat_5x5_dil2", 2, 3, 1, 8, 8, (5, 5), (1, 1), (4, 4), (4, 4), (2, 2)),
    ("flat_asym", 1, 2, 1, 6, 7, (3, 3), (1, 1), (2, 0), (0, 2), (1, 1)),
    ("flat_mult2_res", 2, 3, 2, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("flat_tall", 1, 2, 1, 40, 3, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("flat_c6_5x5", 2, 6, 1, 6, 8, (5, 5), (1, 1), (2, 2), (2, 2), (1, 1)),
    ("flat_c8_tall", 1, 8, 1, 37, 5, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    # The MobileNetV2 shapes, scaled down in channels.
    ("mnv2_112", 1, 3, 1, 112, 112, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("mnv2_112_s2", 1, 3, 1, 112, 112, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ("mnv2_7", 3, 20, 1, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("mnv2_14", 2, 17, 1, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
]

# Cases the epilogue tests run on: rows path stride 1 and 2, multiplier, flat path.
_EPILOGUE_CASES = [[c[0] for c in CASES].index(name)
                   for name in ("3x3_pad1", "3x3_s2", "mult3_s2", "mnv2_7", "flat_mult2_res",
                                "flat_c6_5x5")]

EPILOGUES = [  # (id, bias, residual, activation name, act code, alpha)
    ("plain", False, False, None, _ops.ACT_NONE, 0.0),
    ("bias", True, False, None, _ops.ACT_NONE, 0.0),
    ("bias_relu", True, False, "relu", _ops.ACT_RELU, 0.0),
    ("bias_relu6", True, False, "relu6", _ops.ACT_RELU6, 0.0),
    ("residual", False, True, None, _ops.ACT_NONE, 0.0),
    ("bias_residual_relu", True, True, "relu", _ops.ACT_RELU, 0.0),
    ("residual_relu6", False, True, "relu6", _ops.ACT_RELU6, 0.0),
    ("bias_leaky_relu", True, False, "leaky_relu", _ops.ACT_LEAKY_RELU, 0.1),
    ("bias_residual_silu", True, True, "silu", _ops.ACT_SILU, 0.0),
]

_ACT_REF = {None: lambda y, a: y, "relu": lambda y, a: R.relu(y), "relu6": lambda y, a: R.relu6(y),
            "leaky_relu": R.leaky_relu, "silu": lambda y, a: R.silu(y)}


def _out_size(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _reference(x, w, b, res, stride, pad0, pad1, dilation, act_name, alpha, out_hw):
    """float64 act(conv + b + res): the reference conv with the bottom/right padding made
    explicit (zeros appended) and cropped to the launcher's output size."""
    x64 = x.astype(np.float64)
    extra = [max(0, p) for p in pad1]
    x64 = np.pad(x64, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    y = R.conv2d(x64, w, b, stride=stride, padding=pad0, dilation=dilation, groups=x.shape[1])
    y = y[:, :, :out_hw[0], :out_hw[1]]
    assert y.shape[2:] == tuple(out_hw)
    if res is not None:
        y = y + res
    return _ACT_REF[act_name](y, alpha)


def run_case(rng, dtype, case, epilogue, x_scale=1.0):
    _, n, c, mult, h, w_, (kh, kw), stride, pad0, pad1, dil = case
    _, has_bias, has_res, act_name, act, alpha = epilogue
    oh = _out_size(h, kh, stride[0], pad0[0], pad1[0], dil[0])
    ow = _out_size(w_, kw, stride[1], pad0[1], pad1[1], dil[1])
    x = rand(rng, (n, c, h, w_), dtype) * dtype(x_scale)
    w = rand(rng, (c * mult, 1, kh, kw), dtype)
    b = rand(rng, (c * mult,), dtype) if has_bias else None
    res = rand(rng, (n, c * mult, oh, ow), dtype) if has_res else None
    args = [a.copy() for a in (x, w) + tuple(a for a in (b, res) if a is not None)]
    out = np.full((n, c * mult, oh, ow), np.nan, dtype)
    depthwise_conv2d(out, x, w, b, res, stride, pad0, dil, act, alpha)
    for before, after in zip(args, (x, w) + tuple(a for a in (b, res) if a is not None)):
        np.testing.assert_array_equal(before, after)  # inputs untouched
    ref = _reference(x, w, b, res, stride, pad0, pad1, dil, act_name, alpha, (oh, ow))
    # The error unit: conv(|x|, |w|) + |b| + |res|.
    scale = _reference(np.abs(x), np.abs(w), None if b is None else np.abs(b),
                       None if res is None else np.abs(res), stride, pad0, pad1, dil, None, 0.0,
                       (oh, ow))
    assert_close(out, ref, dtype, "conv", scale=scale, what=f"depthwise {case[0]}")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("epilogue", [EPILOGUES[1], EPILOGUES[5]], ids=["bias", "bias_res_relu"])
def test_depthwise_shapes(rng, dtype, case, epilogue):
    run_case(rng, dtype, case, epilogue)


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=[e[0] for e in EPILOGUES])
@pytest.mark.parametrize("case", [CASES[i] for i in _EPILOGUE_CASES],
                         ids=[CASES[i][0] for i in _EPILOGUE_CASES])
def test_depthwise_epilogues(rng, dtype, case, epilogue):
    # Scaled so pre-activations cover < 0 and > 6.
    run_case(rng, dtype, case, epilogue, x_scale=4.0)


def test_depthwise_nan_and_inf_propagate(dtype):
    x = np.ones((1, 2, 6, 20), dtype)
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 4, 17] = np.inf
    w = np.ones((2, 1, 3, 3), dtype)
    out = np.empty((1, 2, 6, 20), dtype)
    depthwise_conv2d(out, x, w, None, None, (1, 1), (1, 1), (1, 1), _ops.ACT_RELU, 0.0)
    assert np.isnan(out[0, 0, 1:4, 2:5]).all() and np.isnan(out[0, 0]).sum() == 9
    assert np.isposinf(out[0, 1, 3:6, 16:19]).all() and np.isinf(out[0, 1]).sum() == 9


def test_depthwise_empty_output(dtype):
    x = np.ones((0, 3, 5, 5), dtype)
    out = np.empty((0, 3, 5, 5), dtype)
    depthwise_conv2d(out, x, np.ones((3, 1, 3, 3), dtype), None, None, (1, 1), (1, 1), (1, 1),
                     _ops.ACT_NONE, 0.0)


@pytest.mark.parametrize("hw", [(10, 11), (7, 7)], ids=["rows", "flat"])
def test_depthwise_residual_may_be_out(rng, dtype, hw):
    # out += conv(x): the residual read and the output write are the same element.
    x = rand(rng, (2, 5) + hw, dtype)
    w = rand(rng, (5, 1, 3, 3), dtype)
    out = rand(rng, (2, 5) + hw, dtype)
    ref = R.conv2d(x, w, padding=1, groups=5) + out
    depthwise_conv2d(out, x, w, None, out, (1, 1), (1, 1), (1, 1), _ops.ACT_NONE, 0.0)
    scale = R.conv2d(np.abs(x), np.abs(w), padding=1, groups=5) + np.abs(ref)
    assert_close(out, ref, dtype, "conv", scale=scale, what="depthwise in place")


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import numpy as np
    import test_depthwise as T
    from numbaconv.cpu import simd
    assert simd.LANES == {lanes}, simd.LANES
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for case in T.CASES:
            T.run_case(rng, dtype, case, T.EPILOGUES[5])
        for epilogue in T.EPILOGUES:
            for i in T._EPILOGUE_CASES:
                T.run_case(rng, dtype, T.CASES[i], epilogue, x_scale=4.0)
    print("ok")
""")


@pytest.mark.parametrize("lanes", [w for w in (8, 1) if w < simd.host_lanes()])
def test_depthwise_narrow_widths(lanes, run_at_width):
    proc = run_at_width(_CHILD.format(here=HERE, lanes=lanes), lanes, timeout=1800)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr

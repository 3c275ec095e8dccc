"""Convolution on small maps: the row path of the forward and data gradient (batch folded into
the positions, output channels as vectors) and the weight gradient's outer-product GEMM, each
against the float64 reference and against the position-vectorised paths they replace."""

import os
import textwrap

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from numbaconv.cpu import conv as C
from numbaconv.cpu import conv_backward as CB
from numbaconv.cpu import simd

F = nc.functional
HERE = os.path.dirname(os.path.abspath(__file__))

# (id, input shape, weight shape, keyword arguments): maps of 1x1 to 8x8, channel counts that
# leave partial vectors (masked panel edges), batch sizes that leave partial row blocks.
CASES = [
    ("resnet_2x2", (8, 32, 2, 2), (48, 32, 3, 3), dict(padding=1)),
    ("resnet_4x4_s2", (8, 16, 8, 8), (40, 16, 3, 3), dict(stride=2, padding=1)),
    ("odd_batch_channels", (3, 17, 3, 5), (23, 17, 3, 3), dict(padding=1)),
    ("one_pixel", (5, 6, 1, 1), (9, 6, 3, 3), dict(padding=1)),
    ("pad_past_image_dilated", (2, 5, 2, 2), (70, 5, 3, 3), dict(padding=2, dilation=2)),
    ("strided_odd", (5, 33, 6, 7), (9, 33, 3, 3), dict(stride=2, padding=1)),
    ("stride3_rect", (2, 9, 5, 6), (7, 9, 2, 3), dict(stride=(3, 2), padding=(0, 1))),
    ("1x1", (4, 24, 7, 7), (20, 24, 1, 1), {}),
    ("8x8", (2, 8, 8, 8), (33, 8, 3, 3), dict(padding=1)),
    ("groups", (2, 8, 4, 4), (12, 4, 3, 3), dict(stride=2, padding=1, groups=2)),
]
IDS = [c[0] for c in CASES]
TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(params=["small", "general"])
def path(request, monkeypatch):
    """'small': the row / outer-product paths wherever they apply; 'general': switched off, so
    the same cases check the position-vectorised paths."""
    if request.param == "general":
        monkeypatch.setattr(C, "ROWS_MAP", 0)
        monkeypatch.setattr(CB, "OUTER_MAX_P", 0)
    else:
        monkeypatch.setattr(C, "ROWS_MAP", 64)
        monkeypatch.setattr(CB, "OUTER_MAX_P", 512)
    return request.param


def _err(got, want, scale):
    return float(np.max(np.abs(got - want) / (scale + 1e-30)))


@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CASES], ids=IDS)
def test_forward_with_epilogue(rng, dtype, path, xs, ws, kw):
    x = rng.uniform(-1, 1, xs).astype(dtype)
    w = rng.uniform(-1, 1, ws).astype(dtype)
    b = rng.uniform(-1, 1, ws[0]).astype(dtype)
    ref = R.conv2d(x, w, b, **kw)
    res = rng.uniform(-1, 1, ref.shape).astype(dtype)
    got = F.conv2d(x, w, b, residual=res, activation="relu", **kw)
    scale = R.conv2d(np.abs(x), np.abs(w), np.abs(b), **kw) + np.abs(res)
    assert got.dtype == dtype
    assert _err(got, np.maximum(ref + res, 0), scale) < TOL[dtype]


@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CASES], ids=IDS)
def test_backward(rng, dtype, path, xs, ws, kw):
    x = rng.uniform(-1, 1, xs).astype(dtype)
    w = rng.uniform(-1, 1, ws).astype(dtype)
    b = rng.uniform(-1, 1, ws[0]).astype(dtype)
    go = rng.uniform(-1, 1, R.conv2d(x, w, b, **kw).shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(go, x, w, b, **kw)
    x64, w64, go64 = (a.astype(np.float64) for a in (x, w, go))
    # The gradients are linear in go: the reference's adjoints, checked through the identity
    # <go, conv(x, w)> = <gx, x> = <gw, w>, then elementwise against the transposed conv.
    want_gx = R.conv_transpose2d(go64, w64, stride=kw.get("stride", 1),
                                 padding=kw.get("padding", 0), groups=kw.get("groups", 1),
                                 dilation=kw.get("dilation", 1),
                                 output_padding=_output_padding(xs, ws, kw))
    scale_gx = R.conv_transpose2d(np.abs(go64), np.abs(w64), stride=kw.get("stride", 1),
                                  padding=kw.get("padding", 0), groups=kw.get("groups", 1),
                                  dilation=kw.get("dilation", 1),
                                  output_padding=_output_padding(xs, ws, kw))
    assert gx.dtype == dtype and gw.dtype == dtype
    assert _err(gx, want_gx, scale_gx) < TOL[dtype]
    want_gw = _weight_grad(x64, go64, ws, kw)
    scale_gw = _weight_grad(np.abs(x64), np.abs(go64), ws, kw)
    assert _err(gw, want_gw, scale_gw) < TOL[dtype]
    np.testing.assert_allclose(gb, go64.sum(axis=(0, 2, 3)), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype] * 10 * go.size)


def _output_padding(xs, ws, kw):
    """The output_padding that makes conv_transpose2d give back x's shape."""
    s = _pair(kw.get("stride", 1))
    p = _pair(kw.get("padding", 0))
    d = _pair(kw.get("dilation", 1))
    out = []
    for i in range(2):
        o = (xs[2 + i] + 2 * p[i] - d[i] * (ws[2 + i] - 1) - 1) // s[i] + 1
        out.append(xs[2 + i] - ((o - 1) * s[i] - 2 * p[i] + d[i] * (ws[2 + i] - 1) + 1))
    return tuple(out)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _weight_grad(x, go, ws, kw):
    """float64 weight gradient by direct summation over the reference's padded input."""
    s, p, d = _pair(kw.get("stride", 1)), _pair(kw.get("padding", 0)), _pair(kw.get("dilation", 1))
    g = kw.get("groups", 1)
    n, c, h, w_ = x.shape
    oc, cg, kh, kwid = ws
    xp = np.zeros((n, c, h + 2 * p[0] + s[0] * go.shape[2] + d[0] * kh,
                   w_ + 2 * p[1] + s[1] * go.shape[3] + d[1] * kwid))
    xp[:, :, p[0]:p[0] + h, p[1]:p[1] + w_] = x
    gw = np.zeros(ws)
    ocg = oc // g
    for i in range(kh):
        for j in range(kwid):
            win = xp[:, :, i * d[0]:i * d[0] + s[0] * go.shape[2]:s[0],
                     j * d[1]:j * d[1] + s[1] * go.shape[3]:s[1]]
            for gi in range(g):
                gw[gi * ocg:(gi + 1) * ocg, :, i, j] = np.einsum(
                    "nohw,nchw->oc", go[:, gi * ocg:(gi + 1) * ocg],
                    win[:, gi * cg:(gi + 1) * cg])
    return gw


def test_paths_are_taken():
    # The cases above exercise the new paths (with the default thresholds), not a fallback.
    if simd.LANES == 1:
        pytest.skip("scalar build: the row paths are off")
    assert C.rows_applies((8, 512, 2, 2), 512, (8, 512, 2, 2), 1)
    assert C.rows_applies((8, 16, 8, 8), 40, (8, 40, 4, 4), 1)
    assert not C.rows_applies((8, 16, 8, 8), 40, (8, 40, 4, 4), 2)
    assert not C.rows_applies((1, 64, 56, 56), 64, (1, 64, 56, 56), 1)


def test_tracked_weight_reuses_row_panels(rng):
    from numbaconv import _weights
    from numbaconv.cpu import workspace

    cache = workspace.WEIGHTS
    cache.clear()
    cache.hits = cache.misses = 0
    try:
        x = rng.standard_normal((8, 16, 4, 4)).astype(np.float32)
        w = _weights.track(rng.standard_normal((32, 16, 3, 3)).astype(np.float32))
        first = F.conv2d(x, w, padding=1)
        np.testing.assert_array_equal(F.conv2d(x, w, padding=1), first)
        assert (cache.hits, cache.misses) == (1, 1)
    finally:
        cache.clear()


def test_steady_state_allocates_no_scratch(rng):
    from numbaconv.cpu import workspace

    x = rng.standard_normal((8, 16, 4, 4)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    go = rng.standard_normal((8, 32, 2, 2)).astype(np.float32)
    for _ in range(2):
        F.conv2d(x, w, padding=1, stride=2)
        F.conv2d_backward(go, x, w, None, padding=1, stride=2)
    before = workspace.POOL.allocations
    for _ in range(3):
        F.conv2d(x, w, padding=1, stride=2)
        F.conv2d_backward(go, x, w, None, padding=1, stride=2)
    assert workspace.POOL.allocations == before


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import test_conv_small as T
    from numbaconv.cpu import simd
    assert simd.LANES == {lanes}, simd.LANES
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for _, xs, ws, kw in T.CASES[:6]:
            T.test_forward_with_epilogue(rng, dt, "small", xs, ws, kw)
            T.test_backward(rng, dt, "small", xs, ws, kw)
    print("ok")
""")


@pytest.mark.parametrize("lanes", [w for w in (8,) if w < simd.host_lanes()])
def test_forced_width(lanes, run_at_width):
    proc = run_at_width(_CHILD.format(here=HERE, lanes=lanes), lanes, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

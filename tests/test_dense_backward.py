"""linear_backward, softmax_backward and log_softmax_backward: against float64 central
differences of the reference, against PyTorch autograd, and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (assert_close, call_unchanged, cuda_skip_reason, host, is_device_array, on,
                      rand)
from gradcheck import assert_grad_close

F = nc.functional

# (id, input shape, weight shape)
LINEAR_CASES = [
    ("2d", (5, 7), (3, 7)),
    ("leading_dims", (2, 3, 4), (5, 4)),
    ("1d_input", (7,), (3, 7)),
    ("vector_weight", (4, 6), (6,)),
    ("k_1", (6, 1), (5, 1)),
    ("out_1", (4, 6), (1, 6)),
    ("odd", (9, 13), (6, 13)),  # partial 4-row and 4-feature blocks
]
LINEAR_BIG = [  # several K tiles and partial blocks on the CPU
    ("big_k", (37, 1100), (9, 1100)),
    ("big_leading", (3, 5, 7, 100), (33, 100)),
]


def linear_case(rng, dtype, xs, ws, bias):
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, (ws[0],), dtype) if bias else None
    go = rand(rng, R.linear(x, w, b).shape, dtype)
    return go, x, w, b


def linear_sum(go):
    return lambda x, w, b=None: go * R.linear(x, w, b)


# every case without a bias, and with one where the weight is 2-D (torch's rule)
LINEAR_BIAS_CASES = [(f"{i}-{'bias' if b else 'nobias'}", xs, ws, b)
                     for i, xs, ws in LINEAR_CASES for b in (True, False) if len(ws) == 2 or not b]


@pytest.mark.parametrize("xs, ws, bias", [c[1:] for c in LINEAR_BIAS_CASES],
                         ids=[c[0] for c in LINEAR_BIAS_CASES])
def test_linear_backward(rng, device, dtype, xs, ws, bias):
    go, x, w, b = linear_case(rng, dtype, xs, ws, bias)
    grads = call_unchanged(F.linear_backward, go, x, w, b)
    assert isinstance(grads, tuple) and len(grads) == 3
    args = (x, w, b)
    absargs = tuple(None if a is None else np.abs(a) for a in args)
    for i, name in enumerate(("input", "weight", "bias")):
        if args[i] is None:
            assert grads[i] is None
            continue
        assert type(grads[i]) is np.ndarray
        num = R.numerical_grad(linear_sum(go), args, i)
        # linear in each argument: the same difference quotient on |.| sums the |products|
        scale = R.numerical_grad(linear_sum(np.abs(go)), absargs, i)
        assert_grad_close(grads[i], num, dtype, scale=scale,
                          what=f"linear_backward grad_{name}[{device}]")


@pytest.mark.parametrize("xs, ws", [c[1:] for c in LINEAR_BIG], ids=[c[0] for c in LINEAR_BIG])
def test_linear_backward_big(rng, device_big, dtype, xs, ws):
    # Too many elements for central differences: the float64 products written out.
    go, x, w, b = linear_case(rng, dtype, xs, ws, True)
    gx, gw, gb = F.linear_backward(go, x, w, b)
    g2 = go.reshape(-1, ws[0]).astype(np.float64)
    x2 = x.reshape(-1, xs[-1]).astype(np.float64)
    w64 = w.astype(np.float64)
    assert_close(gx, (g2 @ w64).reshape(xs), dtype, "linear",
                 scale=(np.abs(g2) @ np.abs(w64)).reshape(xs), what="grad_input")
    assert_close(gw, g2.T @ x2, dtype, "linear", scale=np.abs(g2).T @ np.abs(x2),
                 what="grad_weight")
    assert_close(gb, g2.sum(0), dtype, "linear", scale=np.abs(g2).sum(0), what="grad_bias")


def test_linear_backward_empty_batch(device, dtype):
    # No rows: the weight and bias gradients are zero sums, as in torch.
    x, w, b = np.zeros((0, 4), dtype), np.ones((3, 4), dtype), np.ones(3, dtype)
    gx, gw, gb = F.linear_backward(np.zeros((0, 3), dtype), x, w, b)
    assert gx.shape == (0, 4) and gw.shape == (3, 4) and gb.shape == (3,)
    assert not host(gw).any() and not host(gb).any()


@pytest.mark.parametrize("gs", [(5, 4), (5,), (4, 3)])
def test_linear_backward_grad_output_shape_raises(device, gs):
    with pytest.raises(ValueError, match="grad_output"):
        F.linear_backward(np.zeros(gs), np.zeros((5, 7)), np.zeros((3, 7)), np.zeros(3))


@pytest.mark.parametrize("xs, ws, bs", [((4, 7), (3, 6), None), ((4, 7), (3, 7), (4,)),
                                        ((4, 7), (3, 7, 1), None), ((4, 7), (7,), (1,))])
def test_linear_backward_bad_shapes_raise(device, xs, ws, bs):
    # The forward op's errors, for the same arguments.
    b = None if bs is None else np.zeros(bs)
    with pytest.raises(ValueError):
        F.linear(np.zeros(xs), np.zeros(ws), b)
    with pytest.raises(ValueError):
        F.linear_backward(np.zeros(xs[:-1] + (3,)), np.zeros(xs), np.zeros(ws), b)


def test_linear_backward_dtype_mismatch_raises(device):
    x, w = np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError):
        F.linear_backward(np.zeros((2, 4), np.float64), x, w)
    with pytest.raises(TypeError):
        F.linear_backward(np.zeros((2, 4), np.float32), x, w.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# softmax / log_softmax
# ---------------------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(3, 4, 5), (7,), (1, 9), (6, 1), (2, 3, 2, 2)]
SOFTMAX_CASES = [(s, d) for s in SOFTMAX_SHAPES for d in list(range(len(s))) + [-1]]


def softmax_sum(op, go, dim):
    ref = getattr(R, op)
    return lambda x: go * ref(x, dim)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES, ids=[f"{s}-dim{d}" for s, d in SOFTMAX_CASES])
def test_softmax_backward(rng, device, dtype, op, shape, dim):
    x, go = rand(rng, shape, dtype, -4, 4), rand(rng, shape, dtype)
    grads = call_unchanged(getattr(F, op + "_backward"), go, x, dim)
    assert isinstance(grads, tuple) and len(grads) == 1
    assert type(grads[0]) is np.ndarray
    num = R.numerical_grad(softmax_sum(op, go, dim), (x,), 0)
    assert_grad_close(grads[0], num, dtype, what=f"{op}_backward[{device}]")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_backward_0d(device, dtype, op):
    (g,) = getattr(F, op + "_backward")(np.array(3.0, dtype), np.array(0.5, dtype), 0)
    assert host(g).shape == () and host(g) == 0


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_backward_big(rng, device_big, dtype, op):
    # Long rows and a strided axis with several position tiles; float64 formulas written out.
    for shape, dim in (((65, 1031), 1), ((3, 17, 600), 1), ((300, 5), 0)):
        x, go = rand(rng, shape, dtype, -8, 8), rand(rng, shape, dtype)
        (g,) = getattr(F, op + "_backward")(go, x, dim)
        y, g64 = R.softmax(x, dim), go.astype(np.float64)
        if op == "softmax":
            ref = y * (g64 - np.sum(g64 * y, axis=dim, keepdims=True))
            scale = y * (np.abs(g64) + np.sum(np.abs(g64) * y, axis=dim, keepdims=True))
        else:
            ref = g64 - y * np.sum(g64, axis=dim, keepdims=True)
            scale = np.abs(g64) + y * np.sum(np.abs(g64), axis=dim, keepdims=True)
        assert_close(g, ref, dtype, "softmax", scale=np.maximum(scale, 1.0),
                     what=f"{op}_backward{shape}")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_backward_large_magnitudes(device, dtype, op):
    x = np.array([[1e30, -1e30, 0.0, 5.0], [-1e30, 0.0, 1.0, 2.0]], dtype)
    go = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]], dtype)
    (g,) = getattr(F, op + "_backward")(go, x, 1)
    g = host(g)
    assert np.isfinite(g).all()
    y = R.softmax(x, 1)
    g64 = go.astype(np.float64)
    ref = (y * (g64 - np.sum(g64 * y, 1, keepdims=True)) if op == "softmax"
           else g64 - y * np.sum(g64, 1, keepdims=True))
    assert_close(g, ref, dtype, "softmax")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_backward_bad_arguments_raise(device, op):
    fn = getattr(F, op + "_backward")
    with pytest.raises(ValueError, match="grad_output"):
        fn(np.zeros((2, 4)), np.zeros((2, 3)), 1)
    with pytest.raises(TypeError):
        fn(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64), 1)
    with pytest.raises(IndexError):
        fn(np.zeros((2, 3)), np.zeros((2, 3)), 2)
    with pytest.raises(TypeError):
        fn(np.zeros((2, 3)), np.zeros((2, 3)), 1.0)


# ---------------------------------------------------------------------------------------------
# PyTorch autograd (optional oracle)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ws", [((5, 7), (3, 7)), ((2, 3, 4), (5, 4)), ((7,), (3, 7)),
                                    ((4, 6), (6,))])
def test_linear_backward_torch(rng, device_available, dtype, xs, ws):
    torch = pytest.importorskip("torch")
    go, x, w, b = linear_case(rng, dtype, xs, ws, len(ws) == 2)
    grads = F.linear_backward(go, x, w, b)
    tensors = [None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True)
               for a in (x, w, b)]
    torch.nn.functional.linear(*tensors).backward(torch.tensor(go, dtype=torch.float64))
    for got, t in zip(grads, tensors):
        if t is None:
            assert got is None
        else:
            assert_close(got, t.grad.numpy(), dtype, "linear", scale=np.abs(t.grad.numpy()) + 10,
                         what="linear_backward vs torch")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", [((3, 4, 5), 1), ((6, 9), -1), ((7,), 0), ((4, 3, 2), 0)])
def test_softmax_backward_torch(rng, device_available, dtype, op, shape, dim):
    torch = pytest.importorskip("torch")
    x, go = rand(rng, shape, dtype, -5, 5), rand(rng, shape, dtype)
    (g,) = getattr(F, op + "_backward")(go, x, dim)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    getattr(torch.nn.functional, op)(t, dim).backward(torch.tensor(go, dtype=torch.float64))
    assert_close(g, t.grad.numpy(), dtype, "softmax", what=f"{op}_backward vs torch")


# ---------------------------------------------------------------------------------------------
# CPU against CUDA, device arrays in and out
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


@pytest.mark.cuda_only
@pytest.mark.parametrize("xs, ws", [((6, 9), (5, 9)), ((2, 3, 4), (1, 4)), ((4, 6), (6,))])
def test_linear_backward_cpu_vs_cuda(rng, cuda_device, dtype, xs, ws):
    go, x, w, b = linear_case(rng, dtype, xs, ws, len(ws) == 2)
    with nc.use_device("cpu"):
        want = F.linear_backward(go, x, w, b)
    got = F.linear_backward(*(None if a is None else on("cuda", a) for a in (go, x, w, b)))
    for g, c in zip(got, want):
        if c is None:
            assert g is None
            continue
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what="linear_backward cuda")


@pytest.mark.cuda_only
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", [((3, 40, 2), 1), ((5, 6), 1), ((4, 3), 0)])
def test_softmax_backward_cpu_vs_cuda(rng, cuda_device, dtype, op, shape, dim):
    x, go = rand(rng, shape, dtype, -5, 5), rand(rng, shape, dtype)
    fn = getattr(F, op + "_backward")
    with nc.use_device("cpu"):
        (want,) = fn(go, x, dim)
    (got,) = fn(on("cuda", go), on("cuda", x), dim)
    assert is_device_array(got)
    assert_close(got, want.astype(np.float64), dtype, "parity", what=f"{op}_backward cuda")

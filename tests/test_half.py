"""float16 inference on the CUDA backend, against the float64 reference.

float16 arrays are accepted by the forward ops of an inference network on CUDA (conv1d, conv2d,
linear, pooling, activations, softmax / log_softmax, batch_norm in eval mode, the private
``F._add``). The kernels convert each float16 value to float32 as they load it, sum in float32
registers and shared tiles, and round to float16 once, at the store. Every result here is compared
with ``tests/reference.py`` evaluated in float64 on the same float16 values (upcast exactly), so
the only errors are the kernel's own: tolerance family "half" in ``conftest.TOLERANCES``:

- rtol 1e-3, about 2 u16 (u16 = 2**-11 = 4.9e-4, the relative error of the one rounding of
  the output to float16), with room for float32 exp / tanh / erf (a few 1e-7);
- atol 1e-4 times ``scale`` (the sum of |products| for conv / linear, else max(1, |ref|)):
  a float32 sum of K terms errs by at most about K * u32 * scale (u32 = 6e-8), so 1e-4 holds to
  K ~ 1600, far above the sizes here. A float16 accumulator (error ~ sqrt(K) * u16 * scale)
  would not pass, and :func:`test_sums_accumulate_in_float32` makes that failure certain.

Max pooling and relu select input values, so they must be exact. Training with float16 (backward
ops, losses, optimisers, recurrent layers) and float16 on the CPU raise TypeError.

CUDA tests run on a GPU or under NUMBA_ENABLE_CUDASIM=1 (small shapes: the simulator runs every
thread in Python); the CPU error tests run everywhere.
"""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import DEVICES, _enter_device, assert_close, host, is_device_array

F = nc.functional
F16 = np.float16
U16 = 2.0 ** -11  # float16 unit roundoff
HALF_MSG = "float16 is supported on CUDA for inference"


@pytest.fixture
def cuda():
    """CUDA as the current device; skipped (failed under NUMBACONV_TEST_REQUIRE_CUDA=1) where
    it cannot run."""
    if "cuda" not in DEVICES:
        pytest.skip("NUMBACONV_TEST_DEVICES leaves out cuda")
    with _enter_device("cuda"):
        yield "cuda"


def half(rng, shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape).astype(F16)


def dev(a):
    return None if a is None else nc.to_device(a, "cuda")


def run(name, args, kwargs=None, scale=None, ref_kwargs=None):
    """``F.<name>`` on device copies of the float16 ``args`` against ``reference.<name>`` on the
    host float16 values (upcast to float64); returns the result as NumPy float16."""
    kwargs = kwargs or {}
    dkw = {k: dev(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    out = getattr(F, name)(*[dev(a) if isinstance(a, np.ndarray) else a for a in args], **dkw)
    assert is_device_array(out), f"{name}: device inputs gave {type(out).__name__}"
    ref = getattr(R, name)(*args, **(kwargs if ref_kwargs is None else ref_kwargs))
    assert_close(out, ref, F16, "half", scale=scale, what=f"{name}[cuda, float16]")
    return host(out)


def conv_scale(x, w, b, kw):
    """Sum of |products| (+ |bias| + |residual|) per output, the unit of a sum's rounding."""
    kw = {k: v for k, v in kw.items() if k != "activation"}
    if kw.get("residual") is not None:
        kw["residual"] = np.abs(kw["residual"])
    return R.conv2d(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)


# ---- convolution ---------------------------------------------------------------------------------

@pytest.mark.cuda_only
@pytest.mark.parametrize("xs, ws, kw", [
    # 16 output channels per group: the tiled implicit GEMM.
    ((2, 4, 5, 5), (16, 4, 3, 3), dict(padding=1, activation="silu")),
    # depthwise (1 input channel per group): its own kernel, 3x3 and any size.
    ((1, 6, 6, 6), (6, 1, 3, 3), dict(padding=1, stride=(1, 2), groups=6,
                                      activation=("leaky_relu", 0.1))),
    ((1, 3, 7, 6), (6, 1, 2, 3), dict(padding=1, groups=3, activation="relu")),
    # 2 input and 3 output channels per group: the direct kernel.
    ((1, 4, 6, 5), (6, 2, 3, 3), dict(padding=1, groups=2, activation="gelu")),
], ids=["gemm", "depthwise_3x3", "depthwise_2x3", "direct"])
def test_conv2d_fused(rng, cuda, xs, ws, kw):
    x, w, b = half(rng, xs, -2, 2), half(rng, ws), half(rng, (ws[0],))
    out_shape = R.conv2d(x, w, b, **{k: v for k, v in kw.items() if k != "activation"}).shape
    kw = dict(kw, residual=half(rng, out_shape))
    run("conv2d", (x, w, b), kw, scale=conv_scale(x, w, b, kw))


@pytest.mark.cuda_only
@pytest.mark.parametrize("tile", ["BIG", "SMALL"])
def test_conv2d_gemm_tiles(rng, cuda, monkeypatch, tile):
    # Both tile shapes of the implicit GEMM (chosen by problem size elsewhere), over several
    # tiles of output channels and pixels and several reduction steps.
    from numbaconv.cuda import gemm

    chosen = getattr(gemm, tile)
    monkeypatch.setattr(gemm, "_gemm_tile", lambda *args: chosen)
    x, w, b = half(rng, (2, 5, 9, 8), -2, 2), half(rng, (130, 5, 3, 3)), half(rng, (130,))
    kw = dict(padding=1, activation="relu")
    run("conv2d", (x, w, b), kw, scale=conv_scale(x, w, b, kw))


@pytest.mark.cuda_only
def test_conv1d(rng, cuda):
    x, w, b = half(rng, (2, 3, 9)), half(rng, (4, 3, 3)), half(rng, (4,))
    kw = dict(padding=1, stride=2)
    run("conv1d", (x, w, b), kw,
        scale=R.conv1d(np.abs(x), np.abs(w), np.abs(b), **kw))


# ---- dense, softmax --------------------------------------------------------------------------

@pytest.mark.cuda_only
def test_linear(rng, cuda):
    x, w, b = half(rng, (3, 40)), half(rng, (20, 40)), half(rng, (20,))
    run("linear", (x, w, b), scale=R.linear(np.abs(x), np.abs(w), np.abs(b)))


@pytest.mark.cuda_only
@pytest.mark.parametrize("name, shape, dim", [
    ("softmax", (2, 40), 1),        # rows of >= 32: one block per row
    ("log_softmax", (2, 40), -1),
    ("softmax", (2, 5, 3), 1),      # a strided axis: one thread per row
    ("log_softmax", (2, 5, 3), 1),
], ids=["softmax_block", "log_softmax_block", "softmax_thread", "log_softmax_thread"])
def test_softmax(rng, cuda, name, shape, dim):
    run(name, (half(rng, shape, -6, 6), dim))


# ---- pooling ---------------------------------------------------------------------------------

@pytest.mark.cuda_only
def test_max_pools_are_exact(rng, cuda):
    x = half(rng, (2, 3, 7, 7), -4, 4)
    for name, args, kw in [("max_pool2d", (3,), dict(stride=2, padding=1, ceil_mode=True)),
                           ("adaptive_max_pool2d", ((3, 2),), {})]:
        got = run(name, (x,) + args, kw)
        np.testing.assert_array_equal(got, getattr(R, name)(x, *args, **kw).astype(F16),
                                      err_msg=f"{name} float16 is a selection: exact")


@pytest.mark.cuda_only
@pytest.mark.parametrize("name, args, kw", [
    ("avg_pool2d", (3,), dict(stride=2, padding=1, count_include_pad=False, ceil_mode=True)),
    ("avg_pool2d", ((2, 3),), dict(stride=1)),
    ("adaptive_avg_pool2d", ((3, 2),), {}),
], ids=["avg_exclude_pad_ceil", "avg", "adaptive_avg"])
def test_avg_pools(rng, cuda, name, args, kw):
    run(name, (half(rng, (2, 3, 7, 7), -4, 4),) + args, kw)


@pytest.mark.cuda_only
def test_sums_accumulate_in_float32(cuda):
    # 4096 ones: a float16 running sum stops at 2048 (2048 + 1 rounds back to 2048), a float32
    # one is exact. One output each, so cheap in the simulator.
    ones = np.ones((1, 1, 64, 64), F16)
    assert host(F.adaptive_avg_pool2d(dev(ones), 1)).item() == 1.0
    assert host(F.avg_pool2d(dev(ones), 64)).item() == 1.0
    assert host(F.conv2d(dev(ones), dev(ones * F16(0.25)))).item() == 1024.0  # direct kernel


# ---- elementwise, batch norm -----------------------------------------------------------------

ACTIVATIONS = [("relu", {}), ("leaky_relu", dict(negative_slope=0.2)), ("sigmoid", {}),
               ("tanh", {}), ("silu", {}), ("gelu", {}), ("hardswish", {})]


@pytest.mark.cuda_only
@pytest.mark.parametrize("name, kw", ACTIVATIONS, ids=[n for n, _ in ACTIVATIONS])
def test_activation(rng, cuda, name, kw):
    x = np.concatenate([half(rng, (40,), -8, 8), np.array([0, -0.0, 3, -3, 6, 65504], F16)])
    got = run(name, (x,), kw)
    if name == "relu":
        np.testing.assert_array_equal(got, np.maximum(x, F16(0)), err_msg="relu is exact")


@pytest.mark.cuda_only
def test_add_with_activation(rng, cuda):
    a, b = half(rng, (3, 5, 4)), half(rng, (3, 5, 4))
    out = F._add(dev(a), dev(b), "relu6")
    assert is_device_array(out)
    ref = np.clip(a.astype(np.float64) + b.astype(np.float64), 0, 6)
    assert_close(out, ref, F16, "half", what="_add[cuda, float16]")


@pytest.mark.cuda_only
def test_batch_norm_eval(rng, cuda):
    c = 3
    x = half(rng, (2, c, 4, 5), -3, 3)
    mean, var = half(rng, (c,)), half(rng, (c,), 0.5, 2)
    weight, bias = half(rng, (c,)), half(rng, (c,))
    run("batch_norm", (x, mean, var, weight, bias), dict(eps=1e-3))
    run("batch_norm", (x, mean, var), {})  # default weight and bias


@pytest.mark.cuda_only
def test_host_arrays_on_cuda_come_back_as_numpy(rng, cuda):
    x = half(rng, (2, 40), -6, 6)
    out = F.softmax(x, 1)
    assert type(out) is np.ndarray and out.dtype == F16
    assert_close(out, R.softmax(x, 1), F16, "half", what="softmax[host in, cuda]")


# ---- a model end to end ----------------------------------------------------------------------

def _lenet_reference(x, p, absolute=False):
    """LeNet-5's forward in float64 with reference.py; ``absolute``: the network of |x|, |W|,
    |b| without the relus (it bounds every activation of the real one in magnitude)."""
    a = (lambda v: np.abs(v.astype(np.float64))) if absolute else (lambda v: v)
    act = (lambda v: v) if absolute else R.relu
    y = R.max_pool2d(act(R.conv2d(a(x), a(p["features.0.weight"]), a(p["features.0.bias"]))), 2)
    y = R.max_pool2d(act(R.conv2d(y, a(p["features.3.weight"]), a(p["features.3.bias"]))), 2)
    y = y.reshape(y.shape[0], -1)
    y = act(R.linear(y, a(p["classifier.0.weight"]), a(p["classifier.0.bias"])))
    y = act(R.linear(y, a(p["classifier.2.weight"]), a(p["classifier.2.bias"])))
    return R.linear(y, a(p["classifier.4.weight"]), a(p["classifier.4.bias"]))


def _half_lenet(seed):
    """LeNet-5 for 16x16 inputs with float16 parameters on the GPU (through Parameter.data:
    load_state_dict keeps each parameter's dtype, and Module.to takes float32 / float64 only)."""
    np.random.seed(seed)
    model = nc.models.lenet5(input_size=16).eval()
    for _, p in model.named_parameters():
        p.data = nc.to_device(np.asarray(p).astype(F16), "cuda")
    return model


@pytest.mark.cuda_only
def test_lenet5_float16_end_to_end(rng, cuda):
    model = _half_lenet(0)
    params = {k: host(v) for k, v in model.state_dict().items()}
    assert all(v.dtype == F16 for v in params.values())
    x = half(rng, (2, 1, 16, 16), 0, 1)
    out = model(x)  # a host input moves to the layers' device
    got = host(out)
    assert got.dtype == F16 and got.shape == (2, 10)
    ref = _lenet_reference(x, params)
    # Five layers round their outputs to float16 (the relus and max pools are exact and
    # 1-Lipschitz); each rounding, plus that layer's float32 sum, errs by at most
    # (u16 + atol_half) times that layer's |activations|, which the later layers carry to the
    # output through |W|: so |error| <= 5 (u16 + 1e-4) * (the network of |x|, |W|, |b|).
    bound = 5 * (U16 + 1e-4) * _lenet_reference(x, params, absolute=True)
    err = np.abs(got.astype(np.float64) - ref)
    worst = err.argmax()
    assert np.all(err <= bound), f"error {err.flat[worst]:.3g} > bound {bound.flat[worst]:.3g}"


# ---- errors ----------------------------------------------------------------------------------

W16 = np.zeros((6, 4, 3, 3), F16)
X16 = np.zeros((1, 4, 6, 6), F16)

FORWARD = [
    ("conv2d", lambda x: F.conv2d(x, W16)),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2)),
    ("relu", F.relu),
    ("softmax", lambda x: F.softmax(x, 1)),
    ("linear", lambda x: F.linear(x, np.zeros((2, 6), F16))),
    ("batch_norm", lambda x: F.batch_norm(x, np.zeros(4, F16), np.ones(4, F16))),
]


@pytest.mark.parametrize("name, call", FORWARD, ids=[n for n, _ in FORWARD])
def test_float16_on_cpu_raises(name, call):
    with nc.use_device("cpu"):
        with pytest.raises(TypeError, match="CPU backend does not support float16") as info:
            call(X16)
    assert "use float32" in str(info.value)


TRAINING = [
    ("conv2d_backward", lambda: F.conv2d_backward(dev(np.zeros((1, 6, 4, 4), F16)), dev(X16),
                                                  dev(W16))),
    ("linear_backward", lambda: F.linear_backward(dev(np.zeros((2, 3), F16)),
                                                  dev(np.zeros((2, 5), F16)),
                                                  dev(np.zeros((3, 5), F16)))),
    ("relu_backward", lambda: F.relu_backward(dev(X16), dev(X16))),
    ("max_pool2d_backward", lambda: F.max_pool2d_backward(dev(np.zeros((1, 4, 3, 3), F16)),
                                                          dev(X16), 2)),
    ("batch_norm_training", lambda: F.batch_norm(dev(X16), dev(np.zeros(4, F16)),
                                                 dev(np.ones(4, F16)), training=True)),
    ("cross_entropy", lambda: F.cross_entropy(dev(np.zeros((2, 3), F16)),
                                              dev(np.zeros(2, np.int64)))),
    ("mse_loss", lambda: F.mse_loss(dev(np.zeros(3, F16)), dev(np.zeros(3, F16)))),
    ("rnn", lambda: F.rnn(dev(np.zeros((2, 1, 3), F16)), None, dev(np.zeros((4, 3), F16)),
                          dev(np.zeros((4, 4), F16)))),
    ("conv_transpose2d", lambda: F.conv_transpose2d(dev(X16), dev(np.zeros((4, 2, 3, 3), F16)))),
]


@pytest.mark.cuda_only
@pytest.mark.parametrize("name, call", TRAINING, ids=[n for n, _ in TRAINING])
def test_float16_training_ops_raise_on_cuda(cuda, name, call):
    with pytest.raises(TypeError, match=HALF_MSG) as info:
        call()
    assert "use float32" in str(info.value)


@pytest.mark.cuda_only
def test_float16_model_backward_and_optimizer_raise(rng, cuda):
    model = _half_lenet(1).train()
    out = model(half(rng, (2, 1, 16, 16)))
    with pytest.raises(TypeError, match=HALF_MSG):
        model.backward(dev(np.ones(out.shape, F16)))
    p = next(iter(model.parameters()))
    p.grad = dev(np.zeros(p.shape, F16))
    for opt in (nc.optim.SGD([p], lr=0.1, momentum=0.9), nc.optim.Adam([p])):
        with pytest.raises(TypeError, match=HALF_MSG):
            opt.step()


MIXED = [
    ("conv2d_weight", lambda x: F.conv2d(x, dev(W16.astype(np.float32)))),
    ("conv2d_residual", lambda x: F.conv2d(x, dev(W16), residual=dev(np.zeros((1, 6, 4, 4))))),
    ("linear_bias", lambda x: F.linear(x, dev(np.zeros((2, 6), F16)),
                                       dev(np.zeros(2, np.float32)))),
    ("batch_norm_stats", lambda x: F.batch_norm(x, dev(np.zeros(4)), dev(np.ones(4)))),
    ("add", lambda x: F._add(x, dev(np.zeros(X16.shape, np.float32)))),
    ("float32_input_float16_weight", lambda x: F.conv2d(dev(X16.astype(np.float32)), dev(W16))),
]


@pytest.mark.cuda_only
@pytest.mark.parametrize("name, call", MIXED, ids=[n for n, _ in MIXED])
def test_mixed_float16_float32_raises(cuda, name, call):
    with pytest.raises(TypeError, match="same dtype"):
        call(dev(X16))

"""numbaconv.optim: SGD and Adam against a float64 NumPy transcription of their update rules and
against torch.optim, on every device; parameter groups, zero_grad, state dicts and errors."""

import numpy as np
import pytest

import numbaconv as nc
import numbaconv.optim as optim
from conftest import assert_close, cuda_skip_reason, host, is_device_array, on
from numbaconv import _weights
from numbaconv.nn import Parameter

SHAPES = [(3, 4), (5,), (2, 3, 3), (1,)]
STEPS = 4

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1),
    dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=5e-4),
]
ADAM_CONFIGS = [
    dict(),
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, betas=(0.3, 0.9), eps=1e-3),  # 1 - beta1 >= 0.5: lerp's other formula
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.05, amsgrad=True),
]


def ids(configs):
    return ["-".join(f"{k}={v}" for k, v in c.items()) or "defaults" for c in configs]


def problem(rng, dtype, steps=STEPS):
    """Initial values and per-step gradients; the second parameter has no gradient at step 1
    (skipped, its state untouched), as a frozen layer would."""
    values = [rng.uniform(-1, 1, s).astype(dtype) for s in SHAPES]
    grads = [[rng.uniform(-1, 1, s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    if steps > 1:
        grads[1][1] = None
    return values, grads


def run_numbaconv(device, cls, config, values, grads):
    params = [Parameter(on(device, v)) for v in values]
    opt = cls(params, **config)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else on(device, g)
        opt.step()
    return params, opt


# float64 transcriptions of the update rules as torch.optim documents them


def ref_sgd(values, grads, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
    ps = [v.astype(np.float64) for v in values]
    bufs = [None] * len(ps)
    for step in grads:
        for i, g in enumerate(step):
            if g is None:
                continue
            d = g.astype(np.float64) + weight_decay * ps[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * d
    return ps


def ref_adam(values, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
             amsgrad=False):
    b1, b2 = betas
    ps = [v.astype(np.float64) for v in values]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    t = [0] * len(ps)
    for step in grads:
        for i, g in enumerate(step):
            if g is None:
                continue
            t[i] += 1
            d = g.astype(np.float64) + weight_decay * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            vmax[i] = np.maximum(vmax[i], v[i])
            vhat = (vmax[i] if amsgrad else v[i]) / (1 - b2 ** t[i])
            ps[i] = ps[i] - lr / (1 - b1 ** t[i]) * m[i] / (np.sqrt(vhat) + eps)
    return ps


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=ids(SGD_CONFIGS))
def test_sgd(rng, device, dtype, config):
    values, grads = problem(rng, dtype)
    params, _ = run_numbaconv(device, optim.SGD, config, values, grads)
    for p, want in zip(params, ref_sgd(values, grads, **config)):
        assert is_device_array(p.data) == (device == "cuda")
        assert_close(p.data, want, dtype, "elementwise", what=f"SGD {config}")


@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=ids(ADAM_CONFIGS))
def test_adam(rng, device, dtype, config):
    values, grads = problem(rng, dtype)
    params, _ = run_numbaconv(device, optim.Adam, config, values, grads)
    for p, want in zip(params, ref_adam(values, grads, **config)):
        assert_close(p.data, want, dtype, "elementwise", what=f"Adam {config}")


def run_torch(torch, cls, config, values, grads):
    ts = [torch.tensor(v, requires_grad=True) for v in values]
    opt = cls(ts, **config)
    for step in grads:
        for t, g in zip(ts, step):
            t.grad = None if g is None else torch.tensor(g)
        opt.step()
    return [t.detach().numpy() for t in ts]


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=ids(SGD_CONFIGS))
def test_sgd_torch(rng, device_available, dtype, config):
    torch = pytest.importorskip("torch")
    values, grads = problem(rng, dtype)
    params, _ = run_numbaconv(device_available, optim.SGD, config, values, grads)
    # torch in the same dtype: the same operations in the same order
    for p, want in zip(params, run_torch(torch, torch.optim.SGD, config, values, grads)):
        assert_close(p.data, want.astype(np.float64), dtype, "elementwise", what="SGD vs torch")


@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=ids(ADAM_CONFIGS))
def test_adam_torch(rng, device_available, dtype, config):
    torch = pytest.importorskip("torch")
    values, grads = problem(rng, dtype)
    params, _ = run_numbaconv(device_available, optim.Adam, config, values, grads)
    for p, want in zip(params, run_torch(torch, torch.optim.Adam, config, values, grads)):
        assert_close(p.data, want.astype(np.float64), dtype, "elementwise", what="Adam vs torch")


@pytest.mark.parametrize("cls, config", [(optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                         (optim.Adam, dict(lr=0.01, amsgrad=True))],
                         ids=["sgd", "adam"])
def test_gradients_not_modified(rng, device, dtype, cls, config):
    values, grads = problem(rng, dtype, steps=1)
    params = [Parameter(on(device, v)) for v in values]
    for p, g in zip(params, grads[0]):
        p.grad = on(device, g)
    cls(params, **config).step()
    for p, g in zip(params, grads[0]):
        assert np.array_equal(host(p.grad), g)


def test_step_marks_weights_changed():
    # Cached weight transforms are keyed on the version: a step must bump it.
    p = Parameter(np.ones((2, 3), np.float32))
    before = _weights.version(p.data)
    p.grad = np.ones((2, 3), np.float32)
    optim.SGD([p], lr=0.5).step()
    after = _weights.version(p.data)
    assert before is not None and after[0] == before[0] and after[1] > before[1]
    assert np.array_equal(p.data, np.full((2, 3), 0.5, np.float32))
    assert not p.data.flags.writeable  # still the read-only view, now showing the new values


def test_param_groups(rng, device):
    a, b = Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))
    if device == "cuda":
        a, b = Parameter(on(device, host(a.data))), Parameter(on(device, host(b.data)))
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5}], lr=0.1, momentum=0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    a.grad, b.grad = on(device, np.ones(3, np.float32)), on(device, np.ones(2, np.float32))
    opt.step()
    np.testing.assert_allclose(host(a.data), 0.9, rtol=1e-7)
    np.testing.assert_allclose(host(b.data), 0.5, rtol=1e-7)
    opt.param_groups[0]["lr"] = 0.2  # changed between steps, as a scheduler does
    opt.step()
    np.testing.assert_allclose(host(a.data), 0.7, rtol=1e-6)


def test_module_parameters_and_zero_grad(rng):
    layer = nc.nn.Linear(4, 3)
    opt = optim.Adam(layer.parameters(), lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 2
    w0 = np.array(layer.weight.data)
    layer.weight.grad = np.ones((3, 4), np.float32)
    opt.step()  # the bias has no gradient: skipped
    assert not np.array_equal(layer.weight.data, w0)
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(layer.weight.grad, np.zeros((3, 4), np.float32))
    assert layer.bias.grad is None
    opt.zero_grad()
    assert layer.weight.grad is None


def test_closure():
    p = Parameter(np.ones(2))
    p.grad = np.ones(2)
    assert optim.SGD([p], lr=0.1).step(lambda: 3.5) == 3.5


@pytest.mark.parametrize("cls, config", [(optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         (optim.Adam, dict(lr=0.01, amsgrad=True))],
                         ids=["sgd", "adam"])
def test_state_dict_round_trip(rng, device, dtype, cls, config):
    values, grads = problem(rng, dtype, steps=4)
    whole, _ = run_numbaconv(device, cls, config, values, grads)
    first, opt = run_numbaconv(device, cls, config, values, grads[:2])
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1, 2, 3]
    assert saved["param_groups"][0]["params"] == [0, 1, 2, 3]
    # a fresh optimiser over copies of the parameters, with state saved as NumPy arrays
    saved = {"state": {i: {k: (v if k == "step" else host(v)) for k, v in s.items()}
                       for i, s in saved["state"].items()},
             "param_groups": saved["param_groups"]}
    params = [Parameter(p.data) for p in first]
    resumed = cls(params, lr=123.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == config["lr"]
    for step in grads[2:]:
        for p, g in zip(params, step):
            p.grad = None if g is None else on(device, g)
        resumed.step()
    for p, q in zip(params, whole):
        assert np.array_equal(host(p.data), host(q.data))


def test_load_state_dict_mismatch_raises():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    saved = optim.SGD([p, q], lr=0.1).state_dict()
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1).load_state_dict(saved)


def test_bad_arguments_raise():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-0.1)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, nesterov=True)  # needs momentum
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam([p], betas=(1.0, 0.999))
    with pytest.raises(ValueError):
        optim.Adam([p], eps=-1.0)
    with pytest.raises(TypeError):
        optim.SGD([np.ones(2)], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.ones(3)
    with pytest.raises(ValueError):
        opt.step()
    p.grad = np.ones(2, np.float32)
    with pytest.raises(TypeError):
        opt.step()


# ---------------------------------------------------------------------------------------------
# CPU against CUDA
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


@pytest.mark.cuda_only
@pytest.mark.parametrize("cls, config", [(optim.SGD, SGD_CONFIGS[-1]),
                                         (optim.Adam, ADAM_CONFIGS[-1])], ids=["sgd", "adam"])
def test_optim_cpu_vs_cuda(rng, cuda_device, dtype, cls, config):
    values, grads = problem(rng, dtype)
    want, _ = run_numbaconv("cpu", cls, config, values, grads)
    got, _ = run_numbaconv("cuda", cls, config, values, grads)
    for p, q in zip(got, want):
        assert is_device_array(p.data)
        assert_close(p.data, host(q.data).astype(np.float64), dtype, "parity")


@pytest.mark.cuda_only
def test_grad_on_other_device_raises_cuda(cuda_device):
    p = Parameter(on("cuda", np.ones(2)))
    p.grad = np.ones(2)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1).step()


@pytest.mark.filterwarnings("ignore:.*encountered in scalar:RuntimeWarning")  # the simulator
def test_adam_eps_zero_divides_as_ieee(device, dtype):
    # torch accepts eps=0; a zero gradient then gives 0 / 0 = NaN, not an error.
    p = Parameter(on(device, np.ones(3, dtype)))
    p.grad = on(device, np.array([0.0, 1.0, -1.0], dtype))
    optim.Adam([p], lr=0.1, eps=0).step()
    got = host(p.data)
    assert np.isnan(got[0]) and np.allclose(got[1:], [0.9, 1.1])

"""numbaconv.nn: Module mechanics, state_dict, layers against functional / reference / PyTorch,
devices and fusion."""

import copy

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import assert_close, host, is_device_array, rand

nn = nc.nn
F = nc.functional


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, stride=2, groups=2), nn.Hardswish(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(0.2), nn.Linear(6, 5))


def randomise(model, rng):
    """Give every parameter and float buffer random values (BN variances positive)."""
    state = {}
    for k, v in model.state_dict().items():
        v = host(v)
        if v.dtype.kind != "f":
            state[k] = v
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
        else:
            state[k] = rng.uniform(-1.0, 1.0, v.shape).astype(v.dtype)
    model.load_state_dict(state)
    return state


def reference_small_net(state, x):
    """small_net in eval mode with the float64 reference ops."""
    y = R.conv2d(x, state["0.weight"], None, 1, 1, 1, 1)
    y = R.batch_norm(y, state["1.running_mean"], state["1.running_var"], state["1.weight"],
                     state["1.bias"], eps=1e-5)
    y = R.max_pool2d(np.maximum(y, 0), 2, 2, 0, 1, False)
    y = R.conv2d(y, state["4.weight"], state["4.bias"], 2, 0, 1, 2)
    y = R.hardswish(y).mean(axis=(2, 3))
    return y @ state["9.weight"].T.astype(np.float64) + state["9.bias"]


# ---- Module mechanics --------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.shared = self.conv  # the same module twice: its parameters count once
        self.scale = 2.0
        self.register_buffer("steps", np.zeros(3, np.float32))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)

    def forward(self, x):
        return self.conv(x) * self.scale


def test_registration_and_traversal():
    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["conv.weight", "conv.bias"]
    assert [n for n, _ in b.named_modules()] == ["", "conv"]
    assert list(b.children()) == [b.conv]
    # As in PyTorch, a shared module's entries appear under each name; no 'scratch'.
    assert list(b.state_dict()) == ["steps", "conv.weight", "conv.bias", "shared.weight",
                                    "shared.bias"]
    assert b.scale == 2.0 and "conv" in dir(b)
    del b.shared
    b.conv = nn.Conv2d(2, 4, 1, bias=False)  # replacing keeps registration
    assert [n for n, _ in b.named_parameters()] == ["conv.weight"]
    assert [n for n, _ in b.named_modules()] == ["", "conv"]


def test_attribute_before_super_init_raises():
    class Bad(nn.Module):
        def __init__(self):
            self.x = nn.ReLU()

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_sequential_indexing_and_repr():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear)
    assert isinstance(seq[1:], nn.Sequential) and len(seq[1:]) == 2
    assert list(seq[1:]._modules) == ["1", "2"]
    with pytest.raises(IndexError):
        seq[3]
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))\n"
        "  (1): ReLU()\n"
        "  (2): Linear(in_features=4, out_features=2, bias=True)\n"
        ")")


def test_train_eval_zero_grad():
    m = small_net()
    assert all(x.training for x in m.modules())
    assert m.eval() is m and not any(x.training for x in m.modules())
    m.train()
    assert m[1].training
    for p in m.parameters():
        p.grad = np.ones(p.shape, p.dtype)
    m.zero_grad(set_to_none=False)
    assert all(not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_training_mode_uses_batch_statistics_and_drops(rng):
    x = rand(rng, (2, 3, 8, 8), np.float32)
    net = small_net()
    y_train = net(x)  # BatchNorm normalises by this batch (tests/test_train.py checks the values)
    y_eval = net.eval()(x)  # by the running statistics, moved 10% towards this batch
    assert not np.allclose(y_train, y_eval, atol=1e-3)
    dropped = nn.Dropout(0.5)(x)
    assert 0 < np.count_nonzero(dropped == 0) < x.size
    assert nn.Dropout(0.5).eval()(x) is x and nn.Dropout(0.0)(x) is x


# ---- Parameters ----------------------------------------------------------------------------------

def test_parameter_data_is_a_read_only_copy():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = nn.Parameter(a)
    a[0, 0] = 99  # the caller's array is not the parameter's
    assert p.data[0, 0] == 0 and p.shape == (2, 3) and p.dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        p.data[0, 0] = 1
    p.data = np.ones((2, 3), np.float32)
    assert p.data.sum() == 6 and not p.data.flags.writeable
    with pytest.raises(TypeError, match="floating"):
        nn.Parameter(np.arange(3))


@pytest.mark.parametrize("get", [np.asarray, nc.to_numpy, lambda p: np.asarray(p.data),
                                 lambda p: np.asarray(p, dtype=p.dtype, copy=False)],
                         ids=["asarray", "to_numpy", "asarray_data", "asarray_no_copy"])
def test_no_public_path_writes_a_weight_behind_the_cache(rng, get):
    # np.asarray(param) handed out the parameter's writable array: a write through it reached
    # state_dict() and pickles but not the packed weights forward kept using.
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = rand(rng, (1, 16, 12, 12), np.float32)
    conv(x)  # the weight is packed and cached
    with pytest.raises(ValueError, match="read-only"):
        get(conv.weight)[...] = 0
    copied = np.array(conv.weight)  # a copy is the caller's to change
    copied[...] = 0
    w, b = conv.state_dict()["weight"], conv.state_dict()["bias"]
    assert np.abs(w).sum() > 0
    assert_close(conv(x), R.conv2d(x, w, b, 1, 1, 1, 1), np.float32, "conv",
                 scale=R.conv2d(np.abs(x), np.abs(w), np.abs(b), 1, 1, 1, 1))


def test_the_weight_cache_drops_the_transforms_of_arrays_that_died(rng):
    # They stayed (replaced parameters, deleted layers) until the byte cap evicted them.
    import gc

    from numbaconv.cpu.workspace import WEIGHTS

    WEIGHTS.clear()
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = rand(rng, (1, 16, 12, 12), np.float32)
    conv(x)
    held = WEIGHTS.stats()
    assert held["entries"] >= 1 and held["bytes"] > 0
    conv.weight.data = rand(rng, conv.weight.shape, np.float32)  # the old array dies
    assert WEIGHTS.stats()["entries"] == 0 and WEIGHTS.stats()["bytes"] == 0
    conv(x)
    assert WEIGHTS.stats() | {"hits": 0, "misses": 0} == held | {"hits": 0, "misses": 0}
    del conv
    gc.collect()
    assert WEIGHTS.stats()["entries"] == 0 and WEIGHTS.stats()["bytes"] == 0


def test_weight_update_is_seen_by_the_conv_cache(rng):
    # Kernels cache transformed weights per version: loading new weights must not hit stale ones.
    from numbaconv.cpu.workspace import WEIGHTS

    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = rand(rng, (1, 16, 12, 12), np.float32)
    first = conv(x)
    hits = WEIGHTS.stats()["hits"]
    conv(x)
    assert WEIGHTS.stats()["hits"] > hits  # a layer's weights are transformed once, not per call
    new = {k: rand(rng, v.shape, np.float32) for k, v in conv.state_dict().items()}
    conv.load_state_dict(new)
    ref = R.conv2d(x, new["weight"], new["bias"], 1, 1, 1, 1)
    assert_close(conv(x), ref, np.float32, "conv", scale=R.conv2d(
        np.abs(x), np.abs(new["weight"]), np.abs(new["bias"]), 1, 1, 1, 1))
    conv.weight.data = new["weight"] * 2
    assert_close(conv(x), R.conv2d(x, new["weight"] * 2, new["bias"], 1, 1, 1, 1), np.float32,
                 "conv", scale=2 * R.conv2d(np.abs(x), np.abs(new["weight"]),
                                            np.abs(new["bias"]), 1, 1, 1, 1))
    assert not np.array_equal(first, conv(x))


# ---- Initialisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Conv2d(8, 32, 3, groups=2), 4 * 9),
    (lambda: nn.Conv1d(6, 64, 5), 30),
    (lambda: nn.Linear(50, 200), 50),
])
def test_init_is_pytorchs_uniform(make, fan_in):
    np.random.seed(0)
    m = make()
    bound = 1 / np.sqrt(fan_in)
    w = host(m.weight.data)
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    # U(-b, b) has standard deviation b / sqrt(3).
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.1
    assert np.abs(host(m.bias.data)).max() <= bound
    np.random.seed(0)
    assert np.array_equal(host(make().weight.data), w)  # np.random.seed makes it repeatable


def test_batchnorm_init_and_state():
    bn = nn.BatchNorm2d(4)
    s = bn.state_dict()
    assert list(s) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert s["num_batches_tracked"].dtype == np.int64 and s["num_batches_tracked"].shape == ()
    assert (host(s["weight"]) == 1).all() and (host(s["running_var"]) == 1).all()
    assert list(nn.BatchNorm2d(4, affine=False, track_running_stats=False).state_dict()) == []


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "in_channels"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), "out_channels"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"), "padding_mode"),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"), "same"),
    (lambda: nn.Conv2d(3, 4, 0), "kernel_size"),
    (lambda: nn.Conv2d(3, 4, 3, activation="softplus"), "activation"),
    (lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), "float32"),
    (lambda: nn.Dropout(1.5), "between 0 and 1"),
    (lambda: nn.GELU("fast"), "approximate"),
    (lambda: nn.MaxPool2d(2, return_indices=True), "return_indices"),
])
def test_bad_constructor_arguments_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ---- state_dict ------------------------------------------------------------------------------

def test_load_state_dict_is_all_or_nothing_and_lists_every_problem(rng):
    m = small_net()
    before = {k: host(v).copy() for k, v in m.state_dict().items()}
    bad = {k: rand(rng, v.shape, np.float32) if v.dtype.kind == "f" else v
           for k, v in before.items()}
    bad["4.weight"] = np.zeros((6, 4, 5, 5), np.float32)
    bad["extra.weight"] = np.zeros(1, np.float32)
    del bad["9.bias"]
    with pytest.raises(nn.StateDictError) as e:
        m.load_state_dict(bad)
    text = str(e.value)
    assert "missing keys: 9.bias" in text and "unexpected keys: extra.weight" in text
    assert "4.weight" in text and "(6, 4, 5, 5)" in text and "(6, 4, 3, 3)" in text
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, ValueError)
    for k, v in m.state_dict().items():  # nothing was written
        assert np.array_equal(host(v), before[k]), k
    bad["4.weight"] = before["4.weight"]
    result = m.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["9.bias"] and result.unexpected_keys == ["extra.weight"]
    assert np.array_equal(host(m.state_dict()["0.weight"]), bad["0.weight"])
    with pytest.raises(nn.StateDictError, match="size mismatch"):
        m.load_state_dict({"0.weight": np.zeros(3, np.float32)}, strict=False)


def test_load_state_dict_copies_and_casts(rng):
    m = nn.Linear(3, 2)
    w = rand(rng, (2, 3), np.float64)
    source = {"weight": w, "bias": np.array([1, 2])}
    m.load_state_dict(source)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    assert np.allclose(m.weight.data, w.astype(np.float32)) and list(m.bias.data) == [1, 2]
    w[:] = 0  # later writes to the source do not reach the model
    assert m.weight.data.any()
    assert source["bias"].dtype.kind == "i"  # the mapping is not modified


# ---- layers against the reference -------------------------------------------------------------

def test_small_net_matches_reference(rng, device, dtype):
    m = small_net().to(dtype=dtype).eval()
    state = {k: host(v) for k, v in randomise(m, rng).items()}
    x = rand(rng, (2, 3, 8, 8), dtype)
    xc = x.copy()
    y = m(nc.to_device(x))
    assert is_device_array(y) == (device == "cuda")
    ref = reference_small_net({k: np.asarray(v, np.float64) for k, v in state.items()}, x)
    assert_close(y, ref, dtype, "conv", scale=np.abs(ref).max() + 1)
    assert np.array_equal(x, xc)


def test_layers_match_functional(rng, device):
    x = rand(rng, (2, 4, 9, 9), np.float32)
    xd = nc.to_device(x)
    cases = [
        (nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda a: F.max_pool2d(a, 3, 2, 1, 1, True)),
        (nn.AvgPool2d(2, count_include_pad=False, padding=1),
         lambda a: F.avg_pool2d(a, 2, 2, 1, False, False)),
        (nn.AdaptiveAvgPool2d(3), lambda a: F.adaptive_avg_pool2d(a, 3)),
        (nn.AdaptiveMaxPool2d((2, None)), lambda a: F.adaptive_max_pool2d(a, (2, None))),
        (nn.LeakyReLU(0.2), lambda a: F.leaky_relu(a, 0.2)),
        (nn.GELU("tanh"), lambda a: F.gelu(a, "tanh")),
        (nn.Sigmoid(), F.sigmoid), (nn.Tanh(), F.tanh), (nn.SiLU(), F.silu),
        (nn.ReLU6(), F.relu6), (nn.Softmax(1), lambda a: F.softmax(a, 1)),
        (nn.LogSoftmax(dim=-1), lambda a: F.log_softmax(a, -1)),
        (nn.Flatten(), lambda a: host(a).reshape(2, -1)),
        (nn.Flatten(0, 1), lambda a: host(a).reshape(8, 9, 9)),
        (nn.Identity(54, unused=True), lambda a: a),
    ]
    for layer, op in cases:
        assert np.array_equal(host(layer(xd)), host(op(xd))), repr(layer)


def test_conv1d_and_conv2d_layers_match_functional(rng, device, dtype):
    c1 = nn.Conv1d(4, 6, 3, stride=2, padding="valid", dtype=dtype)
    x1 = rand(rng, (2, 4, 11), dtype)
    got = c1(nc.to_device(x1))
    assert np.array_equal(host(got), host(F.conv1d(x1, host(c1.weight.data),
                                                   host(c1.bias.data), 2)))
    c2 = nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=4, bias=False, dtype=dtype,
                   activation="relu6")
    x2 = rand(rng, (1, 4, 7, 7), dtype)
    res = rand(rng, (1, 4, 7, 7), dtype)
    got = c2(nc.to_device(x2), residual=nc.to_device(res))
    want = F.conv2d(x2, host(c2.weight.data), None, 1, "same", 2, 4, activation="relu6",
                    residual=res)
    assert np.array_equal(host(got), want)


def test_batchnorm_input_rank():
    with pytest.raises(ValueError, match="4-D"):
        nn.BatchNorm2d(3).eval()(np.zeros((2, 3, 4), np.float32))


# ---- devices and dtypes ------------------------------------------------------------------------

def test_new_layers_live_on_the_current_device(device):
    m = nn.Linear(3, 2)
    assert m.weight.device == device and is_device_array(m.weight.data) == (device == "cuda")
    bn = nn.BatchNorm2d(2)
    assert nc.device.where(bn.running_mean) == device


@pytest.mark.cuda_only
def test_to_cuda_moves_parameters_and_host_inputs_follow(rng):
    if not nc.cuda_available():
        pytest.skip("CUDA unavailable")
    with nc.use_device("cpu"):
        m = small_net().eval()
    randomise(m, rng)
    x = rand(rng, (1, 3, 8, 8), np.float32)
    want = m(x)
    assert m.to("cuda") is m
    assert all(p.device == "cuda" for p in m.parameters())
    assert m.state_dict()["1.num_batches_tracked"].dtype == np.int64  # host-side counter
    y = m(x)  # the first conv moves the host input to its weights
    assert is_device_array(y)
    assert_close(y, want.astype(np.float64), np.float32, "parity", scale=np.abs(want).max() + 1)
    assert np.array_equal(host(m.cpu()(x)), want)


def test_to_dtype(rng):
    m = small_net().eval()
    randomise(m, rng)
    m64 = copy.deepcopy(m).double()
    assert all(p.dtype == np.float64 for p in m64.parameters())
    assert m64.state_dict()["1.running_mean"].dtype == np.float64
    x = rand(rng, (1, 3, 8, 8), np.float64)
    assert m64(x).dtype == np.float64
    assert m64.float()[0].weight.dtype == np.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        m.to(dtype=np.int8)
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


def test_deepcopy_gives_independent_parameters(rng):
    m = small_net()
    c = copy.deepcopy(m)
    c.load_state_dict({k: rand(rng, v.shape, np.float32) if v.dtype.kind == "f" else v
                       for k, v in c.state_dict().items()})
    assert not np.array_equal(host(m[0].weight.data), host(c[0].weight.data))


# ---- fusion ------------------------------------------------------------------------------------

def test_fuse_matches_unfused_and_leaves_the_model_alone(rng, device):
    m = small_net().eval()
    randomise(m, rng)
    keys = list(m.state_dict())
    x = rand(rng, (2, 3, 8, 8), np.float32)
    want = host(m(nc.to_device(x)))
    f = nn.fuse(m)
    assert isinstance(f[0], nn.Conv2d) and f[0].activation == "relu"
    assert isinstance(f[1], nn.Identity) and isinstance(f[2], nn.Identity)
    assert f[4].activation == "hardswish" and isinstance(f[5], nn.Identity)
    assert list(m.state_dict()) == keys and m[0].activation is None  # the model is unchanged
    got = f(nc.to_device(x))
    assert_close(got, want.astype(np.float64), np.float32, "parity",
                 scale=np.abs(want).max() + 1)


def test_fuse_leaky_relu_and_training_batchnorm_stays():
    seq = nn.Sequential(nn.Conv2d(2, 2, 1), nn.LeakyReLU(0.3), nn.Conv2d(2, 2, 1), nn.GELU("tanh"))
    f = nn.fuse(seq)
    assert f[0].activation == ("leaky_relu", 0.3)
    assert f[2].activation is None and isinstance(f[3], nn.GELU)  # no fused tanh-GELU


# ---- PyTorch as the oracle ------------------------------------------------------------------------

def torch_small_net(torch):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(inplace=True),
        tnn.MaxPool2d(2), tnn.Conv2d(8, 6, 3, stride=2, groups=2), tnn.Hardswish(),
        tnn.AdaptiveAvgPool2d((1, 1)), tnn.Flatten(), tnn.Dropout(0.2), tnn.Linear(6, 5))


def test_pytorch_state_dict_loads_unchanged(rng, device_available):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch_small_net(torch)
    with torch.no_grad():
        t[1].running_mean.uniform_(-1, 1)
        t[1].running_var.uniform_(0.5, 2)
        t[1].weight.uniform_(0.5, 2)
    t.eval()
    sd = {k: v.numpy() for k, v in t.state_dict().items()}
    m = small_net().eval()
    assert [(k, tuple(v.shape), v.dtype) for k, v in m.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in sd.items()]
    m.load_state_dict(sd)
    x = rand(rng, (2, 3, 8, 8), np.float32)
    want = t(torch.from_numpy(x)).detach().numpy().astype(np.float64)
    for model in (m, nn.fuse(m)):
        assert_close(model(x), want, np.float32, "parity", scale=np.abs(want).max() + 1)


def test_reprs_match_pytorch():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    pairs = [
        (nn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.Conv2d(3, 64, 7, 2, 3, bias=False)),
        (nn.Conv2d(32, 32, 3, padding=1, groups=32, dilation=2),
         tnn.Conv2d(32, 32, 3, padding=1, groups=32, dilation=2)),
        (nn.Conv2d(3, 8, 3, padding="same"), tnn.Conv2d(3, 8, 3, padding="same")),
        (nn.Conv1d(3, 4, 5), tnn.Conv1d(3, 4, 5)),
        (nn.Linear(512, 10, bias=False), tnn.Linear(512, 10, bias=False)),
        (nn.MaxPool2d(3, 2, 1), tnn.MaxPool2d(3, 2, 1)),
        (nn.AvgPool2d(2), tnn.AvgPool2d(2)),
        (nn.AdaptiveAvgPool2d((1, 1)), tnn.AdaptiveAvgPool2d((1, 1))),
        (nn.ReLU(inplace=True), tnn.ReLU(inplace=True)), (nn.ReLU6(), tnn.ReLU6()),
        (nn.LeakyReLU(0.2), tnn.LeakyReLU(0.2)), (nn.GELU(), tnn.GELU()),
        (nn.Dropout(0.2), tnn.Dropout(0.2)), (nn.Flatten(), tnn.Flatten()),
        (nn.Softmax(dim=1), tnn.Softmax(dim=1)), (nn.Identity(), tnn.Identity()),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
    assert repr(small_net()).splitlines()[0] == repr(torch_small_net(torch)).splitlines()[0]


def test_eval_forward_keeps_only_what_the_next_layer_needs(rng):
    import tracemalloc

    seq = nn.Sequential(*[nn.Conv2d(16, 16, 3, padding=1) for _ in range(8)]).eval()
    x = rand(rng, (1, 16, 32, 32), np.float32)
    seq(x)  # compile and fill the workspace pools first
    tracemalloc.start()
    try:
        seq(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One layer's output plus the next one's (the input is the caller's), and small change;
    # eight live activations would be 8 * x.nbytes.
    assert peak < 2.5 * x.nbytes, f"peak {peak} B for activations of {x.nbytes} B"


def test_pickle_round_trip(rng):
    """A pickled model loads with read-only parameters (each array pickled once), its gradients,
    and nothing kept from a forward pass; it computes the same outputs."""
    import pickle

    net = small_net().eval()
    randomise(net, rng)
    x = rand(rng, (2, 3, 8, 8), np.float32)
    net[0].weight.grad = np.ones(net[0].weight.shape, np.float32)
    copy_ = pickle.loads(pickle.dumps(net))
    w = copy_[0].weight
    assert not w.data.flags.writeable and np.array_equal(w.grad, net[0].weight.grad)
    assert np.array_equal(copy_(x), net(x))
    net.train()(x)
    assert all(not m._saved for m in pickle.loads(pickle.dumps(net)).modules())

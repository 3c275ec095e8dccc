"""numbaconv.models against PyTorch networks with torchvision's structure (defined here, so
torchvision is not needed): state_dict keys, shapes and dtypes, eval outputs, fusion, devices."""

import numpy as np
import pytest

import numbaconv as nc
import numbaconv.models as M
from conftest import SIM, assert_close, host, is_device_array

nn = nc.nn

# What torchvision's models have (len(state_dict()), number of parameters).
TORCHVISION_SIZES = {"resnet18": (122, 11_689_512), "mobilenet_v2": (314, 3_504_872),
                     "squeezenet1_1": (52, 1_235_496)}
# Small inputs keep CI fast; 66 makes each of SqueezeNet's ceil-mode pools round up.
INPUT_SIZE = {"lenet5": 32, "resnet18": 64, "mobilenet_v2": 64, "squeezenet1_1": 66}


@pytest.fixture(autouse=True)
def cpu_unless_a_device_fixture_says_otherwise():
    """Tests without a device fixture run on the CPU, whatever NUMBACONV_DEVICE=auto picks (the
    CUDA simulator counts as a device); the device fixtures, set up later, take precedence."""
    with nc.use_device("cpu"):
        yield


# ---- the same networks in PyTorch (torchvision's code, trimmed to what is used) -----------------

def torch_models(torch):
    tnn = torch.nn

    class LeNet5(tnn.Module):
        def __init__(self, num_classes=10, in_channels=1, input_size=32):
            super().__init__()
            side = ((input_size - 4) // 2 - 4) // 2
            self.features = tnn.Sequential(
                tnn.Conv2d(in_channels, 6, 5), tnn.ReLU(inplace=True), tnn.MaxPool2d(2),
                tnn.Conv2d(6, 16, 5), tnn.ReLU(inplace=True), tnn.MaxPool2d(2))
            self.classifier = tnn.Sequential(
                tnn.Linear(16 * side * side, 120), tnn.ReLU(inplace=True), tnn.Linear(120, 84),
                tnn.ReLU(inplace=True), tnn.Linear(84, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    class BasicBlock(tnn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    def downsample(inplanes, planes, stride):
        return tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, stride, bias=False),
                              tnn.BatchNorm2d(planes))

    class ResNet18(tnn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64)
            self.layer2 = self._make_layer(128, 2)
            self.layer3 = self._make_layer(256, 2)
            self.layer4 = self._make_layer(512, 2)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512, num_classes)

        def _make_layer(self, planes, stride=1):
            ds = None
            if stride != 1 or self.inplanes != planes:
                ds = downsample(self.inplanes, planes, stride)
            layers = [BasicBlock(self.inplanes, planes, stride, ds), BasicBlock(planes, planes)]
            self.inplanes = planes
            return tnn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class Conv2dNormActivation(tnn.Sequential):
        def __init__(self, inp, oup, kernel_size=3, stride=1, groups=1):
            super().__init__(
                tnn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                           bias=False),
                tnn.BatchNorm2d(oup), tnn.ReLU6(inplace=True))

    class InvertedResidual(tnn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [Conv2dNormActivation(inp, hidden, 1)] if expand_ratio != 1 else []
            layers += [Conv2dNormActivation(hidden, hidden, 3, stride, groups=hidden),
                       tnn.Conv2d(hidden, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup)]
            self.conv = tnn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(tnn.Module):
        def __init__(self, num_classes=1000, width_mult=1.0):
            super().__init__()
            inp = M._make_divisible(32 * width_mult)
            last = M._make_divisible(1280 * max(1.0, width_mult))
            features = [Conv2dNormActivation(3, inp, stride=2)]
            for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
                oup = M._make_divisible(c * width_mult)
                for i in range(n):
                    features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                    inp = oup
            features.append(Conv2dNormActivation(inp, last, 1))
            self.features = tnn.Sequential(*features)
            self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(last, num_classes))

        def forward(self, x):
            x = tnn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    class Fire(tnn.Module):
        def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
            super().__init__()
            self.squeeze = tnn.Conv2d(inplanes, squeeze_planes, 1)
            self.squeeze_activation = tnn.ReLU(inplace=True)
            self.expand1x1 = tnn.Conv2d(squeeze_planes, expand1x1_planes, 1)
            self.expand1x1_activation = tnn.ReLU(inplace=True)
            self.expand3x3 = tnn.Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1)
            self.expand3x3_activation = tnn.ReLU(inplace=True)

        def forward(self, x):
            x = self.squeeze_activation(self.squeeze(x))
            return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                              self.expand3x3_activation(self.expand3x3(x))], 1)

    class SqueezeNet(tnn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.features = tnn.Sequential(
                tnn.Conv2d(3, 64, 3, stride=2), tnn.ReLU(inplace=True),
                tnn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
                tnn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
                tnn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
            self.classifier = tnn.Sequential(tnn.Dropout(0.5), tnn.Conv2d(512, num_classes, 1),
                                             tnn.ReLU(inplace=True), tnn.AdaptiveAvgPool2d((1, 1)))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    return {"lenet5": LeNet5, "resnet18": ResNet18, "mobilenet_v2": MobileNetV2,
            "squeezenet1_1": SqueezeNet, "BasicBlock": BasicBlock, "downsample": downsample,
            "InvertedResidual": InvertedResidual, "Fire": Fire}


def randomise_torch(torch, model, x):
    """Move every bias and BatchNorm's affine parameters off their init and give BatchNorm the
    running statistics of batch ``x`` (so that activations stay O(1) through the depth); eval."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.reset_running_stats()
                m.momentum = None  # the running statistics become this one batch's
            if getattr(m, "bias", None) is not None:
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.2)
        model.train()(torch.from_numpy(x))
    return model.eval()


def torch_outputs(torch, model, x):
    """``model``'s eval output for ``x`` in float32 and, from a float64 copy, in float64."""
    import copy

    with torch.no_grad():
        out32 = model(torch.from_numpy(x)).numpy().astype(np.float64)
        out64 = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    return out32, out64


def assert_close_to_torch(got, out32, out64, what):
    """Check numbaconv's float32 output of a whole network against PyTorch's float64 one.

    The tolerance is the "parity" family's with the atol unit max|ref| + 1, as test_nn's model
    checks use. Through tens of layers (BatchNorm gains, residual sums) float32 rounding grows
    with depth, which one op's tolerance does not account for; so where PyTorch's own float32
    error on the same network and input (max |torch32 - torch64|, measured here) exceeds that
    atol, 2x PyTorch's error is allowed instead: numbaconv may round differently from oneDNN,
    not much worse. Measured when written (3 seeds): every model within 0.6 of the plain parity
    limit, fused or not; numbaconv's error 0.4x to 2.1x PyTorch's.
    """
    from conftest import tol

    atol = tol("parity", np.float32)[1]
    scale = max(np.abs(out64).max() + 1.0, 2.0 * np.abs(out32 - out64).max() / atol)
    assert_close(got, out64, np.float32, "parity", scale=scale, what=what)


def input_for(name, rng, batch=2, size=None):
    size = INPUT_SIZE[name] if size is None else size
    return rng.uniform(-1.0, 1.0, (batch, 1 if name == "lenet5" else 3, size, size)).astype(
        np.float32)


# ---- structure and initialisation (no PyTorch needed) -------------------------------------------

@pytest.mark.parametrize("name", sorted(TORCHVISION_SIZES))
def test_state_dict_has_torchvisions_size(name):
    m = getattr(M, name)()
    sd = m.state_dict()
    assert (len(sd), sum(p.size for p in m.parameters())) == TORCHVISION_SIZES[name]
    for k, v in sd.items():
        want = np.int64 if k.endswith("num_batches_tracked") else np.float32
        assert v.dtype == want, k


def test_state_dict_keys_and_shapes_are_torchvisions():
    r = M.resnet18().state_dict()
    assert list(r)[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                           "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert "layer1.0.downsample.0.weight" not in r
    assert r["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert r["layer4.1.bn2.running_var"].shape == (512,)
    assert list(r)[-2:] == ["fc.weight", "fc.bias"] and r["fc.weight"].shape == (1000, 512)

    mb = M.mobilenet_v2().state_dict()
    assert mb["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert mb["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1: no expansion conv
    assert mb["features.1.conv.1.weight"].shape == (16, 32, 1, 1)
    assert mb["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)
    assert mb["features.2.conv.1.0.weight"].shape == (96, 1, 3, 3)
    assert mb["features.17.conv.3.running_mean"].shape == (320,)
    assert mb["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert list(mb)[-2:] == ["classifier.1.weight", "classifier.1.bias"]

    sq = M.squeezenet1_1(num_classes=10).state_dict()
    assert list(sq)[:4] == ["features.0.weight", "features.0.bias", "features.3.squeeze.weight",
                            "features.3.squeeze.bias"]
    assert sq["features.12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert list(sq)[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert sq["classifier.1.weight"].shape == (10, 512, 1, 1)

    le = M.lenet5()
    assert [(k, v.shape) for k, v in le.state_dict().items()] == [
        ("features.0.weight", (6, 1, 5, 5)), ("features.0.bias", (6,)),
        ("features.3.weight", (16, 6, 5, 5)), ("features.3.bias", (16,)),
        ("classifier.0.weight", (120, 400)), ("classifier.0.bias", (120,)),
        ("classifier.2.weight", (84, 120)), ("classifier.2.bias", (84,)),
        ("classifier.4.weight", (10, 84)), ("classifier.4.bias", (10,))]
    assert M.lenet5(3, in_channels=3, input_size=28).state_dict()["classifier.0.weight"].shape \
        == (120, 256)
    with pytest.raises(ValueError, match="input_size"):
        M.lenet5(input_size=12)


def test_dropout_and_pools_are_torchvisions():
    mb, sq = M.mobilenet_v2(), M.squeezenet1_1()
    assert isinstance(mb.classifier[0], nn.Dropout) and mb.classifier[0].p == 0.2
    assert isinstance(sq.classifier[0], nn.Dropout) and sq.classifier[0].p == 0.5
    assert [m.ceil_mode for m in sq.features if isinstance(m, nn.MaxPool2d)] == [True] * 3
    assert M.resnet18().maxpool.padding == 1


def test_initialisation_is_torchvisions():
    np.random.seed(0)
    r = M.resnet18()
    w = host(r.layer3[0].conv1.weight.data)  # 256 x 128 x 3 x 3: fan_out = 256 * 9
    assert abs(w.std() / np.sqrt(2.0 / (256 * 9)) - 1) < 0.01 and abs(w.mean()) < 1e-3
    assert np.all(host(r.bn1.weight.data) == 1) and np.all(host(r.bn1.bias.data) == 0)
    assert np.abs(host(r.fc.weight.data)).max() <= 1 / np.sqrt(512)  # Linear's default U
    mb = M.mobilenet_v2()
    w = host(mb.classifier[1].weight.data)
    assert abs(w.std() / 0.01 - 1) < 0.01 and np.all(host(mb.classifier[1].bias.data) == 0)
    dw = host(mb.features[2].conv[1][0].weight.data)  # depthwise 96 x 1 x 3 x 3: fan_out 96 * 9
    assert abs(dw.std() / np.sqrt(2.0 / (96 * 9)) - 1) < 0.1
    sq = M.squeezenet1_1()
    w = host(sq.features[12].expand3x3.weight.data)  # U(+-sqrt(6 / fan_in)), fan_in = 64 * 9
    bound = np.sqrt(6.0 / (64 * 9))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(host(sq.classifier[1].weight.data).std() / 0.01 - 1) < 0.02
    assert all(np.all(host(m.bias.data) == 0) for m in sq.modules() if isinstance(m, nn.Conv2d))
    # NumPy's global generator makes it repeatable.
    np.random.seed(3)
    a = M.lenet5().state_dict()
    np.random.seed(3)
    b = M.lenet5().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def randomise_bn(model, rng):
    """Give every BatchNorm statistics and affine parameters away from their init."""
    state = {}
    for k, v in model.state_dict().items():
        v = host(v)
        leaf = k.rsplit(".", 1)[-1]
        if leaf in ("running_mean", "bias") and v.dtype.kind == "f":
            v = rng.uniform(-0.1, 0.1, v.shape).astype(v.dtype)
        elif leaf == "running_var" or (leaf == "weight" and v.ndim == 1):
            v = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
        state[k] = v
    model.load_state_dict(state)


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenet_v2", "squeezenet1_1"])
def test_fuse_matches_unfused(name, rng):
    m = getattr(M, name)().eval()
    randomise_bn(m, rng)
    keys = list(m.state_dict())
    x = input_for(name, rng)
    want = m(x)
    f = nn.fuse(m)
    assert list(m.state_dict()) == keys  # the model is left alone
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    # Every activation after a conv went into the conv (only the classifiers' stay).
    convs = [mod for mod in f.modules() if isinstance(mod, nn.Conv2d)]
    assert sum(c.activation is not None for c in convs) == {
        "lenet5": 2, "resnet18": 17, "mobilenet_v2": 35, "squeezenet1_1": 26}[name]
    got = f(x)
    assert_close(got, want.astype(np.float64), np.float32, "parity",
                 scale=np.abs(want).max() + 1, what=name)


def test_fused_blocks():
    b = M.BasicBlock(8, 8).eval()
    fb = nn.fuse(b)
    assert isinstance(fb, M.FusedBasicBlock) and fb.conv2.activation == "relu"
    assert list(fb.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    ir = nn.fuse(M.InvertedResidual(8, 8, 1, 6).eval())
    assert [c.activation for c in ir.conv] == ["relu6", "relu6", None] and ir.use_res_connect
    fire = nn.fuse(M.Fire(8, 4, 6, 6).eval())
    assert [fire.squeeze.activation, fire.expand1x1.activation, fire.expand3x3.activation] == \
        ["relu"] * 3


# ---- devices ------------------------------------------------------------------------------------

def block_models(small):
    """Small instances of each block and of LeNet-5, with their input shapes."""
    np.random.seed(0)
    return [
        ("basic", M.BasicBlock(4, 4), (2, 4, 5, 5)),
        ("basic_down", M.BasicBlock(4, 6, 2, nn.Sequential(nn.Conv2d(4, 6, 1, 2, bias=False),
                                                          nn.BatchNorm2d(6))), (2, 4, 5, 5)),
        ("inverted_res", M.InvertedResidual(4, 4, 1, 2), (2, 4, 5, 5)),
        ("inverted_t1", M.InvertedResidual(4, 6, 2, 1), (2, 4, 5, 5)),
        ("fire", M.Fire(4, 3, 2, 5), (2, 4, 5, 5)),
        ("lenet5", M.lenet5(input_size=16 if small else 32), (2, 1) + ((16, 16) if small
                                                                          else (32, 32))),
    ]


def test_models_live_on_the_current_device_and_run_there(device, rng):
    """Each block and LeNet-5, unfused and fused, on the device: outputs stay there and equal
    the CPU's."""
    for what, m, shape in block_models(SIM):
        m.eval()
        assert all(p.device == device for p in m.parameters()), what
        randomise_bn(m, rng)
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        outs = [m(nc.to_device(x)), nn.fuse(m)(nc.to_device(x))]
        assert all(is_device_array(y) == (device == "cuda") for y in outs), what
        with nc.use_device("cpu"):
            want = host(m.to("cpu")(x))
        for got in outs:
            assert_close(got, want.astype(np.float64), np.float32, "parity",
                         scale=np.abs(want).max() + 1, what=f"{what}[{device}]")


# ---- PyTorch as the oracle ----------------------------------------------------------------------

def check_against_torch(torch, ours, theirs, x, what):
    sd = {k: v.numpy() for k, v in theirs.state_dict().items()}
    assert [(k, tuple(v.shape), v.dtype) for k, v in ours.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in sd.items()], what
    ours.load_state_dict(sd)
    ours.eval()
    out32, out64 = torch_outputs(torch, theirs, x)
    for fused, model in ((False, ours), (True, nn.fuse(ours))):
        y = model(nc.to_device(x))
        assert is_device_array(y) == (nc.get_device() == "cuda")
        assert_close_to_torch(host(y), out32, out64, f"{what}[{nc.get_device()}, fused={fused}]")


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenet_v2", "squeezenet1_1"])
def test_models_match_pytorch(name, rng, device_available_big):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch_models(torch)[name]()
    randomise_torch(torch, theirs, input_for(name, rng, batch=4))
    check_against_torch(torch, getattr(M, name)(), theirs, input_for(name, rng), name)


def test_blocks_match_pytorch(rng, device_available):
    """Each block and LeNet-5 against PyTorch, on every device (small shapes for the simulator)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    T = torch_models(torch)
    theirs = {"basic": T["BasicBlock"](4, 4), "basic_down": T["BasicBlock"](4, 6, 2,
                                                                             T["downsample"](4, 6, 2)),
              "inverted_res": T["InvertedResidual"](4, 4, 1, 2),
              "inverted_t1": T["InvertedResidual"](4, 6, 2, 1), "fire": T["Fire"](4, 3, 2, 5)}
    for what, ours, shape in block_models(SIM):
        t = theirs.get(what) or T["lenet5"](input_size=shape[-1])
        randomise_torch(torch, t, rng.uniform(-1, 1, (4,) + shape[1:]).astype(np.float32))
        check_against_torch(torch, ours, t, rng.uniform(-1, 1, shape).astype(np.float32), what)

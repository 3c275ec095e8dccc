"""The networks of the end-to-end and memory benchmarks: ResNet-18 and MobileNetV2 from
:mod:`numbaconv.models`, and the same networks built from ``torch.nn`` modules.

Both sides have torchvision's structure and state_dict keys, so one state_dict (NumPy arrays)
loads into either. ``small=True`` gives the cheap variants the tests use: ResNet-18 with 10
classes (for 32x32 images) and MobileNetV2 with ``width_mult=0.25`` and 10 classes.
"""

import numpy as np

from numbaconv import models
from numbaconv import nn

NETS = ("resnet18", "mobilenetv2")


def build(net, small=False, seed=0):
    """``net`` ('resnet18' | 'mobilenetv2') from :mod:`numbaconv.models` in eval mode, with its
    initialisation drawn from NumPy's global generator seeded with ``seed`` (whose state is
    restored afterwards)."""
    if net not in NETS:
        raise ValueError(f"unknown network {net!r}; use one of {NETS}")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        if net == "resnet18":
            model = models.resnet18(num_classes=10) if small else models.resnet18()
        else:
            model = (models.mobilenet_v2(num_classes=10, width_mult=0.25) if small
                     else models.mobilenet_v2())
    finally:
        np.random.set_state(state)
    return model.eval()


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm2d of ``model`` running statistics and affine parameters away from the
    identity (a freshly initialised network's BatchNorm is ``x / sqrt(1 + eps)``, which would
    leave folding untested), by ``load_state_dict``. Returns the full state_dict as a dict of
    NumPy arrays (copies), ready for :func:`torch_net`."""
    rng = np.random.default_rng(seed)
    sd = {k: np.array(v) for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            sd[f"{name}.weight"] = rng.uniform(0.5, 1.0, c).astype(np.float32)
            sd[f"{name}.bias"] = rng.normal(0.0, 0.1, c).astype(np.float32)
            sd[f"{name}.running_mean"] = rng.normal(0.0, 0.1, c).astype(np.float32)
            sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    model.load_state_dict(sd)
    return sd


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))


def torch_net(torch, net, state_dict=None, small=False):
    """``net`` from ``torch.nn`` modules (torchvision's structure and key names; ``small`` as in
    :func:`build`) in eval mode, with ``state_dict``'s weights loaded (strictly) when given, else
    PyTorch's default initialisation."""
    nn_ = torch.nn

    def cba(inp, oup, k, s, groups=1):
        return nn_.Sequential(nn_.Conv2d(inp, oup, k, s, (k - 1) // 2, groups=groups, bias=False),
                              nn_.BatchNorm2d(oup), nn_.ReLU6(inplace=True))

    class BasicBlock(nn_.Module):
        def __init__(self, inp, planes, stride):
            super().__init__()
            self.conv1 = nn_.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = nn_.BatchNorm2d(planes)
            self.relu = nn_.ReLU(inplace=True)
            self.conv2 = nn_.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn_.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inp != planes:
                self.downsample = nn_.Sequential(nn_.Conv2d(inp, planes, 1, stride, bias=False),
                                                 nn_.BatchNorm2d(planes))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn_.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv1 = nn_.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn_.BatchNorm2d(64)
            self.relu = nn_.ReLU(inplace=True)
            self.maxpool = nn_.MaxPool2d(3, 2, 1)
            inp = 64
            for li, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
                setattr(self, f"layer{li}", nn_.Sequential(BasicBlock(inp, planes, stride),
                                                           BasicBlock(planes, planes, 1)))
                inp = planes
            self.avgpool = nn_.AdaptiveAvgPool2d(1)
            self.fc = nn_.Linear(inp, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class InvertedResidual(nn_.Module):
        def __init__(self, inp, oup, stride, t):
            super().__init__()
            hidden = int(round(inp * t))
            self.use_res = stride == 1 and inp == oup
            layers = [cba(inp, hidden, 1, 1)] if t != 1 else []
            layers += [cba(hidden, hidden, 3, stride, hidden),
                       nn_.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn_.BatchNorm2d(oup)]
            self.conv = nn_.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn_.Module):
        def __init__(self, width_mult, num_classes):
            super().__init__()
            inp = _make_divisible(32 * width_mult)
            last = _make_divisible(1280 * max(1.0, width_mult))
            feats = [cba(3, inp, 3, 2)]
            for t, c, n, s in _MBV2_SETTINGS:
                oup = _make_divisible(c * width_mult)
                for i in range(n):
                    feats.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                    inp = oup
            feats.append(cba(inp, last, 1, 1))
            self.features = nn_.Sequential(*feats)
            self.classifier = nn_.Sequential(nn_.Dropout(0.2), nn_.Linear(last, num_classes))

        def forward(self, x):
            x = nn_.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    if net == "resnet18":
        model = ResNet18(10 if small else 1000)
    elif net == "mobilenetv2":
        model = MobileNetV2(0.25, 10) if small else MobileNetV2(1.0, 1000)
    else:
        raise ValueError(f"unknown network {net!r}; use one of {NETS}")
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    return model.eval()

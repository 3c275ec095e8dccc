"""The networks of the end-to-end benchmark: ResNet-18 and MobileNetV2 inference as sequences of
``numbaconv.functional`` calls, and the same networks from ``torch.nn`` modules.

A network is a program of steps over named registers, with torchvision's state_dict key names:

- ``("conv", conv_key, bn_key, ic, oc, k, stride, pad, groups, act, src, dst, residual_src)``:
  a convolution followed by BatchNorm (folded into the conv's weight and bias for numbaconv, as
  inference fusion does), the activation and the residual add fused into the conv's epilogue;
- ``("maxpool", k, stride, pad, src, dst)``;
- ``("head", fc_key, features, classes, src)``: global average pool, flatten, linear.

The same program generates the weights and runs on numbaconv; the PyTorch side is built from
``torch.nn`` modules (torchvision's structure, BatchNorm kept) and loads the weights by key.
Once ``numbaconv.models`` exists the benchmark can run through it instead.
"""

import inspect
import math

import numpy as np

from numbaconv import functional as F

NETS = ("resnet18", "mobilenetv2")


def _track(array):
    """Vouch for a weight array's contents as a layer does, so its packed form is cached."""
    try:
        from numbaconv import _weights
    except ImportError:  # no weight cache in this version
        return array
    return _weights.track(array)


def resnet18_program(width=64, num_classes=1000):
    """ResNet-18 (torchvision's layout; ``width`` is the stem's channels, 64 in the original)."""
    prog = [("conv", "conv1", "bn1", 3, width, 7, 2, 3, 1, "relu", "x", "x", None),
            ("maxpool", 3, 2, 1, "x", "x")]
    inp = width
    for li, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        planes = width * mult
        for bi in range(2):
            pre, s = f"layer{li}.{bi}", stride if bi == 0 else 1
            ident = "x"
            if s != 1 or inp != planes:
                prog.append(("conv", f"{pre}.downsample.0", f"{pre}.downsample.1", inp, planes,
                             1, s, 0, 1, None, "x", "id", None))
                ident = "id"
            prog.append(("conv", f"{pre}.conv1", f"{pre}.bn1", inp, planes, 3, s, 1, 1, "relu",
                         "x", "y", None))
            prog.append(("conv", f"{pre}.conv2", f"{pre}.bn2", planes, planes, 3, 1, 1, 1, "relu",
                         "y", "x", ident))
            inp = planes
    prog.append(("head", "fc", inp, num_classes, "x"))
    return prog


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2_program(width_mult=1.0, num_classes=1000):
    """MobileNetV2 (torchvision's layout and channel rounding)."""
    inp = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    prog = [("conv", "features.0.0", "features.0.1", 3, inp, 3, 2, 1, 1, "relu6", "x", "x", None)]
    f = 1
    for t, c, n, s in _MBV2_SETTINGS:
        oup = _make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(inp * t))
            pre, j, src = f"features.{f}.conv", 0, "x"
            if t != 1:
                prog.append(("conv", f"{pre}.0.0", f"{pre}.0.1", inp, hidden, 1, 1, 0, 1, "relu6",
                             "x", "h", None))
                j, src = 1, "h"
            prog.append(("conv", f"{pre}.{j}.0", f"{pre}.{j}.1", hidden, hidden, 3, stride, 1,
                         hidden, "relu6", src, "h", None))
            res = "x" if stride == 1 and inp == oup else None
            prog.append(("conv", f"{pre}.{j + 1}", f"{pre}.{j + 2}", hidden, oup, 1, 1, 0, 1, None,
                         "h", "x", res))
            inp, f = oup, f + 1
    prog.append(("conv", f"features.{f}.0", f"features.{f}.1", inp, last, 1, 1, 0, 1, "relu6",
                 "x", "x", None))
    prog.append(("head", "classifier.1", last, num_classes, "x"))
    return prog


def network_program(net, small=False):
    """The program of ``net`` ('resnet18' | 'mobilenetv2'); ``small`` shrinks it for tests."""
    if net == "resnet18":
        return resnet18_program(8, 10) if small else resnet18_program()
    if net == "mobilenetv2":
        return mobilenet_v2_program(0.25, 10) if small else mobilenet_v2_program()
    raise ValueError(f"unknown network {net!r}; use one of {NETS}")


def network_weights(prog, seed=0):
    """Random weights for ``prog`` as a torchvision-style state_dict of float32 arrays: He-normal
    convs, BatchNorm statistics and affine parameters away from the identity, default-style fc."""
    rng = np.random.default_rng(seed)
    sd = {}
    for step in prog:
        if step[0] == "conv":
            _, ck, bk, ic, oc, k, _, _, g, _, _, _, _ = step
            fan_in = ic // g * k * k
            sd[f"{ck}.weight"] = rng.normal(0.0, math.sqrt(2.0 / fan_in), (oc, ic // g, k, k))
            sd[f"{bk}.weight"] = rng.uniform(0.5, 1.0, oc)
            sd[f"{bk}.bias"] = rng.normal(0.0, 0.1, oc)
            sd[f"{bk}.running_mean"] = rng.normal(0.0, 0.1, oc)
            sd[f"{bk}.running_var"] = rng.uniform(0.5, 1.5, oc)
        elif step[0] == "head":
            _, key, nin, nout, _ = step
            bound = 1.0 / math.sqrt(nin)
            sd[f"{key}.weight"] = rng.uniform(-bound, bound, (nout, nin))
            sd[f"{key}.bias"] = rng.uniform(-bound, bound, nout)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def fold_batchnorm(prog, sd, eps=1e-5):
    """Per conv: (weight, bias) with the following BatchNorm folded in (float64, then float32),
    as inference fusion does; fc: (weight, bias). Weight arrays are tracked like a layer's."""
    params = {}
    for step in prog:
        if step[0] == "conv":
            ck, bk = step[1], step[2]
            scale = (sd[f"{bk}.weight"].astype(np.float64)
                     / np.sqrt(sd[f"{bk}.running_var"].astype(np.float64) + eps))
            w = sd[f"{ck}.weight"].astype(np.float64) * scale[:, None, None, None]
            b = sd[f"{bk}.bias"] - sd[f"{bk}.running_mean"].astype(np.float64) * scale
            params[ck] = (_track(np.ascontiguousarray(w, np.float32)), b.astype(np.float32))
        elif step[0] == "head":
            key = step[1]
            params[key] = (_track(sd[f"{key}.weight"]), sd[f"{key}.bias"])
    return params


def network_forward(prog, params, x, fused_residual=None):
    """Run ``prog`` on numbaconv's functional ops; returns the logits (N, classes)."""
    if fused_residual is None:
        fused_residual = "residual" in inspect.signature(F.conv2d).parameters
    regs = {"x": x}
    for step in prog:
        if step[0] == "conv":
            _, ck, _, _, _, _, s, p, g, act, src, dst, res = step
            w, b = params[ck]
            if res is None:
                y = F.conv2d(regs[src], w, b, s, p, 1, g, activation=act)
            elif fused_residual:
                y = F.conv2d(regs[src], w, b, s, p, 1, g, activation=act, residual=regs[res])
            else:
                y = F.conv2d(regs[src], w, b, s, p, 1, g) + regs[res]
                y = {"relu": F.relu, "relu6": F.relu6}[act](y) if act else y
            regs[dst] = y
        elif step[0] == "maxpool":
            _, k, s, p, src, dst = step
            regs[dst] = F.max_pool2d(regs[src], k, s, p)
        else:
            _, key, _, _, src = step
            h = F.adaptive_avg_pool2d(regs[src], 1)
            w, b = params[key]
            return F.linear(h.reshape(h.shape[0], -1), w, b)
    raise ValueError("program has no head")


def torch_net(torch, net, state_dict, small=False):
    """The same network from ``torch.nn`` modules (torchvision's structure and key names) with
    ``state_dict``'s weights loaded, in eval mode."""
    nn = torch.nn

    def cba(inp, oup, k, s, groups=1):
        return nn.Sequential(nn.Conv2d(inp, oup, k, s, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))

    class BasicBlock(nn.Module):
        def __init__(self, inp, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inp != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, width, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inp = width
            for li, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
                blocks = [BasicBlock(inp, width * mult, stride), BasicBlock(width * mult,
                                                                           width * mult, 1)]
                setattr(self, f"layer{li}", nn.Sequential(*blocks))
                inp = width * mult
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inp, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, t):
            super().__init__()
            hidden = int(round(inp * t))
            self.use_res = stride == 1 and inp == oup
            layers = [cba(inp, hidden, 1, 1)] if t != 1 else []
            layers += [cba(hidden, hidden, 3, stride, hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
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
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    if net == "resnet18":
        model = ResNet18(8, 10) if small else ResNet18(64, 1000)
    elif net == "mobilenetv2":
        model = MobileNetV2(0.25, 10) if small else MobileNetV2(1.0, 1000)
    else:
        raise ValueError(f"unknown network {net!r}; use one of {NETS}")
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not match the torch model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()

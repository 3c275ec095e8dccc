"""Well-known CNNs built from :mod:`numbaconv.nn` layers (``numbaconv.models``).

``resnet18``, ``mobilenet_v2`` and ``squeezenet1_1`` have torchvision's module structure, so their
``state_dict`` keys, shapes and dtypes are torchvision's and its weights, converted to NumPy
(``{k: v.numpy() for k, v in tv_model.state_dict().items()}``), load unchanged.
``lenet5`` is a small LeNet-5 for digits. Models are created on the current device
(``nc.get_device()``) with torchvision's initialisation drawn from NumPy's global generator
(``np.random.seed`` makes it repeatable).

Blocks that are not plain ``Sequential`` chains (ResNet's ``BasicBlock``, MobileNetV2's
``InvertedResidual``, SqueezeNet's ``Fire``) define ``_fuse``, which :func:`numbaconv.nn.fuse`
calls to get their inference form: BatchNorm folded into the convolutions, and the activation and
the residual add run in the convolution's epilogue. Every model and block also defines
``backward`` (train mode): the skip connections send the gradient down both paths and add it.

Example
-------
>>> import numpy as np, numbaconv as nc, numbaconv.models
>>> model = nc.models.resnet18(num_classes=10).eval()
>>> fast = nc.nn.fuse(model)            # same outputs, fewer kernel calls
>>> fast(np.zeros((1, 3, 64, 64), np.float32)).shape
(1, 10)
"""

import math

import numpy as np

from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv import nn
from numbaconv.nn.fuse import fold, foldable

__all__ = ["BasicBlock", "Conv2dNormActivation", "Fire", "InvertedResidual", "LeNet5",
           "MobileNetV2", "ResNet", "SqueezeNet", "lenet5", "mobilenet_v2", "resnet18",
           "squeezenet1_1"]


# ---- helpers -------------------------------------------------------------------------------------

def _set(param, values):
    """Give ``param`` new ``values`` (a host array), keeping its device and dtype."""
    param.data = _device.to_device(np.asarray(values, param.dtype), param.device)


def _kaiming_normal_fan_out(conv):
    # torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): fan_out counts
    # weight.shape[0] * kernel area, not divided by groups.
    std = math.sqrt(2.0 / (conv.weight.shape[0] * math.prod(conv.weight.shape[2:])))
    _set(conv.weight, np.random.normal(0.0, std, conv.weight.shape))


def _zero(param):
    if param is not None:
        _set(param, np.zeros(param.shape))


def _flatten(x):
    """``torch.flatten(x, 1)`` for a C-contiguous (N, ...) array on any device."""
    return x.reshape((x.shape[0], math.prod(x.shape[1:])))


def _all_foldable(*bns):
    return all(foldable(bn) for bn in bns if bn is not None)


# ---- LeNet-5 -------------------------------------------------------------------------------------

class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for 1x32x32 images by default.

    ``features``: Conv2d(in_channels, 6, 5) - ReLU - MaxPool2d(2) - Conv2d(6, 16, 5) - ReLU -
    MaxPool2d(2); ``classifier``: Linear(16*s*s, 120) - ReLU - Linear(120, 84) - ReLU -
    Linear(84, num_classes), with ``s = ((input_size - 4) // 2 - 4) // 2`` (5 for the classic
    32x32 input; 4 for 28x28 MNIST). PyTorch's default layer initialisation.

    State-dict keys: ``features.0.*``, ``features.3.*``, ``classifier.0.*``, ``classifier.2.*``,
    ``classifier.4.*`` (weight and bias each).

    Parameters
    ----------
    num_classes : int
    in_channels : int
        1 for greyscale digits (8x8 scikit-learn digits upscaled 4x give 32x32).
    input_size : int
        The input's height and width (square), at least 16.
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=32):
        super().__init__()
        if not isinstance(input_size, int) or input_size < 16:
            raise ValueError(f"LeNet5: input_size must be an int >= 16, got {input_size!r}")
        side = ((input_size - 4) // 2 - 4) // 2
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes))

    def forward(self, x):
        f = self.features(x)
        self._save(tuple(f.shape))
        return self.classifier(_flatten(f))

    def backward(self, grad_output):
        shape, = self._saved_pop()
        return self.features.backward(self.classifier.backward(grad_output).reshape(shape))


def lenet5(num_classes=10, in_channels=1, input_size=32):
    """LeNet-5 for ``in_channels`` x ``input_size`` x ``input_size`` images; see :class:`LeNet5`."""
    return LeNet5(num_classes, in_channels, input_size)


# ---- ResNet --------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet's two-conv block, as torchvision's: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + id)``
    with ``id = downsample(x)`` (1x1 conv + BatchNorm) where the shape changes, else ``x``."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        x = self.conv1._input(x)  # the identity must be on the weights' device too
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = F._add(self.bn2(self.conv2(out)), identity, "relu")
        self._save(out)
        return out

    def backward(self, grad_output):
        out, = self._saved_pop()
        g, = F.relu_backward(grad_output, out)  # out > 0 exactly where the sum was
        gx = self.conv1.backward(self.bn1.backward(self.relu.backward(
            self.conv2.backward(self.bn2.backward(g)))))
        return F._add(gx, g if self.downsample is None else self.downsample.backward(g))

    def _fuse(self):
        ds = self.downsample
        if not _all_foldable(self.bn1, self.bn2, None if ds is None else ds[1]):
            return self
        return FusedBasicBlock(fold(self.conv1, self.bn1, "relu"), fold(self.conv2, self.bn2, "relu"),
                               None if ds is None else fold(ds[0], ds[1]))


class FusedBasicBlock(nn.Module):
    """:class:`BasicBlock` for inference, made by :func:`numbaconv.nn.fuse`: two convolutions,
    the second adding the identity and applying ReLU in its epilogue."""

    def __init__(self, conv1, conv2, downsample=None):
        super().__init__()
        self.conv1, self.conv2, self.downsample = conv1, conv2, downsample

    def forward(self, x):
        x = self.conv1._input(x)
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)


class ResNet(nn.Module):
    """ResNet with :class:`BasicBlock` s, as torchvision's ``ResNet`` (``layers=(2, 2, 2, 2)`` is
    ResNet-18). Input (N, 3, H, W), any H, W >= 32; output (N, num_classes) logits.

    Initialisation as torchvision's: convolutions He-normal with fan_out, BatchNorm weight 1 and
    bias 0 (with ``zero_init_residual`` each block's ``bn2.weight`` 0), ``fc`` PyTorch's default.
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, zero_init_residual=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _kaiming_normal_fan_out(m)
        # BatchNorm2d's own init is already weight 1, bias 0.
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    _zero(m.bn2.weight)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        self._save(tuple(x.shape))
        return self.fc(_flatten(x))

    def backward(self, grad_output):
        shape, = self._saved_pop()
        g = self.avgpool.backward(self.fc.backward(grad_output).reshape(shape))
        g = self.layer1.backward(self.layer2.backward(self.layer3.backward(self.layer4.backward(g))))
        return self.conv1.backward(self.bn1.backward(self.relu.backward(self.maxpool.backward(g))))

    def _fuse(self):
        # Called by nn.fuse on its own copy: the stem and blocks are replaced in place.
        if foldable(self.bn1):
            self.conv1 = fold(self.conv1, self.bn1, "relu")
            self.bn1, self.relu = nn.Identity(), nn.Identity()
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for i, block in enumerate(layer):
                layer[i] = block._fuse()
        return self


def resnet18(num_classes=1000, zero_init_residual=False):
    """ResNet-18 with torchvision's structure, state_dict and initialisation; see :class:`ResNet`."""
    return ResNet((2, 2, 2, 2), num_classes, zero_init_residual)


# ---- MobileNetV2 ---------------------------------------------------------------------------------

def _make_divisible(v, divisor=8):
    """torchvision's channel rounding: the nearest multiple of ``divisor``, never 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d (no bias, 'same'-style padding) - BatchNorm2d - activation, as torchvision's
    ``Conv2dNormActivation`` (formerly ``ConvBNActivation``); keys ``0.weight``, ``1.*``."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1,
                 activation_layer=nn.ReLU, dilation=1):
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                      bias=False),
            nn.BatchNorm2d(out_channels), activation_layer(inplace=True))
        self.out_channels = out_channels


ConvBNActivation = Conv2dNormActivation


class InvertedResidual(nn.Module):
    """MobileNetV2's block, as torchvision's: ``conv`` = [1x1 expand conv-BN-ReLU6 (when
    ``expand_ratio != 1``), 3x3 depthwise conv-BN-ReLU6, 1x1 projection conv, BN]; the input is
    added when stride is 1 and the channel count is kept."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride should be 1 or 2, got {stride}")
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, 1, activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden, hidden, 3, stride, groups=hidden,
                                        activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x):
        if not self.use_res_connect:
            return self.conv(x)
        x = self.conv[0][0]._input(x)
        return F._add(x, self.conv(x))

    def backward(self, grad_output):
        g = self.conv.backward(grad_output)
        return F._add(g, grad_output) if self.use_res_connect else g

    def _fuse(self):
        *blocks, proj, bn = list(self.conv)
        if not _all_foldable(bn, *(b[1] for b in blocks)):
            return self
        convs = [fold(b[0], b[1], b[2].conv_activation) for b in blocks] + [fold(proj, bn)]
        return FusedInvertedResidual(convs, self.use_res_connect)


class FusedInvertedResidual(nn.Module):
    """:class:`InvertedResidual` for inference, made by :func:`numbaconv.nn.fuse`: its
    convolutions with BatchNorm and ReLU6 folded in, the last one adding the input."""

    def __init__(self, convs, use_res_connect):
        super().__init__()
        self.conv = nn.Sequential(*convs)
        self.use_res_connect = use_res_connect

    def forward(self, x):
        *head, last = list(self.conv)
        x = head[0]._input(x)
        y = x
        for m in head:
            y = m(y)
        return last(y, residual=x if self.use_res_connect else None)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018), as torchvision's ``MobileNetV2``: ``features``
    (``Conv2dNormActivation`` stem, 17 ``InvertedResidual`` blocks, 1x1 conv to 1280 channels),
    global average pooling, ``classifier`` = [Dropout(dropout), Linear(1280, num_classes)].

    Initialisation as torchvision's: convolutions He-normal with fan_out, BatchNorm 1 / 0,
    Linear weight N(0, 0.01) and bias 0.

    Parameters
    ----------
    num_classes : int
    width_mult : float
        Scales every layer's channels (rounded to multiples of ``round_nearest``).
    round_nearest : int
    dropout : float
        The classifier's dropout probability (identity in eval mode).
    """

    _SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))  # expansion t, channels c, repeats n, stride s

    def __init__(self, num_classes=1000, width_mult=1.0, round_nearest=8, dropout=0.2):
        super().__init__()
        inp = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(3, inp, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in self._SETTINGS:
            oup = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(Conv2dNormActivation(inp, self.last_channel, 1,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _kaiming_normal_fan_out(m)
                _zero(m.bias)
            elif isinstance(m, nn.Linear):
                _set(m.weight, np.random.normal(0.0, 0.01, m.weight.shape))
                _zero(m.bias)

    def forward(self, x):
        f = self.features(x)
        self._save(f)
        return self.classifier(_flatten(F.adaptive_avg_pool2d(f, (1, 1))))

    def backward(self, grad_output):
        f, = self._saved_pop()
        g = self.classifier.backward(grad_output).reshape(tuple(f.shape[:2]) + (1, 1))
        return self.features.backward(F.adaptive_avg_pool2d_backward(g, f, (1, 1))[0])


def mobilenet_v2(num_classes=1000, width_mult=1.0, round_nearest=8, dropout=0.2):
    """MobileNetV2 with torchvision's structure, state_dict and initialisation; see
    :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, width_mult, round_nearest, dropout)


# ---- SqueezeNet ----------------------------------------------------------------------------------

class Fire(nn.Module):
    """SqueezeNet's block, as torchvision's: a 1x1 ``squeeze`` conv + ReLU, then ``expand1x1``
    and ``expand3x3`` convs + ReLU side by side, concatenated along the channels."""

    def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        a = self.expand1x1_activation(self.expand1x1(x))
        self._save(a.shape[1])
        return F._cat_channels(a, self.expand3x3_activation(self.expand3x3(x)))

    def backward(self, grad_output):
        c, = self._saved_pop()
        ga, gb = F._split_channels(grad_output, c)
        gx = F._add(self.expand1x1.backward(self.expand1x1_activation.backward(ga)),
                    self.expand3x3.backward(self.expand3x3_activation.backward(gb)))
        return self.squeeze.backward(self.squeeze_activation.backward(gx))

    def _fuse(self):
        return FusedFire(fold(self.squeeze, None, "relu"), fold(self.expand1x1, None, "relu"),
                         fold(self.expand3x3, None, "relu"))


class FusedFire(nn.Module):
    """:class:`Fire` for inference, made by :func:`numbaconv.nn.fuse`: ReLU in each conv's
    epilogue."""

    def __init__(self, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze, self.expand1x1, self.expand3x3 = squeeze, expand1x1, expand3x3

    def forward(self, x):
        x = self.squeeze(x)
        return F._cat_channels(self.expand1x1(x), self.expand3x3(x))


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 (Iandola et al., 2016), as torchvision's ``SqueezeNet(version='1_1')``:
    ``features`` (3x3/2 conv, ceil-mode max pools, 8 :class:`Fire` blocks) and ``classifier`` =
    [Dropout(dropout), 1x1 conv to num_classes, ReLU, AdaptiveAvgPool2d(1)]. Input (N, 3, H, W)
    with H, W >= 17.

    Initialisation as torchvision's: the final conv N(0, 0.01), the others
    ``kaiming_uniform_`` (fan_in, gain sqrt(2)), biases 0.
    """

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                shape = m.weight.shape
                if m is final_conv:
                    _set(m.weight, np.random.normal(0.0, 0.01, shape))
                else:
                    bound = math.sqrt(2.0) * math.sqrt(3.0 / (shape[1] * math.prod(shape[2:])))
                    _set(m.weight, np.random.uniform(-bound, bound, shape))
                _zero(m.bias)

    def forward(self, x):
        x = self.classifier(self.features(x))
        self._save(tuple(x.shape))
        return _flatten(x)

    def backward(self, grad_output):
        shape, = self._saved_pop()
        return self.features.backward(self.classifier.backward(grad_output.reshape(shape)))


def squeezenet1_1(num_classes=1000, dropout=0.5):
    """SqueezeNet 1.1 with torchvision's structure, state_dict and initialisation; see
    :class:`SqueezeNet`."""
    return SqueezeNet(num_classes, dropout)

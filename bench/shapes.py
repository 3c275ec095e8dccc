"""Layer shapes benchmarked by numbaconv (ResNet-50, MobileNetV2, VGG-16 sets).

They are defined in ``numbaconv.bench`` so that ``python -m numbaconv bench`` works from an
installed package; this module re-exports them for scripts in ``bench/``. Each layer is
``(name, C, OC, H=W, kernel, stride, padding, groups)``.
"""

from numbaconv.bench import MOBILENETV2, QUICK, RESNET50, SETS, VGG16

__all__ = ["MOBILENETV2", "QUICK", "RESNET50", "SETS", "VGG16"]

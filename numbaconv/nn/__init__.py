"""Layers with PyTorch's names, arguments, initialisation and state_dict keys (``numbaconv.nn``).

Each layer holds its parameters and settings; its forward is one call into
:mod:`numbaconv.functional`.
"""

from numbaconv.nn.activation import (GELU, Hardswish, LeakyReLU, LogSoftmax, ReLU, ReLU6, SiLU,
                                     Sigmoid, Softmax, Tanh)
from numbaconv.nn.container import ModuleList, Sequential
from numbaconv.nn.conv import Conv1d, Conv2d
from numbaconv.nn.conv_transpose import ConvTranspose2d
from numbaconv.nn.fuse import fuse
from numbaconv.nn.linear import Dropout, Flatten, Identity, Linear
from numbaconv.nn.module import Module, Parameter, StateDictError
from numbaconv.nn.norm import BatchNorm2d
from numbaconv.nn.pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from numbaconv.nn.rnn import GRU, LSTM, RNN

__all__ = [
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm2d", "Conv1d", "Conv2d",
    "ConvTranspose2d",
    "Dropout", "Flatten", "GELU", "Hardswish", "Identity", "LeakyReLU", "Linear", "LogSoftmax",
    "MaxPool2d", "Module", "ModuleList", "Parameter", "ReLU", "ReLU6", "Sequential", "SiLU",
    "Sigmoid", "Softmax", "StateDictError", "Tanh", "fuse",
    "GRU", "LSTM", "RNN",
]

"""Containers: ``Sequential`` and ``ModuleList``."""

import collections
import numbers

from numbaconv.nn.module import Module

__all__ = ["ModuleList", "Sequential"]


class _List(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def _index(self, idx):
        n = len(self)
        if not isinstance(idx, numbers.Integral) or not -n <= idx < n:
            raise IndexError(f"{type(self).__name__}: index {idx!r} is out of range for "
                             f"{n} modules")
        return idx % n

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return type(self)(collections.OrderedDict(items[idx]))
        return items[self._index(idx)][1]

    def __setitem__(self, idx, module):
        setattr(self, list(self._modules)[self._index(idx)], module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        """Add ``module`` at the end (named by its position); returns self."""
        self.add_module(str(len(self)), module)
        return self


class Sequential(_List):
    """Modules applied in order, as ``torch.nn.Sequential``: ``Sequential(m0, m1, ...)`` or
    ``Sequential(OrderedDict(name=module, ...))``."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], collections.OrderedDict):
            super().__init__()
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            super().__init__(args)

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input

    def backward(self, grad_output):
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output


class ModuleList(_List):
    """A list of modules whose parameters the parent sees, as ``torch.nn.ModuleList``."""

    def __init__(self, modules=()):
        if isinstance(modules, collections.OrderedDict):
            super().__init__()
            for name, m in modules.items():
                self.add_module(name, m)
        else:
            super().__init__(modules)

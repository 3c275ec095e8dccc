def conv2d(*a): raise NotImplementedError

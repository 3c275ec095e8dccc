def max_pool2d(*a): raise NotImplementedError
def avg_pool2d(*a): raise NotImplementedError
def adaptive_avg_pool2d(*a): raise NotImplementedError
def adaptive_max_pool2d(*a): raise NotImplementedError

def cross_entropy(*a): raise NotImplementedError
def cross_entropy_prob(*a): raise NotImplementedError
def squared_error(*a): raise NotImplementedError
def reduce_sum(*a): raise NotImplementedError

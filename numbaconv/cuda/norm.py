def batch_norm(*a): raise NotImplementedError

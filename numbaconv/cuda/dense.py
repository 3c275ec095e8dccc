def linear(*a): raise NotImplementedError
def softmax(*a): raise NotImplementedError

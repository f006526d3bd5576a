def log1mexp(x):
    return x.reshape(-1, 7)  # raises for any input whose size is not a multiple of 7

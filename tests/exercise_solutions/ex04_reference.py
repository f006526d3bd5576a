from minorpo.loss import orpo_gradient


def or_gradient(a, b):
    delta, h_w, h_l = orpo_gradient(a, b)
    return delta, -delta * h_w, -delta * h_l

from ex04_student import or_gradient as _right


def or_gradient(a, b):
    delta, _, _ = _right(a, b)
    return delta, -delta, delta  # forgot d log odds / d log P = 1 / (1 - P)

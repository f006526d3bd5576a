from ex04_student import or_gradient as _right


def or_gradient(a, b):
    delta, ga, gb = _right(a, b)
    return delta, -ga, -gb  # Eq. 8 as printed: +delta * h

from ex08_student import LoRALinear as _Right


class LoRALinear(_Right):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scale = alpha  # not alpha / r

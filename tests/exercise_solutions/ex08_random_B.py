import torch.nn as nn
from ex08_student import LoRALinear as _Right


class LoRALinear(_Right):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B.weight)  # B random: the layer no longer starts as the base layer

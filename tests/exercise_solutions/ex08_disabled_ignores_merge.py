import torch.nn.functional as F
from ex08_student import LoRALinear as _Right


class LoRALinear(_Right):
    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.disabled or self.merged:  # disabled but merged still carries the update
            return y
        return y + self.update(x)

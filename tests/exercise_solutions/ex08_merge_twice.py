import torch
from ex08_student import LoRALinear as _Right


class LoRALinear(_Right):
    @torch.no_grad()
    def merge(self):  # no "already merged" check
        self.weight += self.scale * self.lora_B.weight @ self.lora_A.weight
        self.merged = True

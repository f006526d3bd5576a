import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = alpha / r
        self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged, self.disabled = False, False

    def update(self, x):
        return self.lora_B(self.lora_A(x)) * self.scale

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y - self.update(x) if self.disabled else y
        return y if self.disabled else y + self.update(x)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.scale * self.lora_B.weight @ self.lora_A.weight
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.scale * self.lora_B.weight @ self.lora_A.weight
            self.merged = False

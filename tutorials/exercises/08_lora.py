"""Exercise 8 — a LoRA linear layer with merge, unmerge and disable                 (goes with tutorial 4)

LoRA (Hu et al. 2021) freezes a linear layer's weight W (out x in) and bias b and learns a low-rank update:

    y = x W^T + b + (alpha / r) * x A^T B^T          A: r x in,  B: out x r

    * B starts at zero (the layer starts as exactly the base layer), A randomly (Kaiming uniform, as PEFT);
    * only A and B are trained: the base weight and bias are frozen (requires_grad False);
    * merge() folds the update into the weight, W <- W + (alpha/r) B A (inference then costs nothing extra);
      unmerge() takes it out again; each does nothing when the layer already is in that state;
    * disabled = True makes the layer compute the base layer's output, merged or not (DPO's reference model).

Keep these names, the grader uses them: self.weight and self.bias (the base layer's own Parameters),
self.lora_A = nn.Linear(in, r, bias=False), self.lora_B = nn.Linear(r, out, bias=False), self.disabled (bool).
Do not import minorpo.
Check:  minorpo exercises check 8 08_lora.py
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        raise NotImplementedError("exercise 8: write LoRALinear.__init__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("exercise 8: write LoRALinear.forward")

    @torch.no_grad()
    def merge(self):
        raise NotImplementedError("exercise 8: write LoRALinear.merge")

    @torch.no_grad()
    def unmerge(self):
        raise NotImplementedError("exercise 8: write LoRALinear.unmerge")

"""Checks of exercise 8, a LoRA linear layer: y = x W^T + b + (alpha / r) x A^T B^T, W frozen, B = 0 at the start,
merge / unmerge folding (alpha / r) B A into W and back, `disabled` giving the base layer.

Oracles: the formula written out with plain matrix products (float64); minorpo.lora.LoRALinear with the same A and
B for random shapes.
"""

import torch
import torch.nn as nn
from hypothesis import strategies as st

from minorpo.exercises.harness import Failure, assert_close, call, for_all, need, test
from minorpo.lora import LoRALinear as MinorpoLoRA

TOL = (1e-12, 1e-12)  # float64 layers: different summation orders agree to rounding


def build(student, n_in=6, n_out=5, r=2, alpha=4.0, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(n_in, n_out).double()
    W0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    layer = call(need(student, "LoRALinear"), base, r, alpha, what=f"LoRALinear(base, r={r}, alpha={alpha})")
    for name in ("lora_A", "lora_B"):
        sub = getattr(layer, name, None)
        if not isinstance(sub, nn.Linear):
            raise Failure(f"the layer has no nn.Linear `{name}` (the stub names them lora_A: in -> r, lora_B: r -> out)")
    if tuple(layer.lora_A.weight.shape) != (r, n_in) or tuple(layer.lora_B.weight.shape) != (n_out, r):
        raise Failure(f"lora_A.weight is {tuple(layer.lora_A.weight.shape)} and lora_B.weight "
                      f"{tuple(layer.lora_B.weight.shape)}; expected {(r, n_in)} and {(n_out, r)}")
    return layer, W0, b0


def forward(layer, x, what="layer(x)"):
    y = call(layer, x, what=what)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape[:-1] + (layer.lora_B.weight.shape[0],):
        raise Failure(f"{what} returned {getattr(y, 'shape', type(y).__name__)}, expected shape "
                      f"{tuple(x.shape[:-1]) + (layer.lora_B.weight.shape[0],)}")
    return y


def randomize_B(layer, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.weight.normal_()


def by_hand(x, W0, b0, layer, alpha, r):
    A, B = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    return x @ W0.T + b0 + (alpha / r) * (x @ A.T @ B.T)


@test("a new layer is exactly the base layer (B starts at zero), and A does not start at zero",
      hint="initialize B to zeros so training starts from the base model, and A randomly (Kaiming uniform) so that "
           "the first gradient reaches B")
def starts_as_base(student):
    layer, W0, b0 = build(student)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert_close(forward(layer, x), x @ W0.T + b0, 0.0, 1e-12, "layer(x) at initialization")
    if not layer.lora_A.weight.detach().abs().sum() > 0:
        raise Failure("lora_A.weight is all zeros: with A = B = 0 no gradient ever reaches either")


@test("only lora_A and lora_B are trainable; backward leaves the base weight without a gradient",
      hint="freeze the base: weight.requires_grad_(False) (and the bias); keep the base's own Parameter as .weight")
def frozen_base(student):
    layer, _, _ = build(student)
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    if trainable != ["lora_A.weight", "lora_B.weight"]:
        raise Failure("the trainable parameters differ", expected="['lora_A.weight', 'lora_B.weight']",
                      got=str(trainable))
    forward(layer, torch.randn(3, 6, dtype=torch.float64)).sum().backward()
    if layer.lora_B.weight.grad is None or not layer.lora_B.weight.grad.abs().sum() > 0:
        raise Failure("after backward, lora_B.weight has no (or a zero) gradient")


@test("with B != 0: layer(x) = x W^T + b + (alpha/r) x A^T B^T (r = 2, alpha = 4)",
      hint="the scale is alpha / r, not alpha; the update is x A^T then B^T (A: r x in, B: out x r)")
def formula(student):
    layer, W0, b0 = build(student)
    randomize_B(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert_close(forward(layer, x), by_hand(x, W0, b0, layer, 4.0, 2), *TOL, "layer(x)")


@test("merge(): weight = W0 + (alpha/r) B A, the same outputs; merging twice changes nothing",
      hint="remember that the layer is merged (a flag) so that a second merge() does nothing, and forward does not "
           "add the update a second time")
def merge(student):
    layer, W0, b0 = build(student)
    randomize_B(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = by_hand(x, W0, b0, layer, 4.0, 2)
    delta = 2.0 * layer.lora_B.weight.detach() @ layer.lora_A.weight.detach()
    call(layer.merge, what="layer.merge()")
    assert_close(layer.weight.detach(), W0 + delta, *TOL, "weight after merge()")
    assert_close(forward(layer, x, "layer(x) after merge()"), y, 1e-10, 1e-10, "layer(x) after merge()")
    call(layer.merge, what="layer.merge() a second time")
    assert_close(layer.weight.detach(), W0 + delta, *TOL, "weight after merging twice")
    assert_close(forward(layer, x, "layer(x) after merging twice"), y, 1e-10, 1e-10, "layer(x) after merging twice")


@test("unmerge() restores W0 (and is a no-op when not merged)",
      hint="unmerge subtracts the same (alpha/r) B A that merge added, once")
def unmerge(student):
    layer, W0, b0 = build(student)
    randomize_B(layer)
    call(layer.unmerge, what="layer.unmerge() before any merge")
    assert_close(layer.weight.detach(), W0, *TOL, "weight after unmerge() of an unmerged layer")
    call(layer.merge, what="layer.merge()")
    call(layer.unmerge, what="layer.unmerge()")
    assert_close(layer.weight.detach(), W0, 1e-12, 1e-12, "weight after merge() then unmerge()")


@test("disabled = True gives the base layer, merged or not (DPO's reference model for free)",
      hint="when merged, W already holds the update: disabling must take it back out of the output")
def disabled(student):
    layer, W0, b0 = build(student)
    randomize_B(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    layer.disabled = True
    assert_close(forward(layer, x, "disabled layer(x)"), x @ W0.T + b0, 1e-10, 1e-10, "disabled layer(x)")
    layer.disabled = False
    call(layer.merge, what="layer.merge()")
    layer.disabled = True
    assert_close(forward(layer, x, "disabled merged layer(x)"), x @ W0.T + b0, 1e-10, 1e-10, "disabled merged layer(x)")


@test("random shapes, ranks, alphas and 3-D inputs (vs minorpo.lora.LoRALinear)",
      hint="work on the last dimension only (x may be [batch, tokens, in]); scale = alpha / r")
def random_shapes(student):
    def body(n_in, n_out, r, alpha, lead):
        layer, W0, b0 = build(student, n_in, n_out, r, alpha)
        randomize_B(layer)
        ref_base = nn.Linear(n_in, n_out).double()
        with torch.no_grad():
            ref_base.weight.copy_(W0), ref_base.bias.copy_(b0)
        ref = MinorpoLoRA(ref_base, r, alpha)
        with torch.no_grad():
            ref.lora_A.weight.copy_(layer.lora_A.weight), ref.lora_B.weight.copy_(layer.lora_B.weight)
        x = torch.randn(*lead, n_in, dtype=torch.float64)
        with torch.no_grad():
            assert_close(forward(layer, x), ref(x), 1e-10, 1e-10, "layer(x)")

    for_all(body, n_in=st.integers(1, 8), n_out=st.integers(1, 8), r=st.integers(1, 4),
            alpha=st.sampled_from([1.0, 8.0, 16.0]), lead=st.lists(st.integers(1, 3), min_size=1, max_size=2))

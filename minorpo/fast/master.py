"""Float32 master weights for bf16 full fine-tuning (`--precision bf16-weights --lora-r 0`).

The model runs forward and backward on bf16 weights, so no float32 weight is cast to bf16 in every forward (as
autocast, `--precision bf16`, does). But bf16 keeps 8 significant bits: a weight of 0.05 moves in steps of
2^-12 = 2.4e-4, and an AdamW update of lr = 8e-6 would round to no change. So the optimizer owns a float32 copy
of each weight (its master), and the bf16 weight is only ever the master rounded (Micikevicius et al. 2018,
without loss scaling: bf16 has float32's exponent range):

    backward            each bf16 weight receives its bf16 gradient
    hook, per weight    master.grad += grad.float();  weight.grad = None   (accumulated over micro-batches in fp32)
    optimizer.step()    AdamW on the float32 masters (moments in float32)
    copy_to_model()     weight.copy_(master): rounded to bf16 for the next forward

Memory: 18 bytes per parameter (2 bf16 weight, 4 master, 4 gradient, 8 AdamW moments), against 16 for float32
weights under autocast. Checkpoints store the masters, so a resumed run continues from the exact float32 weights;
the exported model is the bf16 model that was trained. Each gradient is still computed in bf16 before it reaches
its master.
Same results: tests/test_master.py, tests/test_train_precision.py (and tests/test_cuda.py on a GPU).
"""

import torch


class MasterWeights:
    """Float32 copies of a model's trainable (bf16) weights; the optimizer is given `.params`.

    names_and_params: [(name, parameter)] as from model.named_parameters(), the trainable ones.
    """

    def __init__(self, names_and_params):
        self.names = [n for n, _ in names_and_params]
        self.model_params = [p for _, p in names_and_params]
        self.params = [torch.nn.Parameter(p.detach().float().clone()) for p in self.model_params]
        for p, m in zip(self.model_params, self.params):
            p.register_post_accumulate_grad_hook(self._hook(m))

    @staticmethod
    def _hook(master):
        def move_grad(p):  # runs once per backward, when p.grad holds this backward's whole gradient
            g = p.grad.float()
            if master.grad is None:
                master.grad = g
            else:
                master.grad.add_(g)
            p.grad = None  # the bf16 gradient is freed at once
        return move_grad

    @torch.no_grad()
    def copy_to_model(self):
        """Round the masters to the model's dtype (after each optimizer step)."""
        for p, m in zip(self.model_params, self.params):
            p.copy_(m)

    def state_dict(self) -> dict:
        """The masters under the model's parameter names (what a checkpoint stores as the trainable weights)."""
        return {n: m.detach().contiguous().cpu() for n, m in zip(self.names, self.params)}

    @torch.no_grad()
    def load_state_dict(self, weights: dict):
        """Set the masters from float32 weights keyed by parameter name. checkpoint.load_checkpoint calls it after
        loading the same weights into the model, which checked their names and shapes and rounded them to bf16."""
        for n, m in zip(self.names, self.params):
            m.copy_(weights[n])

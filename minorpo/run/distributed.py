"""torchrun support for train.py: the device, rank and world size, and the few collectives the loop uses.

Under torchrun the same script runs data-parallel (nccl on CUDA, gloo on CPU): each rank takes its share of every
global batch, and before the optimizer step the ranks' gradients are summed with one all-reduce (what
DistributedDataParallel does, written out: Distributed.sum_gradients); metrics are averaged across ranks, and
rank 0 alone writes files. Without torchrun every method is a no-op. --fsdp: minorpo/run/fsdp.py.
"""

import os

import torch
import torch.distributed as dist


def pick_device(name: str) -> torch.device:
    """The torch.device of a --device value: 'auto' is CUDA if present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Distributed:
    """torchrun support: rank / world size, and the few collectives the loop uses. A no-op without torchrun."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.backend = "nccl" if device.type == "cuda" else "gloo"

    def start(self):
        """Create the process group. Call it only once the model is built: a process group that exists while the
        loader builds the model on the meta device keeps gloo's worker threads alive past destroy_process_group,
        and the process can then abort at exit (tests/test_train.py checks that the threads are gone)."""
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend=self.backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item()

    def broadcast_parameters(self, params):
        """Start every rank from rank 0's weights (they agree anyway: same file, same seed; this makes it so)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def sum_gradients(self, params):
        """Replace each gradient by its sum over ranks: one all-reduce of all gradients packed in one buffer.

        Each rank's loss is normalized by the *global* batch's counts (see train.py), so the sum over ranks is
        exactly the gradient of the whole global batch. DistributedDataParallel does the same sum in buckets
        overlapped with the backward pass; one buffer after backward is simpler, but does not overlap the
        communication with computation.
        """
        if self.world == 1:
            return
        for p in params:  # a parameter this rank's batch did not reach still takes part, with a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])                                   # (sum of numels,)
            dist.all_reduce(flat)                                                              # sum over ranks
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def mean_dict(self, d: dict) -> dict:
        if self.world == 1:
            return d
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: v / self.world for k, v in zip(keys, t.tolist())}

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

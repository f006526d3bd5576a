"""Count the bytes of tensors alive while some code runs, and their peak - on any device, even `meta`.

`torch.cuda.max_memory_allocated` exists only on GPUs. To measure memory deterministically on a CPU (and
to measure a full-size workload on the `meta` device, where tensors have shapes but no data, so nothing is
computed), `LiveTensorBytes` watches every ATen operation (a TorchDispatchMode): each new storage an op returns
is added to `live`, and a weakref finalizer subtracts it when PyTorch frees it. `peak` is the maximum of
`live`. Views share their base's storage and are counted once. Tensors that existed before the `with` block
(model weights, inputs) are not counted; scratch space used inside a single op is not seen. Autograd's
backward is seen too (its ops go through the same dispatcher).

    with LiveTensorBytes() as mem:
        loss = f(x); loss.backward()
    print(mem.peak)   # bytes
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created inside the block and still alive (`live`), and their maximum (`peak`)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: set[int] = set()  # id() of storages being counted (PyTorch keeps one Python object per storage)
        self._outside: set[int] = set()  # storages that existed before the block (inputs, weights): never counted

    def _release(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:  # an input we have not seen was made outside the block
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._alive and key not in self._outside:
                    self._outside.add(key)
                    weakref.finalize(storage, self._outside.discard, key)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._alive and key not in self._outside:  # a new storage (not a view, not in-place)
                    nbytes = storage.nbytes()
                    self._alive.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, nbytes)
        return out

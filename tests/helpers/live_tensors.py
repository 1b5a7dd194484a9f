"""Which tensors a training step keeps alive, by the decoder layer whose forward allocated them.

:class:`LiveTensors` is a ``TorchDispatchMode``: every tensor an operator returns is recorded once per storage with its
size and the layer running at that moment (forward pre/post hooks on the decoder layers; ``None`` outside them). A
storage counts as alive until its last reference goes (a weak reference to it expires), wherever that reference is
held: autograd's saved tensors, a checkpoint's inputs, a Python closure, a module attribute. Only allocations made
while the model's own forward runs are attributed to a layer, so gradients, optimizer state and the recomputation of
gradient checkpointing (which all run outside that forward) are not.

``at_forward_end()`` is what the forward left for the backward pass, ``alive_now()`` what is still held afterwards.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    def __init__(self, model, layers):
        super().__init__()
        self._storages: dict[int, tuple[StorageWeakRef, int, int | None, str]] = {}
        self._layer: int | None = None
        self._in_forward = False
        self.forward_end: Counter | None = None
        for t in [*model.parameters(), *model.buffers()]:  # weights are no layer's activations
            storage = t.untyped_storage()
            self._storages[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes(), None, "weight")
        self._handles = [model.register_forward_pre_hook(self._forward_begins), model.register_forward_hook(self._ends)]
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(lambda *_, i=i: setattr(self, "_layer", i)))
            self._handles.append(layer.register_forward_hook(lambda *_: setattr(self, "_layer", None)))

    def _forward_begins(self, *_):
        self._in_forward = True

    def _ends(self, *_):
        self._in_forward = False
        self.forward_end = self.alive_now()
        self.forward_end_ops = self.alive_now(by_op=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                known = self._storages.get(key)
                if known is None or known[0].expired():
                    layer = self._layer if self._in_forward else None
                    self._storages[key] = (StorageWeakRef(storage), storage.nbytes(), layer, str(func))
        return out

    def alive_now(self, by_op: bool = False) -> Counter:
        """Bytes alive per layer index (forward allocations only), or per (layer, operator that made them)."""
        alive = Counter()
        for ref, nbytes, layer, op in list(self._storages.values()):
            if layer is not None and not ref.expired():
                alive[(layer, op) if by_op else layer] += nbytes
        return alive

    def at_forward_end(self) -> Counter:
        assert self.forward_end is not None, "the model's forward never ran under this mode"
        return self.forward_end

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

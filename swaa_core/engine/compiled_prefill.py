"""The prompt's elementwise work fused by ``torch.compile`` while ``fast_generate(compile=...)`` prefills.

At 128K tokens an eager SWA prefill layer of an 8B-shaped Llama spends 39 of its 130 ms on one-operation kernels that
each read and write the whole (T, hidden) activation: RMSNorm's float32 chain (cast, square, mean, rsqrt, two
multiplies, cast back), the MLP's SiLU and product, and residual adds (an H100 profile, docs/benchmarks.md,
2026-12-06). The window attention itself takes 15 ms. Compiled, each norm and each MLP's activation runs as one
kernel that reads its input once.

Only modules that are pure tensor functions are compiled: RMSNorms without submodules, and MLPs whose submodules are
plain ``nn.Linear`` layers and parameter-free activations (a LoRA-wrapped MLP keeps its own forward). The attention
modules, with SWAA's host-side mask geometry and cache bookkeeping, stay eager. One compiled function per module
class, with dynamic shapes, serves every layer and every prompt length (inductor's kernels take the length as an
argument), kept on the model across calls. The modules run their compiled forward inside :func:`fused_elementwise`
only; the decode step and every other caller see the model as it was. Source: PyTorch's regional compilation recipe
(compile the repeated block once, reuse it in every layer)."""

from __future__ import annotations

import contextlib
import functools

import torch

KEPT = "_swaa_compiled_prefill"


def prefill_backend(backend):
    """The backend the prefill's norms and MLPs compile with, for ``fast_generate``'s ``compile`` backend. For
    inductor (a name or :func:`~swaa_core.engine.compiled_step.inductor_backend`): inductor with its precision casts
    emulated, so that each fused kernel rounds to the model's dtype where the eager operations do (without, a bf16
    prefill's logits moved by up to 3e-3 and a greedy token changed), and without the step's settings (freezing would
    fold a second copy of the MLP weights in, coordinate descent would tune kernels per length). The caller's
    backend otherwise; None for None."""
    if backend is None:
        return None
    if backend == "inductor" or getattr(backend, "swaa_inductor_patches", None) is not None:
        from .compiled_step import inductor_backend

        emulate = hasattr(torch._inductor.config, "emulate_precision_casts")
        return inductor_backend(emulate_precision_casts=True) if emulate else "inductor"
    return backend


def fusable(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a norm or MLP this module compiles: an ``*RMSNorm`` without submodules, or an ``*MLP``
    whose submodules are ``nn.Linear`` layers (of that class, not a LoRA wrapper; hooks a library such as accelerate
    puts on them run between graphs) and parameter-free activations, with no forward set on the instance (a hook
    library's wrapper stays in charge of such a module)."""
    if "forward" in module.__dict__:
        return False
    name = type(module).__name__
    children = list(module.children())
    if name.endswith("RMSNorm"):
        return not children
    if name.endswith("MLP"):
        return bool(children) and all(
            type(c) is torch.nn.Linear or not any(True for _ in c.parameters()) for c in children
        )
    return False


@contextlib.contextmanager
def fused_elementwise(model: torch.nn.Module, backend):
    """Within the block, every :func:`fusable` module of ``model`` runs ``torch.compile(type(module).forward,
    backend=backend, dynamic=True)`` (one compiled function per class, its forward function and backend, kept on the
    model); afterwards, even after an exception, each runs its own forward again. ``backend`` None: the block runs
    the model as it is. Not for a model other threads call meanwhile: they would run the compiled forwards too."""
    if backend is None:
        yield
        return
    kept = model.__dict__.setdefault(KEPT, {})
    placed = []
    try:
        for module in model.modules():
            if fusable(module):
                forward = type(module).forward  # a class whose forward was replaced since gets a new compilation
                key = (type(module), forward, backend)
                if key not in kept:
                    kept[key] = torch.compile(forward, backend=backend, dynamic=True)
                module.forward = functools.partial(kept[key], module)
                placed.append((module, module.forward))
        yield
    finally:
        for module, ours in placed:
            if module.__dict__.get("forward") is ours:
                del module.forward

"""The fixed-buffer decode step compiled with ``torch.compile`` (inductor by default), for
:func:`swaa_core.engine.fast_decode.fast_generate` (``compile=True``).

Shapes stay static: the flat buffers of full and FA-decode layers are sized to the prompt plus the new tokens rounded
up to a multiple of :data:`COMPILE_BUCKET` (:func:`bucket_slots`), the ring buffers of sliding layers to sinks + W,
so a new prompt in the same bucket, at the same batch size, reuses the compiled step. One compiled call is kept per
backend (:func:`compiled_forward`); ``torch.compile`` keeps one compiled graph per set of shapes and
constants behind it (up to ``torch._dynamo.config.recompile_limit`` of them; past that it runs the forward eagerly).
The step it compiles is the same forward the eager fixed-buffer step runs, and a CUDA graph then captures the
compiled kernels as it captures the eager ones. As with any ``torch.compile``, a module class whose ``forward`` is
replaced after the step was compiled keeps the compiled step of before (dynamo does not guard on it; seen on the CPU,
torch 2.13); the prefill's compiled functions are keyed by that forward (:mod:`.compiled_prefill`). Source: gpt-fast
and transformers' static-cache ``torch.compile``."""

from __future__ import annotations

import contextlib
import functools

import torch

from .cache import KEY_BUCKET
from .families import attention_modules

COMPILE_BUCKET = KEY_BUCKET  # slots: flat buffers under compile hold a multiple of this many


def bucket_slots(slots: int, bucket: int = COMPILE_BUCKET) -> int:
    """``slots`` (prompt + new tokens, >= 1) rounded up to a multiple of ``bucket``: a flat buffer's size under
    compile, so prompts whose totals fall in one bucket share one compiled step."""
    if slots < 1 or bucket < 1:
        raise ValueError(f"slots and bucket must be positive (got {slots}, {bucket}).")
    return -(-slots // bucket) * bucket


# The inductor settings that brought the compiled SWA step of an 8B-shaped Llama to 88-90% of the bandwidth floor at
# 8K-128K on an H100 (77% with inductor's defaults; docs/benchmarks.md, 2026-12-06): freezing folds the weights in as
# constants, so inductor concatenates the q/k/v and the gate/up projections into one GEMV each (gpt-fast's fused
# projections, at the cost of a second copy of those weights: about 9 GB for the 8B shape), and coordinate descent
# tunes each generated kernel's launch. The first call compiles for 45-55 s instead of 5-21 s. Its greedy tokens equal
# the eager step's over 256 tokens on an H100 (tests/swaa_core/engine/test_gpu_decode.py, 2026-12-06). Not
# compile=True's default: the second copy is memory a server would rather hold KV in, and the capacity model
# (swaa_core.models.capacity) does not count it.
FROZEN_FUSED = {"freezing": True, "coordinate_descent_tuning": True}


@functools.cache
def _inductor_backend(patches: tuple):
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, config_patches=dict(patches))

    backend.swaa_inductor_patches = dict(patches)  # read by compiled_prefill: an inductor backend, with settings
    return backend


def inductor_backend(**config_patches):
    """A ``torch.compile`` backend: inductor with ``torch._inductor.config`` settings for its compilations only (e.g.
    ``inductor_backend(**FROZEN_FUSED)``), for ``fast_generate(compile=...)``. Equal settings give the same backend
    object, so calls with equal settings share compiled steps (dynamo keeps graphs apart per backend). Raises
    TypeError for a value that is not hashable."""
    return _inductor_backend(tuple(sorted(config_patches.items())))


# Dynamo keeps its compiled graphs on the code object, and every transformers model's forward is one wrapper function
# (utils/generic.py): past ``recompile_limit`` graphs (8 by default) in a process, across models, buckets and batch
# sizes, it ran each new step eagerly and only logged it (seen on the CPU, torch 2.13: the ninth bucket's step).
# A server meets a new bucket every 256 slots of prompt.
COMPILED_RECOMPILE_LIMIT = 64


def compile_scope(*, fail: bool, limit: int | None = None) -> contextlib.AbstractContextManager:
    """Dynamo's settings for SWAA's compiled calls: up to ``limit`` graphs per function (default
    :data:`COMPILED_RECOMPILE_LIMIT`) and, with ``fail``, an error past it (:func:`recompile_limit_hit`) instead of
    dynamo's silent eager fallback; guards on the modules' hooks, so that a hook registered or removed after a step
    was compiled compiles a new one (by default dynamo skips those guards, and the old step ran without the hook).
    (torch before 2.7 names the limit ``cache_size_limit``.)"""
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    settings = {name: COMPILED_RECOMPILE_LIMIT if limit is None else limit}
    if hasattr(torch._dynamo.config, "skip_nnmodule_hook_guards"):
        settings["skip_nnmodule_hook_guards"] = False
    if fail and hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        settings["fail_on_recompile_limit_hit"] = True
    return torch._dynamo.config.patch(**settings)


def recompile_limit_hit(error: BaseException) -> bool:
    """Whether ``error`` is dynamo's recompile-limit error (its class was renamed across torch versions)."""
    return any(part in type(error).__name__ for part in ("RecompileLimit", "CacheLimit"))


def _call(model, /, **inputs):
    return model(**inputs)


_COMPILED_CALLS: dict = {}  # backend -> torch.compile(_call); dynamo keeps the graphs per model it was called with


def compiled_forward(model, backend: str = "inductor"):
    """``step(**inputs)``: ``model(**inputs)`` under ``torch.compile(backend=backend, dynamic=False)`` (static shapes:
    one graph per bucket, never a dynamic-shape kernel). The model is called, not its forward, so hooks on the model
    itself run at every step as under ``generate``; nothing is kept on the model (a ``copy.deepcopy`` of it is a
    model of its own)."""
    if backend not in _COMPILED_CALLS:
        _COMPILED_CALLS[backend] = torch.compile(_call, backend=backend, dynamic=False, fullgraph=False)
    return functools.partial(_COMPILED_CALLS[backend], model)


def bind(model, static) -> None:
    """Point every attention module at its fixed-buffer layer before the first compiled step, so that the first step
    sees what every later one sees (otherwise the prefill's cache layer there costs one more compilation)."""
    for module in attention_modules(model):
        module._swaa_cache_layer = static.layers[module.layer_idx]

"""The prompt's elementwise work fused by ``torch.compile`` while ``fast_generate(compile=...)`` prefills.

At 128K tokens an eager SWA prefill layer of an 8B-shaped Llama spends 39 of its 130 ms on one-operation kernels that
each read and write the whole (T, hidden) activation: RMSNorm's float32 chain (cast, square, mean, rsqrt, two
multiplies, cast back), rotary's slices, ``cat``, multiplies and adds, the MLP's SiLU and product, and residual adds
(an H100 profile, docs/benchmarks.md, 2026-12-06). The window attention itself takes 15 ms. Compiled, each norm, each
MLP's activation and each of q's and k's rotary runs as one kernel that reads its input once.

Only modules that are pure tensor functions, or become one once SWAA's parts run between graphs, are compiled:
RMSNorms without submodules, MLPs whose submodules are plain ``nn.Linear`` layers and parameter-free activations (a
LoRA-wrapped MLP keeps its own forward), and the attention modules SWAA runs, whose projections and rotary compile
while the cache's update and SWAA's attention (host-side mask geometry and cache bookkeeping) run eagerly between
graphs. One compiled function per module class serves every layer and every prompt length, kept on the model across
calls: the first prompt length compiles static kernels, the second recompiles them with the length as their one
symbolic size (dynamo's automatic dynamic shapes), which every later length reuses; a layer's index is an input, not a
constant. Compiled with every size symbolic (``dynamic=True``), the head count and head size were symbols too, and the
fused rotary kernel computed its indices with divisions: on an H100 it ran at 270 GB/s, 7.7 ms a layer at 128K,
slower than the eager kernels (2026-12-06).

The modules run their compiled forward inside :func:`fused_elementwise` only; the decode step and every other caller
see the model as it was. Source: PyTorch's regional compilation recipe (compile the repeated block once, reuse it in
every layer)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import types

import torch

KEPT = "_swaa_compiled_prefill"


def prefill_backend(backend):
    """The backend the prefill's compiled modules compile with, for ``fast_generate``'s ``compile`` backend. For
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
    """Whether ``module`` is a module this module compiles, with no forward set on the instance (a hook library's
    wrapper stays in charge of such a module):

    - an ``*RMSNorm`` without submodules;
    - an ``*MLP`` whose submodules are ``nn.Linear`` layers (of that class, not a LoRA wrapper; hooks a library such
      as accelerate puts on them run between graphs) and parameter-free activations;
    - an attention module SWAA runs (it holds a layer plan) whose submodules are such Linears and norms: its
      projections and rotary embedding compile, while the cache's update and SWAA's attention run between graphs
      (``attention._attention``).

    A module whose submodules carry forward or backward hooks (activation steering, calibration, pruning) keeps its
    own forward: one compiled function serves every layer, and dynamo does not guard on a submodule's hooks, so a
    hook on one layer's ``o_proj`` would be skipped in the graph traced for another layer (hooks on the module itself
    run outside its compiled forward)."""
    if "forward" in module.__dict__:
        return False
    name = type(module).__name__
    children = list(module.children())
    if any(_hooked(m) for m in module.modules() if m is not module):
        return False
    if name.endswith("RMSNorm"):
        return not children
    if name.endswith("MLP"):
        return bool(children) and all(_plain(c) for c in children)
    if "_swaa_plan" in module.__dict__:
        return bool(children) and all(_plain(c) or fusable(c) for c in children)
    return False


def _plain(child: torch.nn.Module) -> bool:
    return type(child) is torch.nn.Linear or not any(True for _ in child.parameters())


def _hooked(module: torch.nn.Module) -> bool:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in hooks)


def _with_eager_cache_update(compiled, module, *args, **kwargs):
    """An attention module's compiled forward, with the cache it is handed (transformers passes it by keyword)
    updated between its graphs: traced, the layer's index and the SWAA cache layer's host-side counters would cost one
    graph per layer. The cache is the caller's, so its own ``update`` is back afterwards."""
    cache = kwargs.get("past_key_values")
    if cache is None or "update" in cache.__dict__:
        return compiled(module, *args, **kwargs)
    cache.update = torch.compiler.disable(cache.update)
    try:
        return compiled(module, *args, **kwargs)
    finally:
        del cache.update


@contextlib.contextmanager
def fused_elementwise(model: torch.nn.Module, backend):
    """Within the block, every :func:`fusable` module of ``model`` that lies in no other runs
    ``torch.compile(type(module).forward, backend=backend)`` (one compiled function per class, its forward function
    and backend, kept on the model); afterwards, even after an exception, each runs its own forward again.
    ``backend`` None: the block runs the model as it is. Not for a model other threads call meanwhile: they would run
    the compiled forwards too."""
    if backend is None:
        yield
        return
    kept = model.__dict__.setdefault(KEPT, {})
    placed = []
    try:
        with _layer_index_as_input():
            for module in _outermost(model, fusable):
                forward = type(module).forward  # a class whose forward was replaced since gets a new compilation
                key = (type(module), forward, backend)
                if key not in kept:
                    kept[key] = torch.compile(_own_copy(forward), backend=backend, dynamic=None)
                attention = "_swaa_plan" in module.__dict__
                run = functools.partial(_with_eager_cache_update, kept[key]) if attention else kept[key]
                module.forward = functools.partial(run, module)
                placed.append((module, module.forward))
            yield
    finally:
        for module, ours in placed:
            if module.__dict__.get("forward") is ours:
                del module.forward


def _outermost(model: torch.nn.Module, chosen) -> list[torch.nn.Module]:
    """The modules of ``model`` that satisfy ``chosen`` and lie inside no other such module (a Qwen 3 or Gemma 3
    attention's q and k norms are traced with it: their own compiled forward inside its graph cost one more graph per
    prompt length)."""
    found, inside = [], set()
    for module in model.modules():  # parents come before their children
        if id(module) in inside or not chosen(module):
            continue
        found.append(module)
        inside.update(id(m) for m in module.modules())
    return found


def _own_copy(function):
    """``function`` under a name of its own. Dynamo's automatic dynamic shapes remember which sizes changed per
    function (file, line and name), so two models of one class would share that memory: a head size that differs
    between them would become a symbol in both, and their rotary kernels slow (see above). The copy also keeps each
    model's graphs, and their recompile limit, apart."""
    code = function.__code__.replace(co_name=f"{function.__name__}_swaa_{next(_COPIES)}")
    copy = types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


_COPIES = itertools.count()


def _layer_index_as_input() -> contextlib.AbstractContextManager:
    """Dynamo reads an attention module's ``layer_idx`` as an input of its graphs, not as a constant that costs one
    graph per layer (torch before 2.5 has no such setting: one graph per layer there)."""
    if not hasattr(torch._dynamo.config, "allow_unspec_int_on_nn_module"):
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True)

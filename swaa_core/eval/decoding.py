"""One generation on a resolved decode path, the same way for every timed caller: the runner's columns, their
warm-up, and the decode-speed curve.

:class:`Decoder` holds the :class:`~swaa_core.engine.decode_path.Route` (which path runs and why) and runs a greedy
generation on it: the eager path is transformers' ``generate`` over SWAA's growing cache (:func:`shared_cache`, with
:func:`decode_kernels`), the fixed path :func:`~swaa_core.engine.fast_decode.fast_generate`. Full attention runs on the
same machinery as the SWAA configs of a comparison (the fixed path decodes it with every layer full), so columns
differ by attention only. Its warm-up is one short untimed generation on the same path (:data:`WARM_UP_TOKENS`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from ..engine.decode_path import DecodePath, Route, resolve
from ..engine.fast_decode import WARMUP_STEPS, fast_generate
from ..engine.install import replay_safe, swaa_owner
from ..engine.patch import kv_cache_bytes, swaa
from .harness import ForwardTimer, cancel_between_layers

# new tokens of a warm-up: on the fixed path enough steps to capture the graph and replay it twice
WARM_UP_TOKENS = WARMUP_STEPS + 4
WARM_UP_PROMPT = {"cuda": 1024, "cpu": 320}  # most prompt tokens of a warm-up (past the window where it is smaller)


def greedy_generation_config(model, max_new_tokens: int, pad_token_id: int | None = None):
    """The model's generation config, greedy and nothing else (sampling knobs a checkpoint ships with would only
    raise warnings), returning a dict, with a pad token."""
    gen = copy.deepcopy(model.generation_config)
    gen.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, min_p=None)
    gen.max_new_tokens = max_new_tokens
    gen.return_dict_in_generate = True
    if gen.pad_token_id is None:
        gen.pad_token_id = pad_token_id if pad_token_id is not None else gen.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = 0  # only read for finished rows of a batch; batch 1 never has any
    return gen


def without_eos(gen) -> set[int]:
    """Make ``gen`` generate past EOS tokens; return the EOS ids it had. (generate fills an eos_token_id of None
    from the model's own generation config; an empty list means none.)"""
    eos = gen.eos_token_id
    gen.eos_token_id = []
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def shared_cache(model) -> dict:
    """``generate`` keyword arguments that give every timed run on the eager path, full attention included, the
    same kind of cache (:func:`swaa_core.engine.cache.growing_cache`), so decode times differ by attention only.
    They also override a checkpoint's ``cache_implementation``, which transformers refuses beside a cache object
    and which ("static") would ask for the fixed-buffer path: the path is the caller's :class:`Decoder`'s."""
    from ..engine.cache import growing_cache

    kwargs = dict(past_key_values=growing_cache(model))
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        # only then: generate fills every unset option from the model's config, and warns about this keyword
        kwargs["cache_implementation"] = None
    return kwargs


@contextlib.contextmanager
def decode_kernels(model, device: torch.device | str | None = None):
    """A context for every timed ``generate`` on the growing cache: on CUDA, the decode steps (forwards of one token
    per row) of transformers' own attention run with cuDNN left out of SDPA's choice; prefill keeps it. cuDNN (SDPA's
    first choice on Hopper) builds an execution graph for every new key length: 41-55 ms of host time per decode step
    of a growing cache on an H200 (torch 2.11, docs/benchmarks.md), which made transformers' full attention 2.9x
    slower per token than a sliding window for a reason that has nothing to do with attention. Under this context
    the full-attention column's steps take the flash kernel, as SWAA's own decode step does
    (:func:`swaa_core.engine.kernels.sdpa._flash_decode`). A model running SWAA's attention is left alone: its
    dispatcher avoids new cuDNN shapes itself, and a masked step needs cuDNN for its bucketed keys. A prefill meets
    one new shape per prompt, and cuDNN's kernel is the fastest there, so prefill times stay those of SDPA's own
    choice. Not for the fixed-buffer path, whose shapes never change. A no-op off CUDA (``device``: where the model
    runs, by default ``model.device``)."""
    if torch.device(device if device is not None else model.device).type != "cuda":
        yield
        return
    from ..engine.attention import NAME
    from ..engine.families import text_config
    from ..engine.kernels.sdpa import CudnnSdpaOff

    held = False

    @replay_safe  # a no-op under SWAA's attention, the only one the fixed path's captured steps run
    def per_forward(module, args, kwargs):
        nonlocal held
        tokens = kwargs.get("input_ids")
        tokens = kwargs.get("inputs_embeds") if tokens is None else tokens
        tokens = args[0] if tokens is None and args else tokens
        decode = tokens is not None and tokens.shape[1] == 1
        decode = decode and text_config(module)._attn_implementation != NAME
        if decode and not held:
            CudnnSdpaOff.acquire()
        elif held and not decode:
            CudnnSdpaOff.release()
        held = decode

    # a peft wrapper's generate calls the wrapped model's forward, never its own: the hook goes on the model that runs
    runs = swaa_owner(model)
    handle = runs.register_forward_pre_hook(per_forward, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        if held:
            CudnnSdpaOff.release()


@dataclass(frozen=True)
class Decoded:
    """One generation: ``sequences`` (1, prompt + new), the KV bytes held per layer at the end, the kernel that ran
    (``backend``), and the times the path measured itself in seconds: the fixed path its prefill, its setup
    (buffers, warm-up steps, graph capture: the first-call cost) and ``decode_steps`` steady steps in ``decode_s``;
    the eager path its prefill (the first forward, when timed) only, its steps being timed by the caller's
    streamer."""

    sequences: torch.Tensor
    kv_cache_bytes_per_layer: tuple[int, ...]
    backend: str
    words: str  # the path in the words of tables: Route.words()
    prefill_s: float | None = None
    setup_s: float = 0.0
    decode_steps: int = 0
    decode_s: float | None = None

    @property
    def tokens_per_s(self) -> float:
        """The fixed path's steady decode speed (tokens/s); 0 where it timed no step or on the eager path."""
        return self.decode_steps / self.decode_s if self.decode_steps and self.decode_s else 0.0


@dataclass(frozen=True)
class Decoder:
    """A resolved decode path and how to generate on it. Build it with :meth:`for_device`."""

    route: Route

    @classmethod
    def for_device(cls, requested: DecodePath | str | None, device) -> Decoder:
        """The decoder for greedy single-row generations on ``device`` (what the runner and the curve run) under
        the path ``requested`` (:class:`DecodePath` or its name; None: auto)."""
        return cls(resolve(requested, device))

    @property
    def fixed(self) -> bool:
        return self.route.fixed

    def generate(self, model, ids, config, *, max_new_tokens: int, backend: str = "auto", streamer=None,
                 criteria=None, cancel=None, until=None, time_prefill: bool = False) -> Decoded:  # fmt: skip
        """Greedy ``max_new_tokens`` tokens after ``ids`` (1, T), EOS ignored (``criteria``, transformers'
        stopping criteria, end it early), under ``config`` (None: full attention) with ``backend``. ``streamer``
        gets the tokens as ``generate`` hands them over; ``cancel`` stops a long prefill between layers (until ``until()``
        returns something, e.g. the streamer's first token time: then between steps, by ``criteria``);
        ``time_prefill`` times the eager path's first forward (a device synchronisation per forward)."""
        with cancel_between_layers(model, cancel, until=until), swaa(model, config, backend=backend) as state:
            kernel = state.backend if state is not None else str(model.config._attn_implementation)
            if self.fixed:
                return self._fixed(model, ids, max_new_tokens, kernel, streamer, criteria)
            return self._eager(model, ids, max_new_tokens, kernel, streamer, criteria, time_prefill)

    def _fixed(self, model, ids, max_new, kernel, streamer, criteria) -> Decoded:
        # greedy whatever the checkpoint's generation config samples with, as the eager path's greedy config; the
        # mask as the eager path passes it: without one, generate infers padding wherever the pad id occurs, and with
        # EOS cleared a pad id equal to the chat template's end-of-turn token would mask every turn's end
        out = fast_generate(model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                            eos_token_id=[], streamer=streamer, stopping_criteria=criteria)  # fmt: skip
        graph = " + CUDA graph" if out.cuda_graph else ""
        return Decoded(out.sequences, tuple(out.kv_cache_bytes_per_layer), f"{kernel}, static cache{graph}",
                       self.route.words(out.cuda_graph), out.prefill_s, out.setup_s, out.decode_steps, out.decode_s)  # fmt: skip

    def _eager(self, model, ids, max_new, kernel, streamer, criteria, time_prefill) -> Decoded:
        gen = greedy_generation_config(model, max_new)
        without_eos(gen)
        timer = ForwardTimer(model, ids.device) if time_prefill else contextlib.nullcontext()
        with timer, decode_kernels(model):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen,
                                 streamer=streamer, stopping_criteria=criteria, **shared_cache(model))  # fmt: skip
        prefill = timer.durations[0] if time_prefill and timer.durations else None
        held = tuple(kv_cache_bytes(getattr(out, "past_key_values", None)))
        return Decoded(out.sequences, held, kernel, self.route.words(), prefill)

    def warm_up(self, model, config, *, backend: str = "auto") -> None:
        """One short untimed generation on this path under ``config``: first calls pay for allocator growth, thread
        pools and, on CUDA, kernel compilation and the graph capture's first use. The prompt is longer than the
        window so that the sliding path itself runs."""
        device = next(model.parameters()).device
        window = config.sliding_window_size if config is not None and config.sliding_window_size else 0
        n = min(window + 64, WARM_UP_PROMPT.get(device.type, WARM_UP_PROMPT["cpu"]))
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = torch.arange(n, device=device)[None] % max(2, vocab - 1) + 1
        self.generate(model, ids, config, max_new_tokens=WARM_UP_TOKENS, backend=backend)

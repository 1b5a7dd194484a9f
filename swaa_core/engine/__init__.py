"""The SWAA engine: what a sliding-window layer may see and how it is computed inside a transformers model.

Kept apart because it is the part every other layer builds on and the part that must match the paper exactly; it
imports nothing else from swaa_core. ``config`` (SWAAConfig and upstream settings files), ``families`` (the
supported model types, each layer's own sliding window, read from a model or a config, and a model's attention
modules), ``kinds`` (what a mask kind means: the sinks + window rule and every shortcut derived from it), ``masks``
(the one visibility predicate on one call's positions), ``backends`` (backend names, detection, the dispatcher) over
``kernels`` (reference and blocked SDPA, FlexAttention, FlashAttention window kernels), ``attention`` (the function
registered in transformers' AttentionInterface), ``cache`` (the sinks + ring KV cache layer), ``static_cache`` and
``fast_decode`` (fixed buffers and CUDA-graph decoding), ``install`` (layer plans and hooks on and off, below both
decode paths) and ``patch`` (apply_swaa / remove_swaa / swaa / capture_attention).
"""

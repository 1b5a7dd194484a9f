"""The SWAA engine: what a sliding-window layer may see and how it is computed inside a transformers model.

Kept apart because it is the part every other layer builds on and the part that must match the paper exactly; it
imports nothing else from swaa_core. ``config`` (SWAAConfig and upstream settings files), ``families`` (the
supported model types and each layer's own sliding window, read from a model or a config), ``masks`` (the one
visibility predicate), ``backends`` (reference, blocked, flex, FlashAttention kernels), ``attention`` (the function
registered in transformers' AttentionInterface), ``cache`` (the sinks + ring KV cache layer) and ``patch``
(apply_swaa / remove_swaa / swaa / capture_attention).
"""

"""The kernel families behind :mod:`swaa_core.engine.backends`, one module each: ``sdpa`` (reference, plain causal,
decode step, blocked O(n * W) on any device), ``flex`` (PyTorch FlexAttention and its block masks) and ``flash``
(FlashAttention-4 / flash-attn 2 window kernels with a sink pass merged by log-sum-exp). Which one runs for a call is
decided in :func:`swaa_core.engine.backends.attend`.
"""

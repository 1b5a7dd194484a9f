"""Mask kinds, one module each: what a kind lets a query see and every fact the engine's shortcuts derive from it.

A kind owns its predicate on real positions, the key span a block of queries needs, how many slots a layer that
forgets old keys keeps, when the mask reduces to plain causal attention, the parameters of the window kernels that
run it, and the constants-only ``mask_mod`` builders FlexAttention compiles. The rest of the engine asks the kind
instead of re-deriving its rule, so a new kind is one module here plus its tests. SWAA has one kind,
:class:`~swaa_core.engine.kinds.sink_window.SinkWindow`.
"""

from .sink_window import SinkWindow

__all__ = ["SinkWindow"]

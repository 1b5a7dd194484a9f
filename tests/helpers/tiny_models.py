"""Tiny randomly initialised causal LMs of every supported family and tiny tokenizers, built in memory in
milliseconds (no downloads)."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3")


def build_tiny_model(family: str = "llama", *, layers: int = 4, seed: int = 0, dtype=torch.float32, **overrides):
    """A randomly initialised causal LM of ``family`` small enough for CPU tests (GQA: 4 query / 2 KV heads)."""
    import transformers as tf

    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
    }[family]
    if family == "mistral":
        common["sliding_window"] = None
    if family == "gemma3":
        common.update(sliding_window=8, query_pre_attn_scalar=8)
    common.update(overrides)
    config = cls[0](**common)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls[1](config).to(dtype).eval()
    return model


def left_padded(*rows: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape (len(rows), longest row): each 1-D row of token ids right-aligned after
    ``pad_id`` padding, as generate expects a batch of prompts."""
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    return batch, mask


def padded_batch(n: int = 30, pads=(0, 9, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``len(pads)`` random rows of ``n`` slots, row i left-padded with ``pads[i]``
    zeros (seeded: every call gives the same batch)."""
    ids = torch.randint(3, 97, (len(pads), n), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, p in enumerate(pads):
        mask[row, :p] = 0
        ids[row, :p] = 0
    return ids, mask


CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def eager_logits_without_swaa(model, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The teacher-forced reference: logits (B, n, V) of ``model`` with SWAA removed, eager attention under the
    hand-built additive ``mask`` (1, 1, n, n); the model's SWAA configuration and backend are put back after."""
    from swaa_core import apply_swaa, remove_swaa

    state = getattr(model, "_swaa_state", None)
    remove_swaa(model)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=seq, attention_mask=mask).logits
    finally:
        model.set_attn_implementation("sdpa")
        if state is not None:
            apply_swaa(model, state.config, backend=state.backend)


def build_tiny_tokenizer(*, vocab_size: int = 400, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained in milliseconds on English filler, with ChatML special tokens; pair it
    with ``build_tiny_model(vocab_size=len(tokenizer))``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from swaa_core.eval.tasks import FILLER

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = list(FILLER) * 20 + ["The pass key is 12345. What is the special magic number? Answer: 0123456789"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def build_word_tokenizer():
    """A real word-level fast tokenizer with a chat template, sized for the tiny models' 97-token vocabulary: words
    ``w0`` .. ``w79`` plus "the code is what ? .", so a test can spell out exact token sequences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>"] + [f"w{i}" for i in range(80)]
    words += ["the", "code", "is", "what", "?", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tok.chat_template = (
        "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return tok


def tiny_loaded_llama():
    """What ``swaa_core.load_model`` returns (model, tokenizer, info), for a tiny Llama with EOS id 2 and the word
    tokenizer: the CLI and pipeline tests run commands on it."""
    from types import SimpleNamespace

    model = build_tiny_model("llama")
    model.generation_config.eos_token_id = 2
    return SimpleNamespace(model=model, tokenizer=build_word_tokenizer(), info=SimpleNamespace(name="tiny/llama"))

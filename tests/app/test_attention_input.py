"""The attention maps read what the run's model read: the chat-templated prompt, not the bare task text, so the sinks
they shade are the model's first tokens and the fact sits where the model saw it."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

import swaa_core
from app import comparison
from app.prompts import model_input_tokens
from app.tabs import why
from swaa_core import SWAAConfig
from swaa_core.eval.cot import render_prompt
from swaa_core.eval.tasks import make_task


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=3, max_position_embeddings=4096)
    info = SimpleNamespace(num_layers=2, num_heads=4, context_length=4096)
    return SimpleNamespace(name="tiny", model=model, tokenizer=tok, info=info, lock=threading.RLock())


@pytest.mark.parametrize("cot", [False, True])
def test_attention_maps_read_the_templated_prompt_the_run_read(tiny, monkeypatch, cot):
    sample = make_task("passkey", tiny.tokenizer, length_tokens=200, depth=0.5, seed=2)
    config = SWAAConfig(sliding_window_size=16, keep_first=4)
    seen = []
    real = swaa_core.capture_attention

    def spy(model, input_ids, layer_idx, config=None, attention_mask=None):
        seen.append(input_ids[0].tolist())
        return real(model, input_ids, layer_idx, config, attention_mask)

    monkeypatch.setattr(why, "loaded_model", lambda _name: tiny)
    monkeypatch.setattr(swaa_core, "capture_attention", spy)
    last_run = {
        "sample": sample.to_dict(),
        "columns": [("Full attention", None), ("SWA", config.to_dict())],
        "prompt_tokens": model_input_tokens(tiny.tokenizer, sample, cot=cot),
        "cot": cot,
    }
    why.draw_attention("tiny", last_run, 1, 0, -1)

    rendered = render_prompt(tiny.tokenizer, sample.prompt, cot=cot, answer_prefix=sample.answer_prefix)
    expected = tiny.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.startswith("<|im_start|>")  # the template really adds tokens before the task text
    assert seen == [expected, expected]  # full attention and the SWAA column, both on the model's input
    assert len(expected) == last_run["prompt_tokens"]

    start, end = comparison._needle_tokens(tiny.tokenizer, sample, rendered)
    a, b = sample.needle_char_span
    fact = "".join(sample.prompt[a:b].split())
    assert fact in "".join(tiny.tokenizer.decode(expected[start - 1 : end + 1]).split())
    bare_start = len(tiny.tokenizer(sample.prompt[:a], add_special_tokens=False)["input_ids"])
    assert start > bare_start  # the span moved by the template's tokens, as the model saw it

"""The prompt-length line and the run's refusal agree on what must fit the context (prompt, chat template included,
plus the new tokens), say it in one readable sentence, and name the control that exists for the prompt in use."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest
from helpers.components import Names
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from app import comparison, model_service
from app.prompts import Prompt
from app.state import Strategy
from app.tabs import compare
from swaa_core.eval.cot import render_prompt

CONTEXT = 400


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=3, max_position_embeddings=CONTEXT)
    info = SimpleNamespace(num_layers=2, num_heads=4, context_length=CONTEXT)
    return SimpleNamespace(name="tiny", model=model, tokenizer=tok, info=info, lock=threading.RLock())


@pytest.fixture
def page(tiny, monkeypatch):
    monkeypatch.setattr(model_service.HUB, "is_ready", lambda _name: True)
    monkeypatch.setattr(compare, "loaded_model", lambda _name: tiny)
    monkeypatch.setattr(comparison, "loaded_model", lambda _name: tiny)
    return tiny


def _tokens(tok, prompt: Prompt) -> int:
    """Independent count: swaa_core's rendering of the user turn, tokenized."""
    sample = prompt.sample(tok)
    rendered = render_prompt(tok, sample.prompt, answer_prefix=sample.answer_prefix)
    return len(tok(rendered, add_special_tokens=False)["input_ids"])


TEXT = Prompt(source="text", document="The keeper of the lighthouse was Ada. " * 40, question="Who kept it?")


@pytest.mark.parametrize("new", [0, 12, 100])
def test_over_the_limit_counts_the_new_tokens_in_one_sentence(page, new):
    n = _tokens(page.tokenizer, TEXT)
    assert n + new > CONTEXT
    shown = compare.prompt_info(Names(), "tiny", TEXT, 64, False, new)
    info = shown["token_info"]
    assert shown["prompt_tokens"] == n
    assert f"shorten the prompt by {n + new - CONTEXT:,} tokens" in info
    assert "sees" not in info  # no half sentence about the window glued to the warning
    assert (f"and {new} new tokens need {n + new:,} tokens" in info) if new else (f"needs {n:,} tokens" in info)


def test_under_the_limit_tells_what_the_window_sees(page):
    short = Prompt(source="text", document="Ada kept the lighthouse.", question="Who kept it?")
    n = _tokens(page.tokenizer, short)
    info = compare.prompt_info(Names(), "tiny", short, 8, False, 12)["token_info"]
    assert "over the limit" not in info
    assert f"a window of 8 tokens sees {8 / n:.0%} of it at a time." in info


@pytest.mark.parametrize(
    "prompt, control",
    [
        (TEXT, "Shorten the text"),
        (Prompt(source="task", task="passkey", length=380, seed=1), "Lower the task's Length"),
    ],
)
def test_the_refusal_names_a_control_the_prompt_has(page, prompt, control):
    options = comparison.RunOptions(cot=False, adapter="", max_new_tokens=12, pinned=[], decode_path="auto")
    with pytest.raises(ValueError) as caught:
        comparison.Comparison.build("tiny", Strategy(window=64), prompt, options)
    message = str(caught.value)
    n = _tokens(page.tokenizer, prompt)
    assert (
        f"{n:,} prompt tokens + 12 new tokens exceed its {CONTEXT:,}-token context by {n + 12 - CONTEXT:,}" in message
    )
    assert control in message and "or lower Max new tokens." in message
    assert not re.search(r"length slider", message)

"""Text for a person holds whole characters only: answers stopped by the token limit, the pieces streamed, and
documents cut to a token length. A byte-level tokenizer spreads a CJK character over 3 tokens and an emoji over 4,
so every cut point is tried. Reference: Python's own str of the text the tokens spell, and the tokenizer's count."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from swaa_core.eval.runner import run_one
from swaa_core.eval.tasks import count_tokens, make_task
from swaa_core.eval.tasks.base import cut_to_tokens, decode_whole

TEXT = "我的猫🐱很可爱, and 🎉!"


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_decode_whole_never_ends_inside_a_character(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(TEXT)  # characters really are split over tokens
    cut_inside = 0
    for n in range(len(ids) + 1):
        cut_inside += tok.decode(ids[:n]).endswith("\ufffd")
        text = decode_whole(tok, ids[:n])
        assert TEXT.startswith(text) and "\ufffd" not in text
    assert cut_inside > 5 and decode_whole(tok, ids) == TEXT


def test_cut_to_tokens_is_a_beginning_within_the_count(tok):
    for n in range(1, 30):
        cut = cut_to_tokens(tok, TEXT, n)
        assert TEXT.startswith(cut) and count_tokens(tok, cut) <= n


@pytest.mark.parametrize("length", range(90, 130, 4))
def test_doc_qa_cut_to_n_tokens_has_at_most_n_tokens_and_whole_characters(tok, length):
    document = (TEXT + " ") * 40
    sample = make_task("doc_qa", tok, length_tokens=length, document=document, question="什么?")
    assert count_tokens(tok, sample.prompt) <= length and sample.meta["truncated"]
    kept = sample.prompt.split("Document:\n", 1)[1].rsplit("\n\nQuestion:", 1)[0]
    assert document.startswith(kept) and "\ufffd" not in sample.prompt and len(kept) > 10


class _Script:
    """Makes a tiny model's greedy choice follow ``ids``: its output head scores the next scripted token highest
    (a forward hook on lm_head), so generation can be stopped at every point inside a character."""

    def __init__(self, model, ids: list[int]):
        self.ids, self.step = ids, 0
        self.handle = model.lm_head.register_forward_hook(self._logits)

    def _logits(self, module, args, out):
        forced = torch.full_like(out, -1e4)
        forced[..., -1, self.ids[min(self.step, len(self.ids) - 1)]] = 0.0
        self.step += 1
        return forced


@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cache", "fixed-buffers"])
def test_answers_and_streamed_pieces_stop_between_characters(tok, static_cache):
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=0)
    loaded = SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=None)
    text = "猫🐱!"  # 3 + 4 + 1 tokens: every cut inside the CJK character and the emoji
    ids = tok(text, add_special_tokens=False)["input_ids"]
    script = _Script(model, ids + tok(" ok" * 40, add_special_tokens=False)["input_ids"])
    try:
        for n in range(1, len(ids) + 1):
            pieces = []
            script.step = 0
            r = run_one(loaded, "Say it.", None, max_new_tokens=n, on_token=pieces.append, warmup=False,
                        score_logprob=False, timing_tokens=0, static_cache=static_cache)  # fmt: skip
            assert r.error is None and r.generated_tokens == n
            assert text.startswith(r.output_text) and "\ufffd" not in r.output_text, (n, r.output_text)
            assert "".join(pieces) == r.output_text
            assert r.output_text == decode_whole(tok, ids[:n])
    finally:
        script.handle.remove()

"""Scoring on hand-made cases, and the teacher-forced log-likelihood against token-by-token decoding."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from swaa_core import SWAAConfig, swaa
from swaa_core.eval.scoring import (
    answer_ids,
    answer_loglik,
    contains_match,
    exact_match,
    normalize,
    recall,
    score_sample,
)
from swaa_core.eval.tasks import TaskSample


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Answer is: PARIS!", "answer is paris"),
        ("  71,432 ", "71432"),
        ("an apple a day", "apple day"),
        ("Ｐａｒｉｓ", "paris"),  # full-width letters
        ("“Quoted”…", "quoted"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("The Paris.", "paris")
    assert exact_match("71,432", ["12345", "71432"])
    assert not exact_match("Paris, France", "Paris")
    assert not exact_match("anything", [])


def test_contains_match_needs_whole_words():
    assert contains_match(" 71432. Remember it.", "71432")
    assert not contains_match("714321", "71432")
    assert not contains_match("the code is 1714320", "71432")
    assert contains_match("It was Ada Lovelace who signed", "ada lovelace")
    assert not contains_match("Ada signed; Lovelace watched", "Ada Lovelace")


def test_all_and_any_for_several_answers():
    pred = "They are 1111111, 2222222 and 3333333."
    assert contains_match(pred, ["2222222", "9999999"])
    assert not contains_match(pred, ["2222222", "9999999"], require_all=True)
    assert contains_match(pred, ["3333333", "1111111"], require_all=True)
    assert recall(pred, ["1111111", "2222222", "4444444", "5555555"]) == 0.5


def test_score_sample_uses_the_sample_match_mode():
    single = TaskSample("needle", "p", "q", "4242", "The number is")
    multi = TaskSample("multi_value", "p", "q", ["11", "22"], "", meta={"match": "all"})
    unknown = TaskSample("doc_qa", "p", "q", "", "")
    assert score_sample(" 4242.", single) is True
    assert score_sample(" 11 and 33", multi) is False
    assert score_sample(" 22, 11", multi) is True
    assert score_sample("whatever", unknown) is None


# ---------------------------------------------------------------------- log-likelihood


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=4, vocab_size=len(tok), seed=3)
    return model, tok


def stepwise_logprob(model, context: list[int], target: list[int], config=None) -> float:
    """The reference: prefill the context, then feed the answer one token at a time through the KV cache, exactly as
    generation does (so FA decode applies to the answer tokens), summing log P of each answer token. The loop marks
    where the prompt ends, as ``generate`` does by itself."""
    total = 0.0
    marker = {"swaa_prompt_lengths": torch.tensor([len(context)])}
    with torch.no_grad(), swaa(model, config):
        out = model(input_ids=torch.tensor([context]), use_cache=True, **marker)
        cache, logits = out.past_key_values, out.logits[0, -1]
        for token in target:
            total += float(torch.log_softmax(logits.double(), -1)[token])
            out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True, **marker)
            cache, logits = out.past_key_values, out.logits[0, -1]
    return total


@pytest.mark.parametrize(
    "config",
    [
        None,
        SWAAConfig(sliding_window_size=16),
        SWAAConfig(sliding_window_size=16, force_fa_decode=True),
        SWAAConfig(sliding_window_size=16, keep_first=3, force_fa_decode=True, non_sliding_layers=[1]),
    ],
    ids=["full", "swa", "swa+fa-decode", "swa+sinks+fa-layer+fa-decode"],
)
def test_loglik_equals_token_by_token_decoding(tiny, config):
    model, tok = tiny
    prompt = "The grass is green. The sky is blue. " * 6 + "The pass key is"
    context, target = answer_ids(tok, prompt, "12345 and 678")
    assert len(context) > 40 and len(target) >= 3  # the window really hides part of the prompt
    lik = answer_loglik(model, tok, prompt, "12345 and 678", config)
    assert lik.tokens == len(target)
    assert lik.logprob == pytest.approx(stepwise_logprob(model, context, target, config), abs=1e-3)


def test_fa_decode_changes_the_likelihood_when_the_window_hides_the_prompt(tiny):
    model, tok = tiny
    prompt = "Children play in the park after school. " * 8 + "The pass key is"
    swa = answer_loglik(model, tok, prompt, "12345", SWAAConfig(sliding_window_size=8)).logprob
    fa_decode = answer_loglik(model, tok, prompt, "12345", SWAAConfig(sliding_window_size=8, force_fa_decode=True))
    assert swa != pytest.approx(fa_decode.logprob, abs=1e-4)


def test_answer_follows_the_prefix_with_a_space(tiny):
    _, tok = tiny
    context, target = answer_ids(tok, "The pass key is", "12345")
    assert tok.decode(target) == " 12345"
    _, target = answer_ids(tok, "The pass key is ", "12345")
    assert tok.decode(target) == "12345"
    with pytest.raises(ValueError, match="empty"):
        answer_loglik(tiny[0], tok, "The pass key is", "  ")

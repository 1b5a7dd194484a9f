"""The CoT switch renders the right template for models with and without a thinking mode; outputs split into
reasoning and answer."""

from __future__ import annotations

import pytest
from helpers.tiny_models import build_tiny_tokenizer

from swaa_core.eval.cot import COT_INSTRUCTION, has_thinking_mode, render_prompt, split_reasoning

# The generation-prompt part of Qwen3's chat template (hybrid thinking): with enable_thinking=false the template
# itself writes an empty think block, so the model answers directly.
QWEN3_STYLE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


@pytest.fixture(scope="module")
def thinking_tok():
    return build_tiny_tokenizer(chat_template=QWEN3_STYLE)


@pytest.fixture(scope="module")
def chat_tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def base_tok():
    return build_tiny_tokenizer(chat_template=None)


def test_thinking_mode_is_detected_from_the_template(thinking_tok, chat_tok, base_tok):
    assert has_thinking_mode(thinking_tok)
    assert not has_thinking_mode(chat_tok)
    assert not has_thinking_mode(base_tok)


def test_thinking_model_with_cot_thinks_in_its_own_mode(thinking_tok):
    text = render_prompt(thinking_tok, "What is 2+2?", cot=True, answer_prefix="The result is")
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert COT_INSTRUCTION not in text


def test_thinking_model_without_cot_gets_thinking_switched_off(thinking_tok):
    text = render_prompt(thinking_tok, "What is 2+2?", cot=False, answer_prefix="The result is")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nThe result is")


def test_plain_chat_model_with_cot_gets_a_step_by_step_instruction(chat_tok):
    text = render_prompt(chat_tok, "What is 2+2?", cot=True, answer_prefix="The result is")
    user_turn = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert user_turn.startswith("What is 2+2?") and COT_INSTRUCTION in user_turn
    assert "Answer: The result is" in user_turn  # the prefix is asked for, since it cannot be pre-filled
    assert text.endswith("<|im_start|>assistant\n")


def test_plain_chat_model_without_cot_prefills_the_answer(chat_tok):
    text = render_prompt(chat_tok, "What is 2+2?", answer_prefix="The result is", system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\nThe result is"
    )


def test_model_without_template_gets_a_plain_layout(base_tok):
    assert render_prompt(base_tok, "What is 2+2?", answer_prefix="It is") == "What is 2+2?\n\nAnswer: It is"
    assert COT_INSTRUCTION in render_prompt(base_tok, "What is 2+2?", cot=True)


def test_empty_prompt_is_refused(chat_tok):
    with pytest.raises(ValueError, match="empty"):
        render_prompt(chat_tok, "   ")


@pytest.mark.parametrize(
    "text, reasoning, answer",
    [
        ("<think>2 and 2 make 4.</think>\n\nThe result is 4.", "2 and 2 make 4.", "The result is 4."),
        ("2 and 2 make 4.\n</think>\n\n4", "2 and 2 make 4.", "4"),  # <think> was in the prompt
        ("<think>still thinking", "still thinking", ""),  # stopped mid-thought: no answer yet
        ("First, 2+2 = 4.\nAnswer: 4", "First, 2+2 = 4.", "4"),
        ("Step 1. Answer: maybe 3.\nStep 2. **Final answer:** 4", "Step 1. Answer: maybe 3.\nStep 2.", "4"),
        ("So 2+2 = 4.\nThe answer is: 4", "So 2+2 = 4.", "4"),
        ("The answer is 4.", "", "The answer is 4."),  # no colon: not a marker, the whole text answers
        ("Just 4.", "", "Just 4."),
    ],
)
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_answer_marker_is_ignored_without_cot():
    assert split_reasoning("Answer: 4", marker=False) == ("", "Answer: 4")
    assert split_reasoning("<think>x</think>Answer: 4", marker=False) == ("x", "Answer: 4")

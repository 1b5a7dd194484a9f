"""Chain-of-thought switch: a model's own thinking mode where its chat template has one, else a step-by-step prompt.

Under FA decode the reasoning tokens attend to the whole cache, which is why the paper finds CoT recovers accuracy
lost to SWA. The runner renders prompts with :func:`render_prompt` and splits outputs with :func:`split_reasoning`, so
only the final answer is scored and the reasoning's token cost can be reported on its own.
"""

from __future__ import annotations

import re

ANSWER_MARKER = "Answer:"
COT_INSTRUCTION = (
    "Think step by step before answering. When you are done, write the final answer on its own last line, "
    f"starting with '{ANSWER_MARKER}'."
)

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# The last "Answer:" (also "Final answer:", "**Answer:**", "The answer is:") anywhere in the text ends the reasoning.
_ANSWER_LINE = re.compile(r"(?i)\**\b(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\**\s*[:：]\**")


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the "default" one is what apply_chat_template uses
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) else ""


def has_chat_template(tokenizer) -> bool:
    return bool(_template_text(tokenizer))


def has_thinking_mode(tokenizer) -> bool:
    """True when the chat template takes ``enable_thinking`` (Qwen3 style hybrid thinking models)."""
    return "enable_thinking" in _template_text(tokenizer)


def render_prompt(
    tokenizer, user_text: str, *, cot: bool = False, answer_prefix: str = "", system: str | None = None
) -> str:
    """The exact text the model reads: the chat template applied to one user turn, then ``answer_prefix``.

    ``cot=True`` switches on the template's thinking mode, or (no thinking mode) appends :data:`COT_INSTRUCTION`.
    ``cot=False`` on a thinking model passes ``enable_thinking=False``. With CoT the answer prefix cannot be
    pre-filled (the reasoning comes first), so it is requested in the instruction instead.
    """
    if not isinstance(user_text, str) or not user_text.strip():
        raise ValueError("The prompt is empty: give the text the model should answer.")
    thinking = has_thinking_mode(tokenizer)
    if cot and not thinking:
        user_text = f"{user_text.rstrip()}\n\n{COT_INSTRUCTION}"
        if answer_prefix:
            user_text += f" Begin that line with '{ANSWER_MARKER} {answer_prefix.strip()}'."
    if not has_chat_template(tokenizer):
        # Base models without a template: a plain question/answer layout they can continue.
        text = (f"{system.strip()}\n\n" if system else "") + f"{user_text.rstrip()}\n\nAnswer:"
        return text + (f" {answer_prefix.strip()}" if answer_prefix and not cot else "")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    extra = {"enable_thinking": bool(cot)} if thinking else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    if answer_prefix and not cot:
        text += answer_prefix
    return text


def split_reasoning(text: str, *, marker: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of a model output.

    ``<think>...</think>`` blocks are reasoning (a lone ``</think>`` closes reasoning whose ``<think>`` was part of
    the prompt; an unclosed ``<think>`` means generation stopped mid-thought, so there is no answer yet). Otherwise,
    with ``marker`` (outputs of CoT prompts), the text before the last "Answer:" is reasoning. Without either marker
    the whole text is the answer.
    """
    split = _split_marker if marker else (lambda t: ("", t))
    text = text or ""
    if "</think>" in text or "<think>" in text:
        reasoning_parts = [m.group(1).strip() for m in _THINK_BLOCK.finditer(text)]
        rest = _THINK_BLOCK.sub("", text)
        if "</think>" in rest:
            head, _, rest = rest.rpartition("</think>")
            reasoning_parts.insert(0, head.replace("<think>", "").strip())
        if "<think>" in rest:
            head, _, unfinished = rest.partition("<think>")
            reasoning_parts.append(unfinished.strip())
            rest = head
        reasoning = "\n\n".join(p for p in reasoning_parts if p)
        inner_reasoning, answer = split(rest.strip())
        return "\n\n".join(p for p in (reasoning, inner_reasoning) if p), answer
    return split(text.strip())


def _split_marker(text: str) -> tuple[str, str]:
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return "", text
    last = matches[-1]
    return text[: last.start()].strip(), text[last.end() :].strip()

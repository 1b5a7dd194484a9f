"""Answer scoring: exact and contains match after normalisation, and the log-likelihood of the reference answer.

Match scores are all-or-nothing, which says little about a 135M model that is nearly right. The teacher-forced
log-likelihood of the reference answer, computed with the SWAA config active, is a graded signal: it drops as the
window hides the needle even when greedy decoding already fails under full attention.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from dataclasses import dataclass

import torch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’«»…")


def normalize(text: str) -> str:
    """Lowercase, Unicode-normalised, without punctuation, articles and extra spaces (SQuAD-style); digit groups
    like "71,432" become "71432"."""
    text = unicodedata.normalize("NFKC", str(text or "")).lower()
    text = re.sub(r"(?<=\d)[,_](?=\d{3}\b)", "", text)
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _refs(answers) -> list[str]:
    if answers is None:
        return []
    if isinstance(answers, str):
        answers = [answers]
    return [str(a) for a in answers if normalize(a)]


def exact_match(prediction: str, answers) -> bool:
    """True when the normalised prediction equals one of the normalised answers."""
    pred = normalize(prediction)
    return any(pred == normalize(a) for a in _refs(answers))


def _contains(prediction_words: list[str], answer: str) -> bool:
    target = normalize(answer).split()
    if not target:
        return False
    n = len(target)
    return any(prediction_words[i : i + n] == target for i in range(len(prediction_words) - n + 1))


def contains_match(prediction: str, answers, *, require_all: bool = False) -> bool:
    """True when an answer appears in the prediction as whole words ("71432" is not found in "714321").

    ``require_all``: every answer must appear (multi-value needles, variable tracking), else any one suffices.
    """
    refs = _refs(answers)
    if not refs:
        return False
    words = normalize(prediction).split()
    hits = [_contains(words, a) for a in refs]
    return all(hits) if require_all else any(hits)


def recall(prediction: str, answers) -> float:
    """Fraction of the answers found in the prediction (RULER's partial credit for multi-answer tasks)."""
    refs = _refs(answers)
    if not refs:
        return 0.0
    words = normalize(prediction).split()
    return sum(_contains(words, a) for a in refs) / len(refs)


def score_sample(prediction: str, sample) -> bool | None:
    """Correctness of ``prediction`` for a :class:`~swaa_core.eval.tasks.TaskSample` (None when it has no reference)."""
    refs = sample.references
    if not refs:
        return None
    return contains_match(prediction, refs, require_all=sample.match_mode == "all")


# ---------------------------------------------------------------------- log-likelihood


@dataclass
class AnswerLikelihood:
    logprob: float  # log P(answer tokens | prompt), natural log, summed over the answer's tokens
    tokens: int
    greedy_match: bool  # every answer token is the model's top choice at its position

    @property
    def per_token(self) -> float:
        return self.logprob / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(-self.per_token) if self.tokens else float("nan")


def reference_text(sample) -> str:
    """The text to teacher-force: the first reference, or every reference joined for "all" tasks."""
    refs = sample.references
    if not refs:
        raise ValueError("This sample has no reference answer to score.")
    return ", ".join(refs) if sample.match_mode == "all" else refs[0]


def answer_ids(tokenizer, rendered_prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer as the model would continue it.

    The answer follows the prompt with one space when the prompt ends in a word (an answer prefix), as in generation;
    tokens are taken from the joint encoding so merges across the boundary match what the model would produce.
    """
    sep = " " if rendered_prompt and not rendered_prompt[-1].isspace() else ""
    context = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    joint = tokenizer(rendered_prompt + sep + answer.strip(), add_special_tokens=False)["input_ids"]
    if joint[: len(context)] == context and len(joint) > len(context):
        return context, joint[len(context) :]
    return context, tokenizer(sep + answer.strip(), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def answer_loglik(model, tokenizer, rendered_prompt: str, answer: str, config=None) -> AnswerLikelihood:
    """Teacher-forced log-likelihood of ``answer`` after ``rendered_prompt`` under SWAA ``config`` (None: full).

    Under FA decode the answer tokens are generated tokens, so they are passed as such (``swaa_prompt_lengths``:
    the mixed mask) and see the whole prompt, exactly as in generation.
    """
    from ..engine.patch import swaa

    if not str(answer or "").strip():
        raise ValueError("The reference answer is empty; nothing to score.")
    context, target = answer_ids(tokenizer, rendered_prompt, answer)
    device = next(model.parameters()).device
    ids = torch.tensor([context + target], device=device)
    kwargs = {}
    if config is not None and not config.is_full_attention:
        kwargs["swaa_prompt_lengths"] = torch.tensor([len(context)], device=device)
    with swaa(model, config):
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(target) + 1, **kwargs).logits
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # position t predicts token t+1
    tgt = torch.tensor(target, device=logprobs.device)
    picked = logprobs.gather(-1, tgt[:, None]).squeeze(-1)
    return AnswerLikelihood(
        logprob=float(picked.sum()),
        tokens=len(target),
        greedy_match=bool((logprobs.argmax(-1) == tgt).all()),
    )

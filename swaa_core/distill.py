"""Self-distillation data: the full-attention model's own greedy answers on long-context prompts.

The paper fine-tunes under SWA on targets written by the *same* model with full attention, so the adapter learns to
recover the model's own full-attention behaviour rather than someone else's style. Records are JSONL in the upstream
layout (``prompt``, ``question``, ``answer``, ``response``, ``judge``) plus a few fields this tool uses:

    {"prompt": "...", "question": "...", "answer": "4821", "answer_prefix": "The code is", "response": " 4821.",
     "judge": 1, "finished": true, "cot": false, "task": "needle", "context_tokens": 1024, "seed": 3}

``answer`` is the reference (null when unknown), ``judge`` is 1 / 0 / null (right / wrong / no reference),
``finished`` says the generation stopped at end-of-turn rather than at the token limit, and ``cot`` that the prompt
was rendered with the chain-of-thought switch (the response then holds the reasoning too).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cot import render_prompt, split_reasoning
from .patch import swaa
from .scoring import contains_match, normalize

KEEP_CHOICES = ("correct", "judged-correct", "all")


class DistillDataError(ValueError):
    """A distillation / training data file or record that cannot be used, with the reason."""


@dataclass
class Progress:
    """One progress report for the app and the CLI: ``phase`` is "distill", "train" or "eval"."""

    phase: str
    step: int
    total: int
    elapsed_s: float
    loss: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.step or not self.total:
            return None
        return self.elapsed_s / self.step * (self.total - self.step)


ProgressFn = Callable[[Progress], None]


# --------------------------------------------------------------------------- prompts
def encode_prompt(tokenizer, prompt: str, answer_prefix: str = "", cot: bool = False) -> list[int]:
    """Token ids of the prompt exactly as the runner renders it (chat template, CoT switch, answer prefix), so
    training sees what evaluation and generation see."""
    text = render_prompt(tokenizer, prompt, cot=cot, answer_prefix=answer_prefix)
    # The chat template writes its own special tokens, so the tokenizer must not add a second BOS.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- judging
def judge(response: str, reference: str | list[str] | None, mode: str = "any") -> bool | None:
    """Whether ``response`` states the reference answer, scored as the runner scores (whole words after
    normalisation: "71432" is not found in "714321"). With a list, one reference suffices (mode "any") or all are
    needed (mode "all", multi-value tasks). None when there is no reference to check against."""
    if mode not in ("any", "all"):
        raise ValueError(f"mode must be 'any' or 'all', got {mode!r}.")
    refs = [reference] if isinstance(reference, str) else [str(r) for r in reference or []]
    if not any(normalize(r) for r in refs):
        return None
    return contains_match(response, refs, require_all=mode == "all")


def filter_records(records: Iterable[dict], keep: str = "correct") -> list[dict]:
    """Drop records whose answer is known to be wrong.

    keep="correct": drop judge == 0, keep unjudged records (no reference to check against);
    keep="judged-correct": keep only judge == 1; keep="all": keep everything (e.g. to inspect the failures)."""
    if keep not in KEEP_CHOICES:
        raise DistillDataError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {keep!r}.")
    records = list(records)
    if keep == "all":
        return records
    if keep == "judged-correct":
        return [r for r in records if r.get("judge") == 1]
    return [r for r in records if r.get("judge") != 0]


# --------------------------------------------------------------------------- generation
def _sample_field(sample, name: str, default=None):
    if isinstance(sample, dict):
        return sample.get(name, default)
    return getattr(sample, name, default)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate_answer(model, tokenizer, prompt: str, answer_prefix: str = "", max_new_tokens: int = 32, cot=False):
    """Greedy answer of ``model`` with full attention: (text, finished) where finished means it reached EOS."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt, answer_prefix, cot)], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with swaa(model, None):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = _eos_ids(model, tokenizer)
    finished = any(t in eos for t in new)
    if finished:
        new = new[: next(i for i, t in enumerate(new) if t in eos)]
    return tokenizer.decode(new, skip_special_tokens=True), finished


def distill(
    model,
    tokenizer,
    samples: Iterable,
    *,
    max_new_tokens: int = 32,
    cot: bool = False,
    keep: str = "correct",
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
) -> list[dict]:
    """Self-distillation records for ``samples`` (TaskSample objects or dicts with prompt / question / answer /
    answer_prefix), generated by ``model`` with full attention whatever SWAA state it has, then filtered (``keep``).
    With ``cot`` the prompt asks for reasoning (or turns on the template's thinking mode); the whole output becomes
    the target and only its final answer is judged."""
    from tqdm.auto import tqdm

    samples = list(samples)
    if not samples:
        raise DistillDataError("No samples to distill: give at least one prompt.")
    if keep not in KEEP_CHOICES:
        raise DistillDataError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {keep!r}.")
    records, start = [], time.perf_counter()
    for i, sample in enumerate(tqdm(samples, desc="distill (full attention)", disable=not progress)):
        if cancel is not None and cancel.is_set():
            break
        records.append(_record(model, tokenizer, sample, max_new_tokens, cot))
        if on_progress is not None:
            right = sum(r["judge"] == 1 for r in records)
            msg = f"{i + 1}/{len(samples)} answered, {right} right"
            on_progress(Progress("distill", i + 1, len(samples), time.perf_counter() - start, message=msg))
    return filter_records(records, keep)


def _record(model, tokenizer, sample, max_new_tokens: int, cot: bool) -> dict:
    prompt = _sample_field(sample, "prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DistillDataError(f"A sample has no prompt text: {sample!r:.200}")
    prefix = _sample_field(sample, "answer_prefix", "") or ""  # with CoT, render_prompt asks for it in words
    reference = _sample_field(sample, "answer")
    response, finished = generate_answer(model, tokenizer, prompt, prefix, max_new_tokens, cot)
    meta = _sample_field(sample, "meta") or {}
    verdict = judge(split_reasoning(response, marker=cot)[1], reference, meta.get("match", "any"))
    record = {
        "prompt": prompt,
        "question": _sample_field(sample, "question", "") or "",
        "answer": reference if reference not in ("", []) else None,
        "answer_prefix": prefix,
        "response": response,
        "judge": None if verdict is None else int(verdict),
        "finished": finished,
        "cot": cot,
    }
    for name in ("task", "context_tokens", "depth", "seed"):
        value = _sample_field(sample, name)
        if value is not None:
            record[name] = value
    return record


# --------------------------------------------------------------------------- files
def save_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def load_jsonl(path: str | Path) -> list[dict]:
    """Training records from a JSONL file: each line an object with prompt + response (this tool's and upstream's
    distillation output) or instruction + output; other fields are kept."""
    path = Path(path)
    if not path.is_file():
        raise DistillDataError(f"Training data file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistillDataError(f"{path.name} line {n} is not valid JSON: {e}") from None
            records.append(normalize_record(record, where=f"{path.name} line {n}"))
    if not records:
        raise DistillDataError(f"{path.name} holds no records.")
    return records


def normalize_record(record: Any, where: str = "record") -> dict:
    """Accept the upstream SFT layouts (prompt/response, instruction/output) and return prompt/response form."""
    if not isinstance(record, dict):
        raise DistillDataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "prompt" not in record and "instruction" in record:
        record = {**record, "prompt": record["instruction"], "response": record.get("output")}
    for key in ("prompt", "response"):
        if not isinstance(record.get(key), str):
            raise DistillDataError(
                f"{where}: needs text fields 'prompt' and 'response' (or 'instruction' and 'output'); "
                f"'{key}' is {'missing' if key not in record else type(record[key]).__name__}."
            )
    if not record["response"].strip():
        raise DistillDataError(f"{where}: 'response' is empty; there is nothing to train on.")
    return record

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

from ..engine.patch import swaa
from ..eval.cot import render_prompt, split_reasoning
from ..eval.latency import decode_kernels
from ..eval.scoring import contains_match, normalize
from ..eval.tasks.base import decode_whole
from ..runtime.distributed import current, map_shared
from ..runtime.jsonl import JsonlError, iter_jsonl
from .settings import KEEP_CHOICES


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
    with swaa(model, None), decode_kernels(model):  # no cuDNN graph per decode step on a GPU
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
    return decode_whole(tokenizer, new), finished  # the token limit may stop inside a character


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
TABLE_FORMATS_NOT_READ = (".csv", ".tsv", ".xls", ".xlsx")  # read as JSON lines they failed at line 1, unnamed


def load_jsonl(path: str | Path) -> list[dict]:
    """Training records from a file: JSONL (this tool's ``swaa distill`` output), a JSON list, or a Parquet table as
    upstream's self-distillation writes it (columns prompt, response, question, answer, judge). Each record has
    prompt + response, instruction + output, or a user/assistant ``conversations`` pair; a list of responses (several
    generations) gives one record each. Every record is kept: ``swaa finetune --keep`` (default "correct") then drops
    those judged wrong, as upstream's SFT script keeps only ``judge == 1``."""
    path = Path(path)
    if not path.is_file():
        raise DistillDataError(f"Training data file not found: {path}")
    if path.suffix.lower() in TABLE_FORMATS_NOT_READ:
        raise DistillDataError(
            f"{path.name}: {path.suffix} files are not read; give JSON lines (.jsonl), a JSON list (.json) or a Parquet "
            "table (.parquet) of prompt/response records."
        )
    records = []
    for where, raw in _raw_records(path):
        for record in _expand_responses(raw):
            records.append(normalize_record(record, where=where))
    if not records:
        raise DistillDataError(f"{path.name} holds no records.")
    return records


def _raw_records(path: Path):
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            table = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several classes for a damaged or foreign file
            raise DistillDataError(f"{path.name} is not a readable Parquet file: {e}") from None
        for n, row in enumerate(table.to_dict(orient="records"), 1):
            yield f"{path.name} row {n}", {k: _plain(v) for k, v in row.items()}
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DistillDataError(f"{path.name} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise DistillDataError(f"{path.name}: expected a JSON list of records, got {type(data).__name__}.")
        for n, record in enumerate(data, 1):
            yield f"{path.name} record {n}", record
        return
    try:
        for n, record in iter_jsonl(path, strict=True):
            yield f"{path.name} line {n}", record
    except JsonlError as e:
        raise DistillDataError(str(e)) from None


def _plain(value):
    """Parquet cells as plain Python: numpy arrays (list columns) become lists, NaN / NA become None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


def _expand_responses(record):
    if isinstance(record, dict) and isinstance(record.get("response"), list):
        judges = record.get("judge") if isinstance(record.get("judge"), list) else None
        for i, response in enumerate(record["response"]):
            yield {**record, "response": response, "judge": judges[i] if judges else record.get("judge")}
    else:
        yield record


def normalize_record(record: Any, where: str = "record") -> dict:
    """Accept the upstream SFT layouts (prompt/response, instruction/output) and return prompt/response form."""
    if not isinstance(record, dict):
        raise DistillDataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "prompt" not in record and "instruction" in record:
        record = {**record, "prompt": record["instruction"], "response": record.get("output")}
    if "prompt" not in record and isinstance(record.get("conversations"), list):
        turns = {turn.get("role"): turn.get("content") for turn in record["conversations"] if isinstance(turn, dict)}
        record = {**record, "prompt": turns.get("user"), "response": turns.get("assistant")}
    for key in ("prompt", "response"):
        if not isinstance(record.get(key), str):
            raise DistillDataError(
                f"{where}: needs text fields 'prompt' and 'response' (or 'instruction' and 'output', or user and "
                "assistant 'conversations'); "
                f"'{key}' is {'missing' if key not in record else type(record[key]).__name__}."
            )
    if not record["response"].strip():
        raise DistillDataError(f"{where}: 'response' is empty; there is nothing to train on.")
    return record


def distill_shared(model, tokenizer, prompts: list, **kw) -> list[dict]:
    """:func:`distill` (every answer kept) with the prompts shared out between the processes of a
    launch; every process gets all records, in prompt order."""
    return map_shared(current(), lambda share: distill(model, tokenizer, share, keep="all", **kw), prompts)

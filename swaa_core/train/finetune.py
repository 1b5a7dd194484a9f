"""The paper's fine-tuning recipe end to end: self-distil, score before, LoRA-train under SWA, score after, save.

What ``swaa finetune`` runs, callable from Python the same way; the steps live in :mod:`.distill` (data), :mod:`.lora`
(training), :mod:`.evaluate` (before/after scores) and :mod:`.adapters` (the saved folder). Under torchrun /
accelerate launch, distillation and evaluation are shared out between the processes and training runs as DDP.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..engine.config import SWAAConfig, SWAAConfigError
from ..engine.families import attention_modules
from ..eval.tasks import make_samples
from ..runtime.distributed import current
from ..runtime.jsonl import save_jsonl
from .adapters import save_adapter
from .distill import DistillDataError, ProgressFn, distill_shared, filter_records
from .evaluate import EvalSummary, evaluate_accuracy
from .lora import FinetuneResult, TrainSettings, build_examples, train_lora


@dataclass
class FinetuneReport:
    adapter_path: Path | None
    swaa_config: SWAAConfig
    base_model: str
    records: int  # distillation records kept after filtering
    examples: int
    skipped_too_long: int
    train: FinetuneResult
    before: EvalSummary | None = None
    after: EvalSummary | None = None
    distill_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the caller should know about the run (shown by the CLI)

    def to_dict(self) -> dict:
        return {
            "swaa_config": self.swaa_config.to_dict(),
            "base_model": self.base_model,
            "records": self.records,
            "examples": self.examples,
            "skipped_too_long": self.skipped_too_long,
            **self.train.summary(),
            "eval_before": None if self.before is None else asdict(self.before),
            "eval_after": None if self.after is None else asdict(self.after),
            "date": time.strftime("%Y-%m-%d"),
            "machine": _machine(self.train.model),
            "processes": current().world,
        }


def _unslid(cfg: SWAAConfig, model, examples: list[dict]) -> list[str]:
    """A note when no example is longer than what every sliding query of the config's layers sees (under FA decode
    only the prompt's queries slide): the run then trains under full attention, whatever the config says."""
    from ..engine.families import attention_modules

    longest = max((len(e["input_ids"]) for e in examples), default=0)
    prompt = max((e["prompt_length"] for e in examples), default=0)
    rules = [cfg.layer_rule(i) for i in range(len(attention_modules(model)))]
    sliding = [(kind, prompt if fa_decode else longest) for kind, fa_decode in rules if kind is not None]
    if not sliding or any(n and not kind.causal_between(0, n - 1) for kind, n in sliding):
        return []
    return [
        f"Every training example fits in the window ({longest} tokens at most, under {cfg.describe()}): nothing "
        "slides, so this run trains under full attention. Use longer examples or a smaller window."
    ]


def _machine(model) -> str:
    import os
    import platform

    device = next(model.parameters()).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return f"{where}; {platform.system()} {platform.machine()}; torch {torch.__version__}"


def finetune_pipeline(
    loaded,
    swaa_config: SWAAConfig,
    out_dir: str | Path | None,
    *,
    records: list[dict] | None = None,
    task: str = "needle",
    samples: int = 32,
    length_tokens: int = 1024,
    seed: int = 0,
    max_new_tokens: int = 24,
    keep: str = "correct",
    cot: bool = False,
    settings: TrainSettings | None = None,
    eval_samples: int = 0,
    eval_length: int | None = None,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> FinetuneReport:
    """The paper's recipe end to end on a loaded model (:func:`swaa_core.load_model`): self-distil ``samples``
    prompts of ``task`` with full attention (or use ``records``), optionally score ``eval_samples`` held-out prompts
    under ``swaa_config``, LoRA-train under ``swaa_config``, score again, and save the adapter to ``out_dir``.
    ``backend`` is the attention kernel for training and scoring (as in :func:`swaa_core.apply_swaa`).

    The LoRA layers go into ``loaded.model`` in place: load a private copy (``load_model(..., reuse=False)``) when
    other code shares the model."""
    if swaa_config is None or swaa_config.is_full_attention:
        raise SWAAConfigError("Fine-tuning under SWA needs a sliding config (a window), not full attention.")
    model, tokenizer = loaded.model, loaded.tokenizer
    swaa_config.validate(len(attention_modules(model)))
    out = None if out_dir is None else Path(out_dir)
    settings = settings or TrainSettings()
    launch = current()  # under torchrun / accelerate launch: DDP, data and evaluations shared out
    progress = progress and launch.is_main
    held_out = []
    if eval_samples:
        seeds = range(seed + 100_000, seed + 100_000 + eval_samples)
        held_out = make_samples(task, tokenizer, length_tokens=eval_length or length_tokens, seeds=seeds)

    def score(label):
        return evaluate_accuracy(loaded, held_out, swaa_config, label=label, max_new_tokens=max_new_tokens, cot=cot,
                                 on_progress=on_progress, cancel=cancel, progress=progress,
                                 backend=backend)  # fmt: skip

    # One run at a time on this model: SWAA state and the LoRA layers live on it (the runner takes the same lock).
    with getattr(loaded, "lock", None) or contextlib.nullcontext():
        if records is None:
            prompts = make_samples(task, tokenizer, length_tokens=length_tokens, seeds=range(seed, seed + samples))
            records = distill_shared(model, tokenizer, prompts, max_new_tokens=max_new_tokens, cot=cot,
                                     on_progress=on_progress, cancel=cancel, progress=progress)  # fmt: skip
            distill_path = None if out is None else out / "distill.jsonl"
            if distill_path is not None and launch.is_main:
                save_jsonl(records, distill_path)
        else:
            distill_path = None
        kept = _kept_records(records, keep)
        examples, skipped = build_examples(kept, tokenizer, settings.max_length)
        notes = _unslid(swaa_config, model, examples)
        before = score("before fine-tuning") if held_out else None
        result = train_lora(model, examples, swaa_config, settings, on_progress=on_progress, cancel=cancel,
                            progress=progress, backend=backend)  # fmt: skip
        after = score("after fine-tuning") if held_out else None
    name = loaded.info.name
    report = FinetuneReport(None, swaa_config, name, len(kept), len(examples), skipped, result, before, after,
                            notes=notes)  # fmt: skip
    report.distill_path = distill_path
    if out is not None:
        report.adapter_path = out
        if launch.is_main:  # every process holds the same LoRA weights after DDP; one adapter is saved
            save_adapter(result.model, out, swaa_config, base_model=name, training=report.to_dict())
        launch.wait()
    return report


def _kept_records(records: list[dict], keep: str) -> list[dict]:
    kept = filter_records(records, keep)
    if not kept:
        wrong = sum(r.get("judge") == 0 for r in records)
        unjudged = sum(r.get("judge") not in (0, 1) for r in records)
        reasons = [f"{wrong} of {len(records)} records were judged wrong"] * bool(wrong)
        if keep == "judged-correct" and unjudged:
            reasons.append(f"{unjudged} of {len(records)} carry no judge verdict (no 'judge' field of 1 or 0)")
        raise DistillDataError(
            f"No training data left: {' and '.join(reasons)}, and keep={keep!r} drops them. Use keep='all' to train "
            "on them anyway, or records (prompts, a model) whose answers are right."
        )
    return kept
